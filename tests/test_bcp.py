"""Copy-paste masks, region weights, graph clustering and the BCP/TransMedSeg strategy in 2D and 3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.networks.nets import BasicUNet
from torch.utils.data import DataLoader

from ssmis.engines import BCPStrategy, SemiSupervisedTrainer
from ssmis.tsa import TransferableSemanticAugmentation
from ssmis.losses import GraphClusteringLoss, masked_dice_ce, region_weighted_dice_ce
from ssmis.transforms import bidirectional_copy_paste, cuboid_mask


@pytest.mark.parametrize("shape", [(12, 9, 6), (30, 30)])
def test_cuboid_mask_extent(shape):
    for seed in range(10):
        m = cuboid_mask(shape, 2 / 3, generator=torch.Generator().manual_seed(seed))[0, 0]
        assert m.shape == shape
        nz = m.nonzero()
        extent = (nz.max(0).values - nz.min(0).values + 1).tolist()
        assert extent == [round(2 * s / 3) for s in shape]  # a solid cuboid of 2/3 of every axis
        assert m.sum() == np.prod(extent)


def test_bidirectional_copy_paste_formula():
    xl, xu = torch.full((2, 1, 4, 4), 1.0), torch.full((2, 1, 4, 4), 2.0)
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    x_in, x_out = bidirectional_copy_paste(xl, xu, m)
    assert torch.all(x_in[..., :2, :] == 1) and torch.all(x_in[..., 2:, :] == 2)
    assert torch.all(x_out[..., :2, :] == 2) and torch.all(x_out[..., 2:, :] == 1)
    yl, yu = torch.ones(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4, dtype=torch.long)
    y_in, y_out = bidirectional_copy_paste(yl, yu, m)
    assert y_in.dtype == torch.long and torch.equal(y_in, m.long().expand(2, 1, 4, 4))
    assert torch.equal(y_out, 1 - y_in)


def test_region_weights():
    # logits perfect inside the mask, maximally wrong outside: only the outside term costs anything
    target = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    target[..., :, 2:] = 1
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    logits = torch.zeros(1, 2, 4, 4)
    good = torch.nn.functional.one_hot(target[:, 0], 2).movedim(-1, 1).float() * 20 - 10
    logits = torch.where(m.bool(), good, -good)
    d_in, c_in = masked_dice_ce(logits, target, m)
    d_out, c_out = masked_dice_ce(logits, target, 1 - m)
    assert float(d_in + c_in) < 1e-3 and float(d_out + c_out) > 10
    full = region_weighted_dice_ce(logits, target, target, m, 1.0, 0.5)
    torch.testing.assert_close(full, 0.5 * (1.0 * (d_in + c_in) + 0.5 * (d_out + c_out)))
    torch.testing.assert_close(region_weighted_dice_ce(logits, target, target, m, 1.0, 1.0) - full,
                               0.25 * (d_out + c_out))


def test_graph_clustering_gradient_is_finite():
    feats = torch.randn(2, 16, 3, 3, 2, requires_grad=True)
    loss_fn = GraphClusteringLoss(16, clusters=3, max_nodes=20)
    loss = loss_fn(feats)
    loss.backward()
    assert torch.isfinite(loss) and float(loss.detach()) >= 0  # -Tr(W S Sᵀ) with W <= 0
    assert torch.isfinite(feats.grad).all() and feats.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in loss_fn.parameters())


def test_graph_clustering_switches():
    """``reduction`` divides the plain trace by n² or n; ``normalize`` makes the loss blind to the features' scale."""
    feats = torch.randn(1, 8, 3, 2, 2)  # n = 12 nodes, fewer than max_nodes: no subsample
    losses = {}
    for reduction in ("sum", "nodes", "pairs"):
        torch.manual_seed(0)
        losses[reduction] = GraphClusteringLoss(8, clusters=2, reduction=reduction, normalize=False)
    plain = losses["sum"]
    torch.testing.assert_close(losses["pairs"](feats) * 144, plain(feats))
    torch.testing.assert_close(losses["nodes"](feats) * 12, plain(feats))
    # the hand formula: W = (F Fᵀ − max)/τ, S = softmax(MLP(relu(GCN(softmax(W) F)))), −Tr(W S Sᵀ)
    f = feats.movedim(1, -1).reshape(-1, 8)
    w = (f @ f.t() - (f @ f.t()).max()) / 2.0
    s = torch.softmax(plain.mlp(torch.relu(plain.gcn(torch.softmax(w, 1) @ f))), 1)
    torch.testing.assert_close(plain(feats), -(w * (s @ s.t())).sum())
    torch.manual_seed(0)
    unit = GraphClusteringLoss(8, clusters=2)
    torch.testing.assert_close(unit(feats), unit(3.0 * feats))
    assert not torch.allclose(plain(feats), plain(3.0 * feats))
    # normalised and divided by n², W lies in [−2/τ, 0] and S·Sᵀ in [0, 1]: the loss is at most 2/τ = 1
    assert 0 <= float(unit(torch.randn(1, 8, 6, 6, 4))) <= 1.0
    with pytest.raises(ValueError, match="reduction must be one of"):
        GraphClusteringLoss(8, reduction="mean")


