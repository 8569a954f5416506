"""SemiSupervisedTrainer, strategies, the ramp-up weight and the EMA teacher."""

from __future__ import annotations

import math

import pytest
import torch
from ignite.engine import Events
from ignite.handlers import EMAHandler
from monai.engines.utils import IterationEvents
from monai.handlers import StatsHandler
from monai.losses import DiceCELoss
from torch.utils.data import DataLoader

from ssmis.engines import MeanTeacherStrategy, SemiSupervisedTrainer, Strategy, SupervisedStrategy, scalar_terms
from ssmis.handlers import RampUpWeight


def blobs(n: int, labeled: bool = True, size: int = 16, seed: int = 0) -> list[dict]:
    """Bright squares on noise: a 2D task a tiny network learns in a few dozen steps."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(n):
        y = torch.zeros(1, size, size)
        r, c = torch.randint(2, size - 8, (2,), generator=g).tolist()
        y[:, r : r + 6, c : c + 6] = 1
        x = y * 2 - 1 + 0.5 * torch.randn(1, size, size, generator=g)
        items.append({"image": x, "label": y.long()} if labeled else {"image": x})
    return items


def tiny_net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 2, 1),
    )


class Recorder(Strategy):
    """Records what the engine hands over; a linear loss so every optimiser gets gradients."""

    def __init__(self, nets):
        self.networks = nets
        self.seen = []

    def __call__(self, engine, labeled, unlabeled):
        self.seen.append(None if unlabeled is None else unlabeled["image"][:, 0, 0, 0].tolist())
        loss = sum(n(labeled["image"]).mean() for n in self.networks)
        return {"loss": loss, "weight/unlabeled": 0.5}


def make_trainer(strategy, optimizers, unlabeled, iterations=6, batch=2, **kw):
    lab = DataLoader(blobs(4), batch_size=batch, shuffle=True)
    unl = None if unlabeled is None else DataLoader(unlabeled, batch_size=batch, shuffle=bool(unlabeled))
    return SemiSupervisedTrainer(device="cpu", max_epochs=1, epoch_length=iterations, train_data_loader=lab,
                                 unlabeled_data_loader=unl, strategy=strategy, optimizers=optimizers, **kw)


def test_unlabeled_loader_is_recycled_and_shuffled_independently():
    unl = [{"image": torch.full((1, 16, 16), float(i))} for i in range(4)]  # 2 batches per pass
    net = tiny_net()
    rec = Recorder([net])
    make_trainer(rec, torch.optim.SGD(net.parameters(), lr=0.01), unl, iterations=7).run()
    assert len(rec.seen) == 7 and all(s is not None for s in rec.seen)
    # each pass of 2 batches covers the 4 unlabelled items exactly once
    for p in range(3):
        assert sorted(rec.seen[2 * p] + rec.seen[2 * p + 1]) == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("unlabeled", [None, []])
def test_no_unlabeled_data_degrades_to_supervised(unlabeled, caplog):
    """No unlabelled loader, or one that draws nothing, trains supervised; the second says so once."""
    net = tiny_net()
    rec = Recorder([net])
    make_trainer(rec, torch.optim.SGD(net.parameters(), lr=0.01), unlabeled, iterations=3).run()
    assert rec.seen == [None, None, None]
    warned = [r for r in caplog.records if "unlabelled data loader drew no batch" in r.getMessage()]
    assert len(warned) == (0 if unlabeled is None else 1)


def test_loader_that_draws_no_batch_is_an_error():
    """drop_last with fewer records than a batch: ignite would run empty epochs (and a run would save an untrained
    model); the trainer refuses instead, for labelled data and for unlabelled data that exists but drops."""
    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)
    lab = DataLoader(blobs(3), batch_size=4, drop_last=True)
    trainer = SemiSupervisedTrainer(device="cpu", max_epochs=1, train_data_loader=lab, strategy=Recorder([net]),
                                    optimizers=opt)
    with pytest.raises(ValueError, match="labelled data loader yields no batch: 3 record"):
        trainer.run()
    unl = DataLoader(blobs(3, labeled=False), batch_size=4, drop_last=True)
    trainer = SemiSupervisedTrainer(device="cpu", max_epochs=1, epoch_length=2,
                                    train_data_loader=DataLoader(blobs(4), batch_size=2), unlabeled_data_loader=unl,
                                    strategy=Recorder([net]), optimizers=opt)
    with pytest.raises(ValueError, match="unlabelled data loader yields no batch: 3 record"):
        trainer.run()


def test_iterable_loader_that_draws_no_batch_is_an_error():
    """An iterable dataset's length is unknown before the run; a pass that draws nothing is refused when it ends,
    before any epoch handler (a checkpoint saver) runs."""
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter(blobs(self.n))

    net = tiny_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def refused(lab, match, **kwargs):
        trainer = SemiSupervisedTrainer(device="cpu", max_epochs=2, train_data_loader=lab, strategy=Recorder([net]),
                                        optimizers=opt, **kwargs)
        epochs = []
        trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
        with pytest.raises(ValueError, match=match):
            trainer.run()
        assert epochs == []

    for n, batch in ((0, 2), (3, 4)):
        refused(DataLoader(Stream(n), batch_size=batch, drop_last=True), "yields no batch: a full pass", epoch_length=3)
    # without epoch_length ignite would take the first pass's length, 0 for an empty stream, and "complete" the run
    # without an event to catch it: an unsized labelled loader needs epoch_length
    for n in (0, 4):
        refused(DataLoader(Stream(n)), "labelled data loader has no length .*: pass epoch_length")
    # a stream shorter than an epoch is restarted, as ignite does; it is not an error
    rec = Recorder([net])
    lab = DataLoader(Stream(4), batch_size=2)
    SemiSupervisedTrainer(device="cpu", max_epochs=2, epoch_length=3, train_data_loader=lab, strategy=rec,
                          optimizers=opt).run()
    assert len(rec.seen) == 6


def test_load_datalist_min_records(tmp_path):
    import json

    from ssmis.data import DataError, load_datalist

    (tmp_path / "datalist.json").write_text(json.dumps({"labeled": [{"image": f"{i}.nii.gz"} for i in range(3)]}))
    assert len(load_datalist(tmp_path, "labeled", None, 3)) == 3
    with pytest.raises(DataError, match=r"datalist.json: 2 'labeled' record\(s\) \(limit_labeled 2 of 3\), but one "
                                        "batch takes 3"):
        load_datalist(tmp_path, "labeled", 2, 3)
    with pytest.raises(DataError, match="0 'labeled' record"):
        load_datalist(tmp_path, "labeled", 0, 1)


def test_events_output_and_several_optimizers():
    nets = [tiny_net(0), tiny_net(1)]
    opts = {"a": torch.optim.SGD(nets[0].parameters(), lr=0.1), "b": torch.optim.SGD(nets[1].parameters(), lr=0.1)}
    before = [n[0].weight.detach().clone() for n in nets]
    trainer = make_trainer(Recorder(nets), opts, blobs(4, labeled=False), iterations=3)
    counts = {e: 0 for e in ("fwd", "loss", "bwd", "model")}
    for ev, key in ((IterationEvents.FORWARD_COMPLETED, "fwd"), (IterationEvents.LOSS_COMPLETED, "loss"),
                    (IterationEvents.BACKWARD_COMPLETED, "bwd"), (IterationEvents.MODEL_COMPLETED, "model")):
        trainer.add_event_handler(ev, lambda e, k=key: counts.__setitem__(k, counts[k] + 1))
    StatsHandler(output_transform=scalar_terms).attach(trainer)  # a standard MONAI handler on the output
    trainer.run()
    assert counts == {"fwd": 3, "loss": 3, "bwd": 3, "model": 3}
    for b, n in zip(before, nets):
        assert not torch.equal(b, n[0].weight)  # both optimisers stepped
    out = scalar_terms(trainer.state.output)
    assert set(out) == {"loss", "weight/unlabeled"} and out["weight/unlabeled"] == 0.5


def test_missing_loss_is_an_error():
    class Bad(Strategy):
        def __call__(self, engine, labeled, unlabeled):
            return {"sup": labeled["image"].sum()}

    net = tiny_net()
    with pytest.raises(KeyError, match="no 'loss'"):
        make_trainer(Bad(), torch.optim.SGD(net.parameters(), lr=0.1), None, iterations=1).run()


def test_bf16_autocast_on_cpu():
    net = tiny_net()
    seen = {}

    class Probe(SupervisedStrategy):
        def __call__(self, engine, labeled, unlabeled):
            seen["dtype"] = self.network(labeled["image"]).dtype
            return super().__call__(engine, labeled, unlabeled)

    strat = Probe(net, DiceCELoss(to_onehot_y=True, softmax=True))
    make_trainer(strat, torch.optim.SGD(net.parameters(), lr=0.1), None, iterations=1, amp=True,
                 amp_dtype=torch.bfloat16).run()
    assert seen["dtype"] == torch.bfloat16


def test_rampup_values():
    r = RampUpWeight(w0=2.0, length=100, kind="sigmoid")
    assert r.at(0) == pytest.approx(2.0 * math.exp(-5))
    assert r.at(50) == pytest.approx(2.0 * math.exp(-5 * 0.25))
    assert r.at(100) == r.at(1000) == pytest.approx(2.0)
    lin = RampUpWeight(w0=1.0, length=10, kind="linear")
    assert [lin.at(t) for t in (0, 5, 10, 20)] == [0.0, 0.5, 1.0, 1.0]
    with pytest.raises(ValueError):
        RampUpWeight(1.0, 10, kind="cosine")


def test_mean_teacher_trains_and_teacher_is_ema():
    student = tiny_net()
    ema = EMAHandler(student, momentum=0.01)  # decay 0.99
    teacher = ema.ema_model
    rampup = RampUpWeight(w0=0.1, length=20)
    strategy = MeanTeacherStrategy(student, teacher, DiceCELoss(to_onehot_y=True, softmax=True), rampup)
    opt = torch.optim.SGD(student.parameters(), lr=0.1, momentum=0.9)
    trainer = make_trainer(strategy, opt, blobs(6, labeled=False, seed=1), iterations=60, train_handlers=[rampup])
    ema.attach(trainer)  # after the optimiser step of each iteration
    snaps = {}

    @trainer.on(Events.ITERATION_STARTED(once=30))
    def _before(engine):
        snaps["t"] = [p.detach().clone() for p in teacher.parameters()]

    @trainer.on(Events.ITERATION_COMPLETED(once=30))
    def _after(engine):
        snaps["s"] = [p.detach().clone() for p in student.parameters()]
        snaps["t2"] = [p.detach().clone() for p in teacher.parameters()]

    losses = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output["loss/sup"])))
    trainer.run()
    for t, s, t2 in zip(snaps["t"], snaps["s"], snaps["t2"]):
        torch.testing.assert_close(t2, 0.99 * t + 0.01 * s)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10]), losses
    out = trainer.state.output
    assert {"loss", "loss/sup", "loss/consistency", "weight/unlabeled"} <= set(out)
    assert float(out["weight/unlabeled"]) == pytest.approx(rampup.at(59))


def _nan_loss(x):
    return x * float("nan")


def _nan_gradient(x):
    """Finite in the forward pass, NaN in the backward one: the classic ``where`` over a NaN branch (in the wild,
    e.g. a bfloat16 convolution backward)."""
    return x + torch.where(torch.tensor(True), torch.zeros(()), torch.sqrt(-x.abs() - 1))


@pytest.mark.parametrize("spoil, words", [(_nan_loss, r"the loss is not finite \(loss nan, weight/unlabeled 0.5"),
                                          (_nan_gradient, r"a gradient is not finite \(loss -?\d")])
def test_non_finite_loss_or_gradient_stops_before_the_step(spoil, words):
    """Without a GradScaler nothing would skip the step: a NaN loss or gradient stops the run, naming the iteration
    and the terms, with the weights as they were and no epoch handler (checkpoint saver) run."""

    class Blows(Recorder):
        def __call__(self, engine, labeled, unlabeled):
            out = super().__call__(engine, labeled, unlabeled)
            if engine.state.iteration == 3:
                out["loss"] = spoil(out["loss"])
            return out

    net = tiny_net()
    trainer = make_trainer(Blows([net]), torch.optim.SGD(net.parameters(), lr=0.1), None, iterations=5)
    before = {}
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=2),
                              lambda e: before.update({k: v.clone() for k, v in net.state_dict().items()}))
    epochs = []
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epochs.append(e.state.epoch))
    with pytest.raises(FloatingPointError, match="iteration 3: " + words):
        trainer.run()
    assert epochs == [] and all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_a_one_process_group_still_checks_the_loss(tmp_path):
    """Only a group of several processes skips the loss check (one rank stopping alone would hang the others);
    a world of one checks it as a plain run does, and names the loss rather than a gradient."""
    import torch.distributed as dist

    class Blows(Recorder):
        def __call__(self, engine, labeled, unlabeled):
            out = super().__call__(engine, labeled, unlabeled)
            out["loss"] = _nan_loss(out["loss"])
            return out

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        net = tiny_net()
        trainer = make_trainer(Blows([net]), torch.optim.SGD(net.parameters(), lr=0.1), None, iterations=2)
        with pytest.raises(FloatingPointError, match="iteration 1: the loss is not finite"):
            trainer.run()
    finally:
        dist.destroy_process_group()


def test_all_finite_checks_elements_not_a_norm():
    """Huge but finite gradients are finite (an L2 norm of them would overflow to inf); one NaN or inf is not."""
    from ssmis.engines.semi_supervised_trainer import _all_finite

    assert _all_finite([]) and _all_finite([torch.full((4,), 1e20), torch.ones(2, 2)])
    assert not _all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not _all_finite([torch.tensor([float("-inf")])])


def test_ramp_is_an_ignite_state_scheduler_that_follows_the_iteration():
    """``RampUpWeight`` writes ``engine.state.<name>`` at each iteration (ignite's ``StateParamScheduler``), keeps
    ``.value`` for its strategy, and a run resumed at iteration k continues the ramp at k, not at 0."""
    from types import SimpleNamespace

    from ignite.engine import Engine, Events
    from ignite.handlers.state_param_scheduler import StateParamScheduler

    from ssmis.handlers import RampUpWeight

    def run(n: int, **kw) -> list[float]:
        ramp = RampUpWeight(0.5, 10, kind="linear", name="w", **kw)
        assert isinstance(ramp, StateParamScheduler)
        engine = Engine(lambda e, b: None)
        ramp.attach(engine)
        seen = []
        engine.add_event_handler(Events.ITERATION_STARTED, lambda e: seen.append((e.state.w, ramp.value)))
        engine.run(range(n), max_epochs=1)
        assert all(a == b for a, b in seen)
        return [a for a, _ in seen]

    assert run(12) == pytest.approx([0.05 * i for i in range(10)] + [0.5, 0.5])
    assert run(4, delay=2) == pytest.approx([0.0, 0.0, 0.0, 0.05])  # 0 through the delay, then the ramp
    fresh = RampUpWeight(0.5, 10, kind="linear", name="w")  # a resumed run: no saved state, iteration 7
    state = SimpleNamespace(iteration=7)
    fresh(SimpleNamespace(state=state))
    assert state.w == fresh.value == pytest.approx(0.3)
