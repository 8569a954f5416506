"""The ACDC bundles (2D networks on slices of H x W x slices volumes, 4 classes) end to end on small synthetic
volumes, and slice-wise inference that gives back each volume's own grid."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLES, config_list, run_bundle, tb_scalars

pytestmark = pytest.mark.slow

ACDC_BUNDLES = ["supervised_acdc", "mean_teacher_acdc", "transmedseg_acdc", "fixed_dynamic_pl_acdc"]
SMALL = ["--patch_size", "[64, 64]", "--batch_size", "4", "--device", "$torch.device('cpu')", "--amp", "False",
         "--sw_batch_size", "8", "--unet_2d#features", "[8, 8, 16, 16, 32, 8]"]
EXTRA = {"transmedseg_acdc": ["--pretrain_iterations", "10", "--graph_channels", "32"]}


def _tb(log_dir: Path, tag: str) -> list[float]:
    return [v for _, v in tb_scalars(log_dir, tag)]


@pytest.fixture(scope="session")  # session: a worker running another module in between keeps it
def acdc_like(tmp_path_factory) -> Path:
    """4-class synthetic H x W x slices volumes, split like prepare-acdc's output."""
    from ssmis.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("acdc") / "data", dims=3, classes=4, cases=8, labeled=3,
                                  val=2, size=64)


@pytest.mark.parametrize("bundle", ACDC_BUNDLES)
def test_acdc_bundle_trains_on_slices_and_scores_each_structure(bundle, acdc_like, tmp_path):
    out = tmp_path / "run"
    run_bundle(bundle, ["train.yaml", "cpu_protocol.yaml"], "--dataset_dir", str(acdc_like), "--output_dir", str(out),
               "--num_iterations", "40", "--val_interval", "20", "--learning_rate", "0.05", *SMALL,
               *EXTRA.get(bundle, []), timeout=900)
    losses = _tb(out / "logs", "loss")
    assert len(losses) == 40 and all(np.isfinite(losses))
    if bundle == "transmedseg_acdc":  # multi-class TSA: a statistic per structure, and the terms after pre-training
        for tag in ("loss/tsa", "loss/graph", "tsa/cond_class3"):
            assert len(_tb(out / "logs", tag)) == 30, tag
        assert np.mean(_tb(out / "logs", "loss/bcp")[-8:]) < np.mean(_tb(out / "logs", "loss/bcp")[:8])
    elif bundle == "fixed_dynamic_pl_acdc":  # both networks learn; the dynamic pseudo-labels come from 2D crops
        for tag in ("loss/sup1", "loss/sup2"):
            v = _tb(out / "logs", tag)
            assert np.mean(v[-8:]) < np.mean(v[:8]), (tag, v)
        assert len(_tb(out / "logs", "loss/dyn1")) == 40
    else:
        assert np.mean(losses[-8:]) < np.mean(losses[:8]), losses
    run_bundle(bundle, ["train.yaml", "cpu_protocol.yaml", "evaluate.yaml"], "--dataset_dir", str(acdc_like),
               "--output_dir", str(out), *SMALL, timeout=600)
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    assert {"dice", "dice_class1", "dice_class2", "dice_class3", "hd95_vox", "asd_vox"} <= set(metrics["mean"])
    assert len(metrics["cases"]) == 2


class _Threshold(torch.nn.Module):
    """A stand-in network for slices ``[B, 1, H, W]``: class 1 where the image is bright, else background."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > 0.5).float() * 20.0 - 10.0
        return torch.cat([-fg, fg, torch.full_like(x, -30.0), torch.full_like(x, -30.0)], 1)


def test_slice_wise_inference_gives_back_each_volumes_grid(tmp_path):
    """A volume of another in-plane size is resized to the network's, segmented slice by slice and resized back:
    the label map has the image's shape and affine, and lies where the bright structure is (no flip or turn)."""
    from monai.bundle import ConfigParser

    shape = (150, 110, 5)
    image = np.zeros(shape, np.float32)
    mask = np.zeros(shape, np.uint8)
    for k in range(shape[2]):  # an off-centre rectangle, moving from slice to slice
        mask[20 + 10 * k: 70 + 10 * k, 10: 40 + 5 * k, k] = 1
    image[mask > 0] = 3.0
    affine = np.diag([1.5, 1.5, 10.0, 1.0])
    (tmp_path / "data" / "imagesTs").mkdir(parents=True)
    nib.save(nib.Nifti1Image(image, affine), str(tmp_path / "data" / "imagesTs" / "p001_frame01.nii.gz"))
    parser = ConfigParser()
    parser.read_config(config_list("transmedseg_acdc", "inference"))
    parser.update({"bundle_root": str(BUNDLES / "transmedseg_acdc"), "dataset_dir": str(tmp_path / "data"),
                   "output_dir": str(tmp_path / "out"), "device": "$torch.device('cpu')", "handlers": []})
    parser["network"] = _Threshold()
    parser.get_parsed_content("evaluator").run()
    out = nib.load(str(next((tmp_path / "out").rglob("*_seg.nii.gz"))))
    seg = np.asarray(out.dataobj)
    assert seg.shape == shape and np.allclose(out.affine, affine)
    dice = 2 * ((seg == 1) & (mask == 1)).sum() / ((seg == 1).sum() + (mask == 1).sum())
    assert dice > 0.97, dice


