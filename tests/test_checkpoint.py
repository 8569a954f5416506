"""ResumableCheckpoint and the atomic writers."""

from __future__ import annotations

import time

import pytest
import torch
from ignite.engine import Engine, Events

from ssmis.handlers import ResumableCheckpoint
from ssmis.utils import atomic_output_dir, atomic_torch_save


def make_engine(net, opt, slow=0.0):
    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch).pow(2).mean()
        loss.backward()
        opt.step()
        time.sleep(slow)
        return loss.item()

    return Engine(step)


def test_resume_continues_counters_and_weights(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    data = [torch.randn(4, 3) for _ in range(5)]
    e = make_engine(net, opt)
    ResumableCheckpoint(tmp_path, {"model": net, "optimizer": opt}, save_interval=5).attach(e)
    e.run(data, max_epochs=2)
    saved = {k: v.clone() for k, v in net.state_dict().items()}

    net2 = torch.nn.Linear(3, 1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    e2 = make_engine(net2, opt2)
    ResumableCheckpoint(tmp_path, {"model": net2, "optimizer": opt2}, save_interval=5).attach(e2)
    seen = []
    e2.add_event_handler(Events.ITERATION_COMPLETED, lambda en: seen.append(en.state.iteration))
    loaded = {}
    e2.add_event_handler(Events.STARTED, lambda en: loaded.update({k: v.clone() for k, v in net2.state_dict().items()}))
    e2.run(data, max_epochs=3)
    for k in saved:
        torch.testing.assert_close(loaded[k], saved[k])
    assert seen == [11, 12, 13, 14, 15]  # only the third epoch ran
    assert torch.load(tmp_path / "model.pt", weights_only=True).keys() == {"model"}


def test_max_wall_s_stops_and_saves(tmp_path):
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    e = make_engine(net, opt, slow=0.05)
    ResumableCheckpoint(tmp_path, {"model": net}, save_interval=0, max_wall_s=0.3).attach(e)
    e.run([torch.randn(2, 3)] * 100, max_epochs=1)
    it = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["trainer"]["iteration"]
    assert 1 <= it < 100


def test_corrupt_checkpoint_is_named(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    net = torch.nn.Linear(3, 1)
    e = make_engine(net, torch.optim.SGD(net.parameters(), lr=0.1))
    ResumableCheckpoint(tmp_path, {"model": net}).attach(e)
    with pytest.raises(RuntimeError, match="checkpoint.pt: cannot load"):
        e.run([torch.randn(2, 3)], max_epochs=1)


def test_bad_configuration():
    net = torch.nn.Linear(3, 1)
    with pytest.raises(ValueError, match="model_keys"):
        ResumableCheckpoint("x", {"net": net})
    with pytest.raises(ValueError, match="must not hold 'trainer'"):
        ResumableCheckpoint("x", {"model": net, "trainer": net}).attach(Engine(lambda e, b: None))


def test_atomic_torch_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "model.pt"
    atomic_torch_save({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({"a": Unpicklable()}, path)
    assert torch.load(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_atomic_output_dir(tmp_path):
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(out) as tmp:
            (tmp / "b.txt").write_text("2")
            1 / 0
    assert [p.name for p in out.iterdir()] == ["a.txt"]
    with atomic_output_dir(out) as tmp:
        (tmp / "c.txt").write_text("3")
    assert [p.name for p in out.iterdir()] == ["c.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
