"""Rank and world size helpers, and the rank-0-only writers that use them, in real gloo process groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from ssmis.handlers import BestModelSaver, ResumableCheckpoint
from ssmis.utils import get_rank, get_world_size


def _two_ranks(rank: int, init_file: str, out_dir: str) -> None:
    seen = {"before": [get_rank(), get_world_size()]}
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        seen["during"] = [get_rank(), get_world_size()]
        # each rank writes into its own folder, so the test can see which ranks wrote at all
        run_dir = Path(out_dir) / f"rank{rank}"
        net = torch.nn.Linear(2, 1)
        trainer = Engine(lambda engine, batch: None)
        ResumableCheckpoint(run_dir, {"model": net}, save_interval=1).attach(trainer)
        trainer.run([0], max_epochs=1)
        evaluator = Engine(lambda engine, batch: None)
        evaluator.state.key_metric_name = "dice"
        evaluator.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(dice=0.5))
        BestModelSaver(run_dir, {"model": net}).attach(evaluator)
        evaluator.run([0], max_epochs=1)
    finally:
        dist.destroy_process_group()
    seen["after"] = [get_rank(), get_world_size()]  # a destroyed group reads as "not distributed" again
    Path(out_dir, f"seen{rank}.json").write_text(json.dumps(seen))


@pytest.mark.slow  # two processes in a gloo group
def test_rank_world_size_and_rank0_only_writes(tmp_path):
    torch.multiprocessing.spawn(_two_ranks, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    for rank in range(2):
        seen = json.loads((tmp_path / f"seen{rank}.json").read_text())
        assert seen == {"before": [0, 1], "during": [rank, 2], "after": [0, 1]}
    assert sorted(p.name for p in (tmp_path / "rank0").iterdir()) == ["checkpoint.pt", "model.pt", "model_best.pt"]
    assert not (tmp_path / "rank1").exists() or not any((tmp_path / "rank1").iterdir())
