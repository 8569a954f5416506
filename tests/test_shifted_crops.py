"""Shifted crops, mapping back, COM and CutMix: exact on the voxel."""

from __future__ import annotations

import pytest
import torch

from ssmis.transforms import (
    apply_cutmix,
    combine_fixed_dynamic,
    context_size,
    crop_at,
    cutmix_box,
    map_back,
    sample_beta,
    sample_shifts,
)


def ramps(batch, shape):
    """A volume whose every voxel holds its own coordinates: value = 10000·i + 100·j + k (+ 1e6·batch index)."""
    grids = torch.meshgrid(*[torch.arange(s, dtype=torch.float64) for s in shape], indexing="ij")
    code = sum(g * 100 ** (len(shape) - 1 - d) for d, g in enumerate(grids))
    return torch.stack([code + 1e6 * b for b in range(batch)]).unsqueeze(1)


def test_crops_with_known_offsets_map_back_exactly():
    crop, m = [6, 5, 4], [2, 2, 1]
    ctx = ramps(2, context_size(crop, m))
    offsets = torch.tensor([[2, -1, 0], [-2, 2, 1], [0, 0, -1], [1, 1, 1]])
    crops = crop_at(ctx, offsets, crop, m)
    assert crops.shape == (8, 1, 6, 5, 4)
    fixed = crop_at(ctx, torch.zeros(1, 3, dtype=torch.long), crop, m)
    # every shifted crop, placed back where it came from, agrees with the fixed crop voxel by voxel
    mean, cover = map_back(crops, offsets, batch=2)
    covered = cover > 0
    torch.testing.assert_close(mean[covered.expand_as(mean)], fixed[covered.expand_as(fixed)])
    # and the crop is exactly where its offset says: its first voxel is the fixed crop's voxel (offset)
    assert crops[0, 0, 0, 0, 0] == ctx[0, 0, 2 + 2, 2 - 1, 1 + 0]
    # voxel (0,0,0) of the fixed crop is covered only by offsets <= 0 on every axis: here [0, 0, -1] alone
    assert cover[0, 0, 0, 0, 0] == 1
    assert int(cover.max()) <= 4


def test_averaging_where_crops_overlap():
    offsets = torch.tensor([[1, 0], [0, 1]])
    preds = torch.cat([torch.full((1, 1, 4, 4), 2.0), torch.full((1, 1, 4, 4), 4.0)])
    mean, cover = map_back(preds, offsets, batch=1)
    assert mean[0, 0, 1, 1] == 3.0 and cover[0, 0, 1, 1] == 2  # covered by both: the average
    assert mean[0, 0, 1, 0] == 2.0 and cover[0, 0, 1, 0] == 1  # first crop only
    assert mean[0, 0, 0, 0] == 0.0 and cover[0, 0, 0, 0] == 0  # neither


def test_com_picks_the_right_source():
    fixed = torch.zeros(1, 2, 3, 3)
    temp = torch.ones(1, 2, 3, 3)
    cover = torch.zeros(1, 1, 3, 3)
    cover[..., 1:, :] = 2
    out = combine_fixed_dynamic(fixed, temp, cover)
    assert torch.all(out[..., 1:, :] == 1) and torch.all(out[..., :1, :] == 0)


def test_shift_sampling_always_overlaps():
    g = torch.Generator().manual_seed(0)
    crop, m = [8, 8, 6], [7, 3, 5]
    context_size(crop, m)  # valid
    s = sample_shifts(500, m, generator=g)
    assert s.shape == (500, 3)
    assert torch.all(s.abs() <= torch.tensor(m)) and torch.all(s.ne(0).any(1))
    assert torch.all(s.abs() < torch.tensor(crop))  # overlap on every axis
    with pytest.raises(ValueError, match="overlaps"):
        context_size([8, 8], [8, 1])
    with pytest.raises(ValueError, match="one entry per spatial axis"):  # zip would silently drop the third axis
        context_size([8, 8, 6], [2, 2])