def test_the_app_serves_transmedseg_acdc_slice_by_slice(tmp_path):
    """The MONAI Label app's predictor reads an H x W x slices volume for the 2D network, and gives back a label map
    on the volume's grid, with the three structures' names; the app refuses to mix it with LA models."""
    import sys

    from conftest import ROOT

    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.configs.transmedseg_acdc import TransMedSegACDC

    config = TransMedSegACDC()
    model_dir = tmp_path / "model"
    (model_dir / "transmedseg_acdc").mkdir(parents=True)
    config.init("transmedseg_acdc", str(model_dir), {"device": "cpu"}, None, bundles_dir=str(BUNDLES))
    assert config.labels == {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}
    predictor = config.predictor
    assert (predictor.network_dims, predictor.spatial_dims) == (2, 3)
    torch.save(predictor._parser().get_parsed_content("network_def").state_dict(),
               model_dir / "transmedseg_acdc" / "model.pt")
    shape = (140, 120, 4)
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4)),
             str(tmp_path / "p001_frame01.nii.gz"))
    prediction = predictor.predict(tmp_path / "p001_frame01.nii.gz")
    assert prediction.probs.shape == (4, 256, 256, 4)  # the network's in-plane size, slice by slice
    assert prediction.label.shape == shape
    from lib.configs import served_models

    assert served_models("transmedseg_acdc, supervised_acdc") == ["transmedseg_acdc", "supervised_acdc"]
    assert "transmedseg_acdc" not in served_models("all")  # 'all' is every LA model
    with pytest.raises(ValueError, match=r"mix the tasks \['acdc', 'la'\]"):
        served_models("transmedseg_acdc,supervised_la")
    with pytest.raises(ValueError, match="unknown model"):
        served_models("transmedseg_acd")


def test_each_process_draws_its_own_slices_with_replacement():
    """One sampler definition serves both workflows: volumes drawn with replacement, ``val_interval`` batches per
    round, from a generator seeded by the process's rank (``multi_gpu_train.yaml`` sets ``sampler_rank``)."""
    from monai.bundle import ConfigParser

    draws = {}
    for names, rank in ((("train",), 0), (("train", "multi_gpu_train"), 0), (("train", "multi_gpu_train"), 1)):
        parser = ConfigParser()
        parser.read_config(config_list("supervised_acdc", *names))
        parser.update({"train#dataset": "$list(range(6))", "train#unlabeled_dataset": "$list(range(10))",
                       "sampler_rank": rank, "val_interval": 50, "batch_size": 4})
        key = "train#sampler" if "multi_gpu_train" in names else "train#dataloader#sampler"
        sampler = parser.get_parsed_content(key)
        assert isinstance(sampler, torch.utils.data.RandomSampler) and sampler.replacement
        assert len(sampler) == 200 and parser.get_parsed_content(key) is sampler
        draws[(names, rank)] = list(sampler)
        unlabeled = parser.get_parsed_content("unlabeled_slice_sampler")
        assert len(unlabeled) == 50 * parser.get_parsed_content("unlabeled_batch_size")
    single, ddp0, ddp1 = draws.values()
    assert single == ddp0 != ddp1 and set(single) == set(range(6))  # each volume drawn, repeats allowed


@pytest.mark.parametrize("extra, lr_at", [((), {400: 0.01, 600: 0.01 * (1 - 100 / 1500) ** 0.9, 1999: None}),
                                          (("step_schedule",), {400: 0.01, 600: 0.001, 1200: 0.0001})])
def test_transmedseg_acdc_cpu_protocol_restarts_the_rate_for_self_training(extra, lr_at):
    """The CPU protocol's default (from 0.2.0) holds 0.01 through the 500 pre-training iterations, restarts and
    decays poly over self-training; step_schedule.yaml restores the step schedule counted from the run's start
    (x0.1 at 7/24 of the run: self-training at 0.001 and below)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_list("transmedseg_acdc", "train", "cpu_protocol", *extra))
    parser["optimizer"] = "$torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)"
    assert parser.get_parsed_content("pretrain_iterations") == 500
    scheduler = parser.get_parsed_content("lr_scheduler")
    lrs = {}
    for it in range(1, 2000):
        scheduler.optimizer.step()
        scheduler.step()
        lrs[it] = scheduler.get_last_lr()[0]
    for it, lr in lr_at.items():
        if lr is None:
            assert lrs[it] < 1e-4  # decayed to (almost) nothing at the end
        else:
            assert lrs[it] == pytest.approx(lr, rel=1e-3), (it, lrs[it])
    # the self_training_schedule.yaml the first rows named is the default now: merging it changes nothing
    if not extra:
        again = ConfigParser()
        again.read_config(config_list("transmedseg_acdc", "train", "cpu_protocol", "self_training_schedule"))
        assert again["lr_scheduler#schedulers#1"] == parser["self_training_scheduler"]
