"""TSA statistics against numpy, checkpointing, and TSA plugged into the mean teacher (2D, multi-class)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.losses import DiceCELoss
from monai.networks.nets import BasicUNet
from torch.utils.data import DataLoader

from ssmis.engines import MeanTeacherStrategy, SemiSupervisedTrainer
from ssmis.tsa import ClassFeatureStatistics, OnlineClassStatistics, TransferableSemanticAugmentation


def test_count_estimator_matches_numpy_with_absent_classes():
    rng = np.random.default_rng(0)
    est = OnlineClassStatistics(num_classes=4, feature_dim=3, estimator="count")
    seen = {c: [] for c in range(4)}
    for it in range(6):
        n = rng.integers(5, 40)
        # class 3 never appears; class 2 only in some batches
        labels = rng.choice([0, 1, 2] if it % 2 else [0, 1], size=n)
        feats = rng.normal(size=(n, 3)) + labels[:, None]
        est.update(torch.from_numpy(feats), torch.from_numpy(labels))
        for c in range(4):
            seen[c].append(feats[labels == c])
    for c in range(3):
        x = np.concatenate(seen[c])
        np.testing.assert_allclose(est.mean[c].numpy(), x.mean(0), atol=1e-10)
        np.testing.assert_allclose(est.cov[c].numpy(), np.cov(x.T, bias=True), atol=1e-10)
        assert est.count[c] == len(x)
    assert est.count[3] == 0 and torch.all(est.mean[3] == 0) and torch.all(est.cov[3] == 0)


def test_ema_estimator():
    est = OnlineClassStatistics(2, 2, estimator="ema", momentum=0.25)
    a = torch.tensor([[1.0, 1.0], [3.0, 3.0]])
    est.update(a, torch.tensor([0, 0]))
    np.testing.assert_allclose(est.mean[0].numpy(), [2.0, 2.0])  # the first batch initialises
    est.update(torch.tensor([[6.0, 6.0]]), torch.tensor([0]))
    np.testing.assert_allclose(est.mean[0].numpy(), [0.75 * 2 + 0.25 * 6] * 2)
    assert torch.all(est.mean[1] == 0)  # class 1 never seen


def test_subsample_bound_and_state_dict_round_trip():
    stats = ClassFeatureStatistics(2, 3, max_per_class=5)
    feats = torch.randn(100, 3)
    labels = torch.cat([torch.zeros(90), torch.ones(10)]).long()
    f, y = stats.subsample(feats, labels)
    assert (y == 0).sum() == 5 and (y == 1).sum() == 5
    stats.update(feats, labels, feats + 1, labels)
    assert stats.source.count.tolist() == [5.0, 5.0]
    other = ClassFeatureStatistics(2, 3)
    other.load_state_dict(stats.state_dict())
    torch.testing.assert_close(other.mean_shift(), stats.mean_shift())
    torch.testing.assert_close(other.target.cov, stats.target.cov)


def _multiclass_2d(n, classes=4, size=32, labeled=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        y = torch.zeros(1, size, size, dtype=torch.long)
        for c in range(1, classes):
            r, q = torch.randint(0, size - 8, (2,), generator=g).tolist()
            y[:, r : r + 8, q : q + 8] = c
        x = y.float() / classes + 0.2 * torch.randn(1, size, size, generator=g)
        items.append({"image": x, "label": y} if labeled else {"image": x})
    return items


@pytest.mark.parametrize("bidirectional", [False, True])
def test_tsa_on_mean_teacher_2d_multiclass_trains(bidirectional):
    torch.manual_seed(0)
    net = BasicUNet(2, 1, 4, features=(8, 8, 16, 16, 32, 8))
    ema = EMAHandler(net, momentum=0.01)
    tsa = TransferableSemanticAugmentation(net, num_classes=4, ramp_iterations=20, max_per_class=256,
                                           bidirectional=bidirectional)
    strategy = MeanTeacherStrategy(net, ema.ema_model, DiceCELoss(to_onehot_y=True, softmax=True), 0.1, tsa=tsa)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    trainer = SemiSupervisedTrainer("cpu", max_epochs=1, epoch_length=40,
                                    train_data_loader=DataLoader(_multiclass_2d(6), batch_size=2, shuffle=True),
                                    unlabeled_data_loader=DataLoader(_multiclass_2d(6, labeled=False, seed=1),
                                                                     batch_size=2, shuffle=True),
                                    strategy=strategy, optimizers=opt, train_handlers=[tsa, ema])
    log = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: log.append(dict(e.state.output)))
    trainer.run()
    sup = [float(o["loss/sup"]) for o in log]
    assert np.mean(sup[-8:]) < 0.8 * np.mean(sup[:8])
    assert float(log[0]["tsa/lambda"]) == 0.0 and float(log[-1]["tsa/lambda"]) == pytest.approx(0.25)
    assert all(torch.isfinite(o["loss/tsa"]) for o in log)
    assert "tsa/cond_class3" in log[-1] and "pseudo/entropy" in log[-1]
    assert tsa.statistics.source.count.min() > 0  # every class reached the memory module
    # the statistics travel with the module's state_dict, i.e. with the checkpoint
    assert any(k.startswith("statistics.target.cov") for k in tsa.state_dict())


def test_tsa_plugs_into_a_new_teacher_student_strategy_by_its_tsa_alone():
    """A teacher–student strategy written against ``Strategy`` gets TSA from its ``tsa`` and ``add_tsa``: the
    strategy attaches the λ ramp, so no handler list names it, and attaching it again (a config that does list it)
    registers nothing twice."""
    from ssmis.engines import Strategy

    class NoisyStudent(Strategy):  # a minimal teacher–student method: CE on labels, the teacher's argmax elsewhere
        def __init__(self, network, teacher, tsa):
            self.network, self.teacher, self.tsa, self.networks = network, teacher, tsa, (network,)

        def __call__(self, engine, labeled, unlabeled):
            x = torch.cat([labeled["image"], unlabeled["image"]])
            with torch.no_grad():
                pseudo = self.teacher(unlabeled["image"]).argmax(1, keepdim=True)
            logits = self.network(x)
            targets = torch.cat([labeled["label"], pseudo])
            loss = torch.nn.functional.cross_entropy(logits, targets[:, 0])
            source = torch.zeros_like(targets, dtype=torch.bool)
            source[: labeled["image"].shape[0]] = True
            out = {}
            out["loss"] = self.add_tsa(out, loss, targets, source)
            return out

    torch.manual_seed(0)
    net = BasicUNet(2, 1, 4, features=(8, 8, 16, 16, 32, 8))
    ema = EMAHandler(net, momentum=0.01)
    tsa = TransferableSemanticAugmentation(net, num_classes=4, ramp_iterations=6, max_per_class=64)
    trainer = SemiSupervisedTrainer("cpu", max_epochs=1, epoch_length=6,
                                    train_data_loader=DataLoader(_multiclass_2d(4), batch_size=2),
                                    unlabeled_data_loader=DataLoader(_multiclass_2d(4, labeled=False), batch_size=2),
                                    strategy=NoisyStudent(net, ema.ema_model, tsa),
                                    optimizers=torch.optim.SGD(net.parameters(), lr=0.01), train_handlers=[ema])
    tsa.attach(trainer)  # as a config listing it among the handlers would
    log = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: log.append(dict(e.state.output)))
    trainer.run()
    lam = [float(o["tsa/lambda"]) for o in log]
    assert lam[0] == 0.0 and lam[-1] > 0 and lam == sorted(lam)  # the ramp ran without being listed
    assert all(torch.isfinite(o["loss/tsa"]) for o in log) and tsa.statistics.source.count.sum() > 0
    with pytest.raises(ValueError, match="already exists"):  # ignite's refusal that attach avoids
        tsa.ramp.attach(trainer)


def _two_rank_statistics(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        gen = torch.Generator().manual_seed(rank)
        est = OnlineClassStatistics(num_classes=3, feature_dim=2, estimator="count")
        for it in range(4):
            # rank 1 never sees class 2, and its batch at iteration 2 is empty; class counts differ per rank
            n = 0 if (rank == 1 and it == 2) else 7 + 5 * rank + it
            labels = torch.randint(0, 2 if rank else 3, (n,), generator=gen)
            feats = torch.randn(n, 2, generator=gen, dtype=torch.float64) * (1 + rank) + labels.unsqueeze(1)
            est.update(feats, labels)
            torch.save((feats, labels), f"{out_dir}/batch_{rank}_{it}.pt")
        torch.save(est.state_dict(), f"{out_dir}/state_{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_statistics_are_synchronised_across_processes(tmp_path):
    # two gloo processes with different batches must both end with the statistics of the union of all batches
    torch.multiprocessing.spawn(_two_rank_statistics, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    states = [torch.load(tmp_path / f"state_{r}.pt") for r in range(2)]
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], rtol=0, atol=1e-12)
    batches = [torch.load(tmp_path / f"batch_{r}_{it}.pt") for r in range(2) for it in range(4)]
    feats = torch.cat([b[0] for b in batches]).numpy()
    labels = torch.cat([b[1] for b in batches]).numpy()
    for c in range(3):
        x = feats[labels == c]
        np.testing.assert_allclose(states[0]["mean"][c].numpy(), x.mean(0), atol=1e-10)
        np.testing.assert_allclose(states[0]["cov"][c].numpy(), np.cov(x.T, bias=True), atol=1e-10)
        assert states[0]["count"][c] == len(x)