def test_co_training_refuses_shifts_that_could_miss_the_fixed_crop():
    """The strategy checks the shift range itself, not only the bundle: a shift as large as the crop would give
    shifted crops that cover none of the fixed crop, and COM would silently fall back to the fixed label."""
    from ssmis.engines import CoTrainingStrategy

    nets = [torch.nn.Conv3d(1, 2, 1), torch.nn.Conv3d(1, 2, 1)]
    CoTrainingStrategy(nets, lambda p, y: p.sum(), crop=[8, 8, 4], max_shift=[7, 7, 3])  # the largest valid range
    with pytest.raises(ValueError, match=r"max_shift \[2, 8, 1\] must be >= 0 and < the crop size"):
        CoTrainingStrategy(nets, lambda p, y: p.sum(), crop=[8, 8, 4], max_shift=[2, 8, 1])
    with pytest.raises(ValueError, match="one entry per spatial axis"):
        CoTrainingStrategy(nets, lambda p, y: p.sum(), crop=[8, 8, 4], max_shift=[2, 2])
    with pytest.raises(ValueError, match="n_shifts"):
        CoTrainingStrategy(nets, lambda p, y: p.sum(), crop=[8, 8, 4], max_shift=[2, 2, 1], n_shifts=0)


def test_cutmix_identical_on_image_and_labels():
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = ramps(2, [6, 6, 4])
    y = (x.long() % 3)
    box = cutmix_box([6, 6, 4], generator=g)
    perm = torch.tensor([1, 0])
    xm, ym = apply_cutmix(x, box, perm), apply_cutmix(y, box, perm)
    inside = box.bool().expand_as(x)
    assert torch.equal(xm[inside], x[perm][inside]) and torch.equal(xm[~inside], x[~inside])
    assert torch.equal(ym, xm.long() % 3)  # the label of every mixed voxel is the label of the voxel it came from
    assert 0 < int(box.sum()) < box.numel()


@pytest.mark.parametrize("alpha, beta", [(4.0, 4.0), (0.5, 2.0), (1.0, 1.0)])
def test_sample_beta_with_a_generator_matches_beta_moments(alpha, beta):
    """20,000 draws from a seeded generator: mean and variance within 4 standard errors of Beta(α, β)'s."""
    g = torch.Generator().manual_seed(7)
    draws = torch.tensor([sample_beta(alpha, beta, g) for _ in range(20000)], dtype=torch.float64)
    assert bool(((draws > 0) & (draws < 1)).all())
    n, s = alpha + beta, draws.numel()
    mean, var = alpha / n, alpha * beta / (n * n * (n + 1))
    assert abs(float(draws.mean()) - mean) < 4 * (var / s) ** 0.5
    # the sample variance's standard error, from the fourth central moment of the draws themselves
    m4 = float(((draws - draws.mean()) ** 4).mean())
    assert abs(float(draws.var()) - var) < 4 * ((m4 - var**2) / s) ** 0.5


def test_cutmix_box_is_reproducible_from_its_generator():
    """λ and the position both come from the generator: the global generator's state does not change the box."""
    boxes, state = [], torch.get_rng_state()
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)
        boxes.append(cutmix_box([20, 20, 12], generator=torch.Generator().manual_seed(3)))
    torch.set_rng_state(state)
    assert torch.equal(boxes[0], boxes[1])
    sizes = {int(cutmix_box([20, 20, 12], generator=torch.Generator().manual_seed(k)).sum()) for k in range(8)}
    assert len(sizes) > 1  # λ does vary between seeds
    for bad in ((0, 1.0), (float("nan"), 1.0), (1.0, float("inf"))):
        with pytest.raises(ValueError, match="positive and finite"):
            sample_beta(*bad)
    # tiny shapes: the draws pile up at 0 and 1 without dividing 0 by 0 (P(λ > 1/2) = 1/2 by symmetry)
    g = torch.Generator().manual_seed(5)
    tiny = [sample_beta(1e-3, 1e-3, g) for _ in range(2000)]
    assert all(0.0 <= t <= 1.0 for t in tiny) and 900 < sum(t > 0.5 for t in tiny) < 1100