def test_pseudo_labels_keep_largest_component():
    class TwoBlobs(torch.nn.Module):
        def forward(self, x):
            logits = torch.zeros(x.shape[0], 2, *x.shape[2:])
            logits[:, 1, 1:4, 1:4] = 5.0   # a 9-pixel blob
            logits[:, 1, 6:7, 6:7] = 5.0   # a 1-pixel blob, removed by the largest-component filter
            return logits

    s = BCPStrategy(torch.nn.Identity(), TwoBlobs(), num_classes=2, largest_component=True)
    lab, _ = s.pseudo_label(torch.zeros(2, 1, 8, 8))
    assert lab.shape == (2, 1, 8, 8) and int(lab.sum()) == 18
    s = BCPStrategy(torch.nn.Identity(), TwoBlobs(), num_classes=2, largest_component=False)
    assert int(s.pseudo_label(torch.zeros(1, 1, 8, 8))[0].sum()) == 10


def _data(n, dims, classes, labeled=True, seed=0, size=32):
    g = torch.Generator().manual_seed(seed)
    shape = (size,) * dims
    items = []
    for _ in range(n):
        y = torch.zeros(1, *shape, dtype=torch.long)
        for c in range(1, classes):
            lo = torch.randint(0, size - 10, (dims,), generator=g).tolist()
            y[(slice(None), *[slice(s, s + 10) for s in lo])] = c
        x = y.float() / classes + 0.2 * torch.randn(1, *shape, generator=g)
        items.append({"image": x, "label": y} if labeled else {"image": x})
    return items


@pytest.mark.parametrize("dims, classes, size", [(2, 4, 32), (3, 2, 32)])
def test_transmedseg_strategy_trains(dims, classes, size):
    torch.manual_seed(0)
    net = BasicUNet(dims, 1, classes, features=(8, 8, 16, 16, 32, 8))
    ema = EMAHandler(net, momentum=0.01)
    tsa = TransferableSemanticAugmentation(net, classes, ramp_iterations=30, max_per_class=256)
    graph = GraphClusteringLoss(32, clusters=classes)
    strategy = BCPStrategy(net, ema.ema_model, classes, pretrain_iterations=10, graph_loss=graph,
                           graph_layer="down_4", tsa=tsa)
    opt = torch.optim.SGD(list(net.parameters()) + list(graph.parameters()), lr=0.05, momentum=0.9)
    trainer = SemiSupervisedTrainer(
        "cpu", max_epochs=1, epoch_length=40,
        train_data_loader=DataLoader(_data(6, dims, classes, size=size), batch_size=2, shuffle=True),
        unlabeled_data_loader=DataLoader(_data(6, dims, classes, labeled=False, seed=1, size=size), batch_size=2,
                                         shuffle=True),
        strategy=strategy, optimizers=opt, train_handlers=[tsa, ema])
    log = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: log.append(dict(e.state.output)))
    teacher_at_switch = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=10), lambda e: teacher_at_switch.update(
        {k: v.clone() for k, v in net.state_dict().items()}))
    trainer.run()
    assert [float(o["stage"]) for o in log] == [0.0] * 10 + [1.0] * 30
    bcp = [float(o["loss/bcp"]) for o in log[10:]]
    assert np.mean(bcp[-8:]) < np.mean(bcp[:8]), bcp
    for key in ("loss/graph", "loss/tsa", "pseudo/entropy", f"tsa/cond_class{classes - 1}"):
        assert key in log[-1]
    assert all(np.isfinite(float(o["loss"])) for o in log)


