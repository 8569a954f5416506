"""PretrainingStage: self-training starts from the pre-trained state selected on validation, with a fresh optimiser,
and BCP's teacher starts from that same state."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler
from monai.networks.nets import BasicUNet
from torch.utils.data import DataLoader

from ssmis.engines import BCPStrategy, SemiSupervisedTrainer
from ssmis.handlers import PretrainingStage

SCORES = {2: 0.5, 4: 0.9, 6: 0.7}  # validation Dice after iterations 2, 4 and 6 of pre-training; 4 is the best


def _batches(n: int, labeled: bool, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        y = (torch.rand(1, 32, 32, generator=g) > 0.5).long()
        item = {"image": y.float() + 0.1 * torch.randn(1, 32, 32, generator=g)}
        if labeled:
            item["label"] = y
        out.append(item)
    return out


def _run(select: str, reset_optimizer: bool = True, stop_at: int | None = None, resume: dict | None = None,
         restore_optimizer: bool = False):
    """Pre-train 6 iterations (validation every 2, scripted scores), self-train 2; return what was seen."""
    torch.manual_seed(0)
    net = BasicUNet(2, 1, 2, features=(4, 4, 8, 8, 16, 4))
    ema = EMAHandler(net, momentum=0.5)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    trainer_ref: list[Engine] = []

    def validate(engine, _):  # a stand-in evaluator: the score scripted for the trainer's iteration
        engine.state.metrics["val_mean_dice"] = SCORES[trainer_ref[0].state.iteration]

    evaluator = Engine(validate)
    evaluator.state.key_metric_name = "val_mean_dice"
    stage = PretrainingStage(net, 6, evaluator=evaluator, optimizer=opt, select=select,
                             reset_optimizer=reset_optimizer, restore_optimizer=restore_optimizer)
    if resume is not None:
        stage.load_state_dict(resume)
    strategy = BCPStrategy(net, ema.ema_model, 2, pretrain_iterations=6, largest_component=False)
    trainer = SemiSupervisedTrainer(
        "cpu", max_epochs=1, epoch_length=8,
        train_data_loader=DataLoader(_batches(4, True, 0), batch_size=2),
        unlabeled_data_loader=DataLoader(_batches(4, False, 1), batch_size=2),
        strategy=strategy, optimizers=opt, train_handlers=[ema, stage])
    trainer_ref.append(trainer)
    trainer.add_event_handler(Events.ITERATION_COMPLETED(event_filter=lambda _, i: i in SCORES and i <= 6),
                              lambda _: evaluator.run([0]))
    seen: dict = {"states": {}, "momentum": {}}
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen["states"].__setitem__(
        e.state.iteration, {k: v.clone() for k, v in net.state_dict().items()}))
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen["momentum"].__setitem__(
        e.state.iteration, [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]))

    def at_switch(_):
        seen["student"] = {k: v.clone() for k, v in net.state_dict().items()}
        seen["teacher"] = {k: v.clone() for k, v in ema.ema_model.state_dict().items()}
        seen["optimizer_state"] = len(opt.state)
        seen["momentum_at_switch"] = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()
                                      if p in opt.state]
        seen["lr_at_switch"] = opt.param_groups[0]["lr"]
        seen["stage_state"] = stage.state_dict()

    trainer.add_event_handler(Events.ITERATION_STARTED(once=7), at_switch)
    # the schedule's rate moves after the best iteration (4): the switch must keep it, not the rate kept with the state
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=5), lambda _: opt.param_groups[0].update(lr=0.05))
    if stop_at is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED(once=stop_at), lambda e: e.terminate())
    trainer.run()
    seen["stage"] = stage
    return seen


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_self_training_starts_from_the_best_pre_trained_state_with_a_fresh_optimiser():
    seen = _run("best")
    assert seen["stage_state"]["best_iteration"] == 4 and seen["stage_state"]["best_metric"] == pytest.approx(0.9)
    assert _same(seen["student"], seen["states"][4]) and not _same(seen["student"], seen["states"][6])
    assert _same(seen["teacher"], seen["states"][4])  # BCP's teacher copy comes after the stage's restore
    assert seen["optimizer_state"] == 0  # no momentum carried into self-training
    assert seen["stage_state"]["best_state"] is None  # dropped after the switch


def test_last_keeps_the_last_pre_trained_state_and_the_optimiser_when_asked():
    seen = _run("last", reset_optimizer=False)
    assert _same(seen["student"], seen["states"][6]) and _same(seen["teacher"], seen["states"][6])
    assert seen["optimizer_state"] > 0


def test_restore_optimizer_takes_the_optimiser_state_kept_with_the_selected_weights():
    """BCP on ACDC reloads the optimiser saved with its best pre-trained model: the momentum at the switch is the
    one of the selected iteration (4), not of the last (6); the learning rate stays the schedule's."""
    seen = _run("best", reset_optimizer=False, restore_optimizer=True)
    assert _same(seen["student"], seen["states"][4])
    kept, last = seen["momentum"][4], seen["momentum"][6]
    assert all(torch.equal(a, b) for a, b in zip(seen["momentum_at_switch"], kept))
    assert not all(torch.equal(a, b) for a, b in zip(kept, last))  # the check above could fail
    assert seen["lr_at_switch"] == 0.05 and seen["stage_state"]["best_optimizer_state"] is None
    without = _run("best", reset_optimizer=False)  # neither: the optimiser goes on from iteration 6
    assert all(torch.equal(a, b) for a, b in zip(without["momentum_at_switch"], without["momentum"][6]))
    with pytest.raises(ValueError, match="exclude each other"):
        PretrainingStage(torch.nn.Linear(1, 1), 2, evaluator=Engine(lambda e, b: None), reset_optimizer=True,
                         restore_optimizer=True)


def test_the_selection_survives_a_resume_during_pre_training():
    """A run stopped after iteration 5 keeps (best 0.9 at 4, its weights) in its checkpoint entry; a fresh run
    given that entry selects the resumed state over its own later, worse, scores."""
    first = _run("best", stop_at=5)
    saved = first["stage"].state_dict()
    assert saved["best_iteration"] == 4 and _same(saved["best_state"], first["states"][4])
    second = _run("best", resume=saved)
    assert _same(second["student"], first["states"][4])


def test_no_pretraining_builds_nothing_and_best_needs_an_evaluator():
    net = torch.nn.Linear(2, 2)
    engine = Engine(lambda e, b: None)
    PretrainingStage(net, 0, select="last").attach(engine)
    for event in (Events.ITERATION_STARTED, Events.ITERATION_COMPLETED):
        assert not engine._event_handlers[event]
    with pytest.raises(ValueError, match="needs the evaluator"):
        PretrainingStage(net, 5, select="best")
    with pytest.raises(ValueError, match="'best' or 'last'"):
        PretrainingStage(net, 5, select="first")
