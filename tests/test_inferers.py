"""SoftmaxSlidingWindowInferer: windows blended as probabilities, checked against a hand-built blend."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from ssmis.inferers import SoftmaxSlidingWindowInferer, overlap_for_stride
from ssmis.networks import SoftmaxAverage


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    # zero padding makes a voxel's logits depend on where its window lies, so overlapping windows disagree
    return torch.nn.Sequential(torch.nn.Conv3d(1, 3, 3, padding=1), torch.nn.Tanh(),
                               torch.nn.Conv3d(3, 3, 3, padding=1))


def _hand_blend(net: torch.nn.Module, x: torch.Tensor, roi: int, starts: list[int],
                probabilities: bool) -> torch.Tensor:
    """Uniform blend of windows along the first spatial axis (the others are one window wide)."""
    acc = torch.zeros(1, 3, *x.shape[2:])
    count = torch.zeros(1, 1, *x.shape[2:])
    for s in starts:
        out = net(x[:, :, s : s + roi])
        acc[:, :, s : s + roi] += torch.softmax(out, 1) if probabilities else out
        count[:, :, s : s + roi] += 1
    return acc / count


@torch.no_grad()
def test_blends_window_softmax_like_a_hand_computation() -> None:
    net, x = _net(), torch.randn(1, 1, 12, 5, 4) * 3
    # roi 8 along an axis of 12 with overlap 0.5: windows start at 0 and 4; the other axes are one window
    inferer = SoftmaxSlidingWindowInferer(roi_size=(8, 5, 4), overlap=0.5)
    out = inferer(x, net)
    expected = _hand_blend(net, x, 8, [0, 4], probabilities=True)
    torch.testing.assert_close(out.exp(), expected, atol=1e-5, rtol=1e-5)
    # the usual post-processing softmax recovers the blended probabilities
    torch.testing.assert_close(torch.softmax(out, 1), expected, atol=1e-5, rtol=1e-5)
    # and it is not what blending logits gives (so the check above can fail)
    logits_blend = torch.softmax(_hand_blend(net, x, 8, [0, 4], probabilities=False), 1)
    assert (logits_blend - expected).abs().max() > 1e-3


@torch.no_grad()
def test_logits_switch_is_monai_blending() -> None:
    net, x = _net(1), torch.randn(1, 1, 12, 5, 4)
    kw = dict(roi_size=(8, 5, 4), overlap=0.5)
    a = SoftmaxSlidingWindowInferer(average="logits", **kw)(x, net)
    b = SlidingWindowInferer(**kw)(x, net)
    torch.testing.assert_close(a, b)


@torch.no_grad()
def test_ensemble_log_probabilities_pass_through() -> None:
    """Both co-trained networks: each window's softmax of log(mean softmax) is the mean softmax itself."""
    ens, x = SoftmaxAverage(_net(2), _net(3)), torch.randn(1, 1, 12, 5, 4)
    out = SoftmaxSlidingWindowInferer(roi_size=(8, 5, 4), overlap=0.5)(x, ens)
    acc = torch.zeros(1, 3, 12, 5, 4)
    count = torch.zeros(1, 1, 12, 5, 4)
    for s in (0, 4):
        w = x[:, :, s : s + 8]
        acc[:, :, s : s + 8] += (torch.softmax(ens.nets[0](w), 1) + torch.softmax(ens.nets[1](w), 1)) / 2
        count[:, :, s : s + 8] += 1
    torch.testing.assert_close(out.exp(), acc / count, atol=1e-5, rtol=1e-5)


def test_bad_average_names_the_field() -> None:
    with pytest.raises(ValueError, match="average"):
        SoftmaxSlidingWindowInferer(roi_size=(8, 8, 8), average="mean")


def test_network_returning_a_tuple_is_refused() -> None:
    net = _net()
    inferer = SoftmaxSlidingWindowInferer(roi_size=(8, 5, 4))
    with pytest.raises(TypeError, match="one tensor"):
        inferer(torch.randn(1, 1, 8, 5, 4), lambda x: (net(x), net(x)))