def test_co_training_lowers_both_losses():
    import numpy as np
    from ignite.engine import Events
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet
    from torch.utils.data import DataLoader

    from ssmis.engines import CoTrainingStrategy, SemiSupervisedTrainer

    def data(n, labeled, size, seed):
        g = torch.Generator().manual_seed(seed)
        items = []
        for _ in range(n):
            y = torch.zeros(1, size, size, dtype=torch.long)
            r, c = torch.randint(0, size - 10, (2,), generator=g).tolist()
            y[:, r : r + 10, c : c + 10] = 1
            x = y.float() + 0.3 * torch.randn(1, size, size, generator=g)
            items.append({"image": x, "label": y} if labeled else {"image": x})
        return items

    torch.manual_seed(0)
    nets = [BasicUNet(2, 1, 2, features=(8, 8, 16, 16, 32, 8)) for _ in range(2)]
    crop, m = [32, 32], [4, 4]
    strat = CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), crop, m, unlabeled_weight=0.3)
    opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9) for n in nets]
    trainer = SemiSupervisedTrainer(
        "cpu", max_epochs=1, epoch_length=40,
        train_data_loader=DataLoader(data(6, True, 32, 0), batch_size=2, shuffle=True),
        unlabeled_data_loader=DataLoader(data(6, False, 40, 1), batch_size=2, shuffle=True),  # 32 + 2*4 context
        strategy=strat, optimizers=opts)
    log = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: log.append(dict(e.state.output)))
    trainer.run()
    for k in ("loss/sup1", "loss/sup2"):
        v = [float(o[k]) for o in log]
        assert np.mean(v[-8:]) < 0.8 * np.mean(v[:8]), (k, v)
    for k in ("loss/fix1", "loss/fix2", "loss/dyn1", "loss/dyn2", "pseudo/dynamic_changed"):
        assert k in log[-1]


def test_softmax_average_is_scriptable():
    from ssmis.networks import SoftmaxAverage

    a, b = torch.nn.Conv2d(1, 2, 1), torch.nn.Conv2d(1, 2, 1)
    ens = SoftmaxAverage(a, b)
    x = torch.randn(1, 1, 4, 4)
    expected = (torch.softmax(a(x), 1) + torch.softmax(b(x), 1)) / 2
    torch.testing.assert_close(torch.softmax(ens(x), 1), expected)
    torch.testing.assert_close(torch.softmax(torch.jit.script(ens)(x), 1), expected)
    torch.testing.assert_close(torch.softmax(SoftmaxAverage(a, b, index=1)(x), 1), torch.softmax(b(x), 1))


def test_bundle_fixed_crop_is_random_over_every_position():
    """The bundle's unlabelled pipeline (pad, context crop) puts the fixed crop, the context's centre, at every
    position a crop can take, on axes longer than, equal to and shorter than the crop."""
    from monai.bundle import ConfigParser
    from monai.transforms import BorderPadd, RandSpatialCropd, SpatialPadd

    from conftest import config_list

    parser = ConfigParser()
    parser.read_config(config_list("fixed_dynamic_pl_la", "train"))
    parser["patch_size"] = [8, 8, 6]  # max_shift = patch // 4 = [2, 2, 1]
    crop, shift = parser.get_parsed_content("patch_size"), parser.get_parsed_content("max_shift")
    kinds = (BorderPadd, SpatialPadd, RandSpatialCropd)
    chain = [t for t in parser.get_parsed_content("train#unlabeled_transforms") if isinstance(t, kinds)]
    assert [type(t) for t in chain] == list(kinds)
    shape = (12, 8, 5)  # longer than the crop (4 + 1 start positions), equal to it, shorter than it
    volume = ramps(1, shape)[0] + 1  # +1: padding (0) is told apart from the volume
    starts = set()
    for seed in range(60):
        data = {"image": volume.clone()}
        for t in chain:
            if isinstance(t, RandSpatialCropd):
                t.set_random_state(seed)
            data = t(data)
        ctx = torch.as_tensor(data["image"])
        assert list(ctx.shape[1:]) == context_size(crop, shift)
        fixed = ctx[0, shift[0]:shift[0] + crop[0], shift[1]:shift[1] + crop[1], shift[2]:shift[2] + crop[2]]
        code = fixed[fixed > 0] - 1
        i, j, k = code // 10000, (code // 100) % 100, code % 100
        assert i.max() - i.min() == crop[0] - 1  # a full-length window on the long axis
        starts.add(int(i.min()))
        assert set(j.tolist()) == set(range(8)) and set(k.tolist()) == set(range(5))  # the whole of the others
    assert starts == set(range(shape[0] - crop[0] + 1))