def test_bcp_rejects_odd_batches():
    s = BCPStrategy(torch.nn.Identity(), torch.nn.Identity(), 2)

    class E:
        class state:
            iteration = 1

    with pytest.raises(ValueError, match="even labelled batch"):
        s(E, {"image": torch.zeros(3, 1, 4, 4), "label": torch.zeros(3, 1, 4, 4)}, None)


def test_bcp_reduction_sums_the_two_mixed_images_by_default():
    """BCP adds the losses of x_in and x_out; ``bcp_reduction="mean"`` halves that, everything else equal."""
    losses = {}
    for reduction in ("sum", "mean"):
        torch.manual_seed(0)
        net = BasicUNet(3, 1, 2, features=(4, 4, 8, 8, 16, 4))
        strategy = BCPStrategy(net, net, 2, pretrain_iterations=0, largest_component=False, bcp_reduction=reduction)
        engine = type("E", (), {"state": type("S", (), {"iteration": 5})()})()
        x = torch.rand(2, 1, 32, 32, 32)
        y = (x > 0.5).long()
        torch.manual_seed(1)  # the same cuboid mask for both
        losses[reduction] = float(strategy(engine, {"image": x, "label": y}, {"image": x.flip(2)})["loss/bcp"])
    assert losses["mean"] == pytest.approx(0.5 * losses["sum"], rel=1e-5)
    with pytest.raises(ValueError, match="bcp_reduction"):
        BCPStrategy(net, net, 2, bcp_reduction="max")


def test_pretraining_loss_per_region_or_on_the_whole_image():
    """BCP's LA code pre-trains on (Dice + CE)/2 of the whole mixed image, its ACDC code on the same per region,
    summed (``pretrain_loss``); the two differ, and each matches its hand computation."""
    from types import SimpleNamespace

    from ssmis.losses import masked_dice_ce, region_weighted_dice_ce

    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 1)
    labeled = {"image": torch.rand(2, 1, 6, 6, 4), "label": torch.randint(0, 2, (2, 1, 6, 6, 4))}
    engine = SimpleNamespace(state=SimpleNamespace(iteration=1))
    losses = {}
    for kind in ("region", "whole"):
        strategy = BCPStrategy(net, net, 2, pretrain_iterations=5, largest_component=False, pretrain_loss=kind)
        torch.manual_seed(1)  # the same cuboid for both
        losses[kind] = float(strategy(engine, labeled, None)["loss"])
    torch.manual_seed(1)
    from ssmis.transforms import bidirectional_copy_paste, cuboid_mask

    mask = cuboid_mask((6, 6, 4), 2 / 3)
    x, _ = bidirectional_copy_paste(labeled["image"][:1], labeled["image"][1:], mask)
    y, _ = bidirectional_copy_paste(labeled["label"][:1], labeled["label"][1:], mask)
    logits = net(x)
    assert losses["region"] == pytest.approx(float(region_weighted_dice_ce(logits, y, y, mask, 1.0, 1.0)), rel=1e-5)
    whole = 0.5 * sum(masked_dice_ce(logits, y, torch.ones_like(y, dtype=logits.dtype)))
    assert (losses["whole"] == pytest.approx(float(whole), rel=1e-5)
            and losses["whole"] != pytest.approx(losses["region"]))
    with pytest.raises(ValueError, match="pretrain_loss"):
        BCPStrategy(net, net, 2, pretrain_loss="image")