@torch.no_grad()
def test_metatensor_input_keeps_its_metadata() -> None:
    """The bundles feed ``MetaTensor`` volumes: the blended output is one too, with the input's affine."""
    from monai.data import MetaTensor

    affine = torch.diag(torch.tensor([1.25, 1.25, 1.25, 1.0], dtype=torch.float64))
    x = MetaTensor(torch.randn(1, 1, 12, 5, 4), affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    out = SoftmaxSlidingWindowInferer(roi_size=(8, 5, 4), overlap=0.5)(x, _net())
    assert isinstance(out, MetaTensor)
    torch.testing.assert_close(out.affine, affine)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    torch.testing.assert_close(out.exp().as_tensor().sum(1), torch.ones(1, 12, 5, 4))


def test_overlap_for_stride_gives_monai_the_exact_step() -> None:
    from monai.inferers.utils import _get_scan_interval

    for roi in (24, 40, 56, 80, 112):
        for step in range(1, roi + 1):
            overlap = overlap_for_stride([step], [roi])
            assert _get_scan_interval((4 * roi,), (roi,), 1, tuple(overlap)) == (step,), (roi, step)


@pytest.mark.parametrize("stride, message", [([18, 18], "one step per axis"), ([18, 18, 0], "1..80"),
                                             ([18, 18, 81], "1..80"), ([18, 18, 2.5], "whole number")])
def test_overlap_for_stride_names_the_bad_field(stride, message) -> None:
    with pytest.raises(ValueError, match=f"eval_sw_stride.*{message}"):
        overlap_for_stride(stride, [112, 112, 80])


@pytest.mark.parametrize("bundle", ["supervised_la", "mean_teacher_la", "transmedseg_la", "fixed_dynamic_pl_la"])
def test_evaluate_uses_the_protocol_stride_and_the_cpu_protocol_keeps_its_overlap(bundle) -> None:
    from monai.bundle import ConfigParser
    from monai.inferers.utils import _get_scan_interval

    from conftest import BUNDLES, config_list

    def overlap(*names: str, **overrides):
        parser = ConfigParser()
        parser.read_config(config_list(bundle, *names))
        parser["bundle_root"] = str(BUNDLES / bundle)
        for k, v in overrides.items():
            parser[k] = v
        inferer = parser.get_parsed_content("validate#inferer")
        return inferer.overlap, parser.get_parsed_content("patch_size")

    o, patch = overlap("train.yaml", "evaluate.yaml")
    assert patch == [112, 112, 80]
    assert _get_scan_interval((300, 300, 200), tuple(patch), 3, tuple(o)) == (18, 18, 4)
    o, _ = overlap("train.yaml", "evaluate.yaml", patch_size=[96, 96, 64])  # follows a patch_size override
    assert _get_scan_interval((300, 300, 200), (96, 96, 64), 3, tuple(o)) == (18, 18, 4)
    assert overlap("train.yaml")[0] == 0.5  # validation during training keeps sw_overlap
    assert overlap("train.yaml", "cpu_protocol.yaml", "evaluate.yaml")[0] == 0.5  # the LA-1.25mm rows' setting
    # the documented command-line switch back to sw_overlap (`--eval_sw_stride 0`; MONAI drops a None override)
    assert overlap("train.yaml", "evaluate.yaml", eval_sw_stride=0, sw_overlap=0.25)[0] == 0.25


@pytest.mark.parametrize("bundle", ["supervised_la", "mean_teacher_la", "transmedseg_la", "fixed_dynamic_pl_la"])
def test_inference_steps_by_sw_overlap_or_by_sw_stride(bundle) -> None:
    """inference.yaml favours speed (sw_overlap 0.5); ``--sw_stride`` gives the windows evaluate.yaml scores with."""
    from monai.bundle import ConfigParser
    from monai.inferers.utils import _get_scan_interval

    from conftest import BUNDLES, config_list

    def inferer(**overrides):
        parser = ConfigParser()
        parser.read_config(config_list(bundle, "inference"))
        parser["bundle_root"] = str(BUNDLES / bundle)
        for k, v in overrides.items():
            parser[k] = v
        return parser.get_parsed_content("inferer")

    assert inferer().overlap == 0.5
    o = inferer(sw_stride=[18, 18, 4]).overlap
    assert _get_scan_interval((300, 300, 200), (112, 112, 80), 3, tuple(o)) == (18, 18, 4)
    with pytest.raises(Exception) as err:  # MONAI wraps the ValueError in the config item that failed
        inferer(sw_stride=[18, 18])
    assert "sw_stride [18, 18] needs one step per axis" in "".join(str(e) for e in _chain(err.value))
    assert "eval_sw_stride" not in "".join(str(e) for e in _chain(err.value))


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def test_inference_resamples_to_the_target_spacing_and_back(tmp_path) -> None:
    """inference.yaml brings an image to ``target_spacing`` for the network (``Spacingd``) and the prediction back to
    the image's own grid and affine (``Invertd``): a ball labelled at the network's grid lands on the same voxels."""
    import nibabel as nib
    import numpy as np
    import torch
    from monai.bundle import ConfigParser

    from conftest import BUNDLES, config_list

    shape, spacing = (40, 36, 24), 1.25
    zz = np.indices(shape).astype(np.float32)
    ball = ((zz[0] - 20) ** 2 + (zz[1] - 18) ** 2 + (zz[2] - 12) ** 2) < 8**2
    affine = np.diag([spacing, spacing, spacing, 1.0])
    nib.save(nib.Nifti1Image(ball.astype(np.float32) + 0.1, affine), tmp_path / "scan.nii.gz")
    parser = ConfigParser()
    parser.read_config(config_list("supervised_la", "inference"))
    parser["bundle_root"], parser["target_spacing"] = str(BUNDLES / "supervised_la"), [2.5, 2.5, 2.5]
    parser["output_dir"], parser["lcc"] = str(tmp_path / "out"), True
    data = parser.get_parsed_content("preprocessing")({"image": str(tmp_path / "scan.nii.gz")})
    assert tuple(data["image"].shape[1:]) == (20, 18, 12)  # the network's grid: half the voxels per axis
    # a "network output" that labels the bright voxels at that grid
    bright = (data["image"][0] > 0).float()
    data["pred"] = torch.stack([1 - bright, bright]) * 10
    out = parser.get_parsed_content("postprocessing")(data)
    seg = nib.load(tmp_path / "out" / "scan" / "scan_seg.nii.gz")
    assert seg.shape == shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    got = seg.get_fdata().astype(bool)
    dice = 2 * (got & ball).sum() / (got.sum() + ball.sum())
    assert dice > 0.85, dice  # a ball of radius 8 voxels, seen at half the resolution
    np.testing.assert_allclose(np.argwhere(got).mean(0), np.argwhere(ball).mean(0), atol=0.6)  # in place
    assert out["pred"].shape[1:] == shape


def test_bfloat16_windows_match_float32_and_bad_precisions_are_named():
    """``precision='bfloat16'`` runs each window under autocast and blends float32 probabilities that agree with the
    float32 path to bfloat16's rounding; an unknown precision is refused."""
    import torch

    from ssmis.inferers import SoftmaxSlidingWindowInferer, bfloat16_is_fast

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)).eval()
    x = torch.randn(1, 1, 20, 18, 12)
    dtypes = []
    net.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with torch.no_grad():
        ref = torch.softmax(SoftmaxSlidingWindowInferer((8, 8, 8), 2, 0.5)(x, net), 1)
        assert dtypes and set(dtypes) == {torch.float32}
        dtypes.clear()
        out = SoftmaxSlidingWindowInferer((8, 8, 8), 2, 0.5, precision="bfloat16")(x, net)
    assert set(dtypes) == {torch.bfloat16} and out.dtype == torch.float32
    assert torch.allclose(torch.softmax(out, 1), ref, atol=0.02)
    assert isinstance(bfloat16_is_fast(), bool)
    with pytest.raises(ValueError, match="precision must be one of"):
        SoftmaxSlidingWindowInferer((8, 8, 8), precision="float16")


def test_channels_last_converts_2d_and_3d_weights_and_keeps_loaded_values():
    import torch

    from ssmis.networks import channels_last

    net = torch.nn.ModuleDict({"c3": torch.nn.Conv3d(2, 4, 3), "c2": torch.nn.Conv2d(2, 4, 3),
                               "bn": torch.nn.BatchNorm3d(4)})
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert channels_last(net) is net
    assert net["c3"].weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert net["c2"].weight.is_contiguous(memory_format=torch.channels_last)
    assert net["bn"].weight.dim() == 1 and net["c3"].bias.is_contiguous()
    net.load_state_dict({k: v * 2 for k, v in state.items() if v.is_floating_point()}, strict=False)
    assert net["c3"].weight.is_contiguous(memory_format=torch.channels_last_3d)  # loading keeps the format
    assert torch.equal(net["c3"].weight, state["c3.weight"] * 2)