def test_cut_with_one_unlabelled_volume_warns():
    """CutMix needs two unlabelled volumes; with one, training goes on without CUT and says so (once)."""
    import warnings

    from monai.losses import DiceCELoss

    from ssmis.engines import CoTrainingStrategy

    nets = [torch.nn.Conv3d(1, 2, 1) for _ in range(2)]
    strategy = CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), [8, 8, 8], [2, 2, 2],
                                  unlabeled_weight=1.0, use_cut=True)
    labeled = {"image": torch.rand(1, 1, 8, 8, 8), "label": torch.randint(0, 2, (1, 1, 8, 8, 8))}
    unlabeled = {"image": torch.rand(1, 1, 12, 12, 12)}
    with pytest.warns(UserWarning, match="CUT needs two unlabelled volumes"):
        out = strategy(None, labeled, unlabeled)
    assert torch.isfinite(out["loss"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy(None, labeled, unlabeled)  # warned once only


@pytest.mark.parametrize("mode, sn1_passes, sn2_passes", [("train", 2, 3), ("eval", 1, 1)])
def test_co_training_teacher_mode(mode, sn1_passes, sn2_passes):
    """BatchNorm counts its train-mode passes. With ``teacher_mode: train`` the teacher passes are train-mode
    passes (SN1: training + dynamic, its fixed label shared with its training pass; SN2: fixed + dynamic +
    training); with ``eval`` only the two training passes are, and SN2's fixed pseudo-label is its eval output."""
    from monai.losses import DiceCELoss

    from ssmis.engines import CoTrainingStrategy

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv3d(1, 4, 1), torch.nn.BatchNorm3d(4), torch.nn.Conv3d(4, 2, 1))
            for _ in range(2)]
    strategy = CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), [8, 8, 8], [2, 2, 2],
                                  unlabeled_weight=1.0, use_cut=False, teacher_mode=mode)
    labeled = {"image": torch.rand(2, 1, 8, 8, 8), "label": torch.randint(0, 2, (2, 1, 8, 8, 8))}
    unlabeled = {"image": torch.rand(2, 1, 12, 12, 12) * 3}
    fixed = unlabeled["image"][:, :, 2:10, 2:10, 2:10]
    with torch.no_grad():  # SN2 in eval mode with the running statistics it has before the step
        expected = torch.softmax(nets[1].eval()(fixed), 1)
    nets[1].train()
    seen = []
    nets[1].register_forward_hook(lambda m, i, o: seen.append((m.training, torch.softmax(o.detach(), 1))))
    out = strategy(None, labeled, unlabeled)
    out["loss"].backward()
    assert [int(n[1].num_batches_tracked) for n in nets] == [sn1_passes, sn2_passes]
    assert all(n.training for n in nets)  # modes restored
    assert seen[0][0] is (mode == "train")  # SN2's fixed pseudo-label pass comes first
    if mode == "eval":
        torch.testing.assert_close(seen[0][1], expected)
    else:
        assert (seen[0][1] - expected).abs().max() > 1e-3  # batch statistics: the check above could fail
    with pytest.raises(ValueError, match="teacher_mode"):
        CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), [8, 8, 8], [2, 2, 2], teacher_mode="x")


def test_co_training_cut_beta_reaches_the_box(monkeypatch):
    """``cut_beta`` is the (α, β) of CUT's λ ~ Beta(α, β): the strategy draws its box with it;
    bad values are named."""
    from monai.losses import DiceCELoss

    import ssmis.engines.co_training as co_training
    from ssmis.engines import CoTrainingStrategy

    drawn = []

    def recording_box(shape, alpha=4.0, beta=4.0, generator=None):
        drawn.append((tuple(shape), alpha, beta))
        return cutmix_box(shape, alpha, beta, generator)

    monkeypatch.setattr(co_training, "cutmix_box", recording_box)
    nets = [torch.nn.Conv3d(1, 2, 1) for _ in range(2)]
    loss = DiceCELoss(to_onehot_y=True, softmax=True)
    labeled = {"image": torch.rand(2, 1, 8, 8, 8), "label": torch.randint(0, 2, (2, 1, 8, 8, 8))}
    unlabeled = {"image": torch.rand(2, 1, 12, 12, 12)}
    for cut_beta in [(4.0, 4.0), (0.5, 2.0)]:
        strategy = CoTrainingStrategy(nets, loss, [8, 8, 8], [2, 2, 2], unlabeled_weight=1.0, cut_beta=cut_beta)
        assert torch.isfinite(strategy(None, labeled, unlabeled)["loss"])
        assert drawn[-1] == ((8, 8, 8), *cut_beta)
    for bad in [(4.0, 0.0), 4.0, None, "4,4", (4.0, "a"), (1.0, 2.0, 3.0)]:
        with pytest.raises(ValueError, match="cut_beta must be two positive numbers"):
            CoTrainingStrategy(nets, loss, [8, 8, 8], [2, 2, 2], cut_beta=bad)


def test_bundle_passes_cut_beta():
    from monai.bundle import ConfigParser

    from conftest import BUNDLES, config_list

    parser = ConfigParser()
    parser.read_config(config_list("fixed_dynamic_pl_la", "train", "cpu_protocol"))
    parser["bundle_root"] = str(BUNDLES / "fixed_dynamic_pl_la")
    assert parser.get_parsed_content("train#strategy").cut_beta == (4.0, 4.0)
    parser["cut_beta"] = [2.0, 3.0]
    assert parser.get_parsed_content("train#strategy", lazy=False).cut_beta == (2.0, 3.0)


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_co_training_teacher_precision(precision, monkeypatch):
    """``teacher_precision`` reaches exactly the gradient-free pseudo-label passes: with ``bfloat16`` their
    convolutions run in bfloat16 under autocast, the passes with gradients stay float32, and the pseudo-labels the
    losses see are float32 probabilities."""
    from monai.losses import DiceCELoss

    from ssmis.engines import CoTrainingStrategy

    torch.manual_seed(0)
    nets = [torch.nn.Sequential(torch.nn.Conv3d(1, 4, 1), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 1)) for _ in range(2)]
    seen = []  # (grad enabled, dtype of the first convolution's output) per pass
    for net in nets:
        net[0].register_forward_hook(lambda m, i, o: seen.append((torch.is_grad_enabled(), o.dtype)))
    strategy = CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), [8, 8, 8], [2, 2, 2],
                                  unlabeled_weight=1.0, use_cut=True, teacher_precision=precision)
    strategy.report_pseudo_labels = True
    from ssmis.engines import co_training

    targets = []  # the pseudo-labels each unlabelled loss term receives
    loss = co_training.pseudo_label_loss
    monkeypatch.setattr(co_training, "pseudo_label_loss", lambda pred, target, *a: targets.append(target) or
                        loss(pred, target, *a))
    labeled = {"image": torch.rand(2, 1, 8, 8, 8), "label": torch.randint(0, 2, (2, 1, 8, 8, 8))}
    out = strategy(None, labeled, {"image": torch.rand(2, 1, 12, 12, 12)})
    assert len(targets) == 4 and all(t.dtype == torch.float32 and not t.requires_grad for t in targets)
    assert all(torch.allclose(t.sum(1), torch.ones(())) for t in targets)  # probabilities over the classes
    out["loss"].backward()
    low = torch.bfloat16 if precision == "bfloat16" else torch.float32
    assert sorted(set(seen)) == sorted({(True, torch.float32), (False, low)})
    assert [g for g, _ in seen].count(False) == 3  # SN2's fixed crop, the shifted crops of each network
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    with pytest.raises(ValueError, match="teacher_precision"):
        CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), [8, 8, 8], [2, 2, 2],
                           teacher_precision="float16")
