"""ResumableCheckpoint and the atomic writers."""

from __future__ import annotations

import time
from pathlib import Path

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
    published = torch.load(tmp_path / "model.pt", weights_only=True)  # a plain state dict, as the zoo exports it
    assert published.keys() == net2.state_dict().keys()
    net2.load_state_dict(published)


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


def test_checkpoint_of_another_network_is_named(tmp_path):
    net = torch.nn.Linear(3, 1)
    e = make_engine(net, torch.optim.SGD(net.parameters(), lr=0.1))
    ResumableCheckpoint(tmp_path, {"model": net}).attach(e)
    e.run([torch.randn(2, 3)], max_epochs=1)
    wider = torch.nn.Linear(3, 2)  # e.g. num_classes changed since the checkpoint was written
    e2 = make_engine(wider, torch.optim.SGD(wider.parameters(), lr=0.1))
    ResumableCheckpoint(tmp_path, {"model": wider}).attach(e2)
    with pytest.raises(RuntimeError, match=r"checkpoint.pt: entry 'model' does not fit") as err:
        e2.run([torch.randn(2, 3)], max_epochs=2)
    assert "size mismatch" in str(err.value)


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


def test_atomic_output_dir_keep_others(tmp_path):
    """``keep_others`` carries entries the new folder lacks across the swap; those it rewrites are replaced, and a
    failed run keeps everything as it was."""
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "data.txt").write_text("old")
    (out / "mine").mkdir()
    (out / "mine" / "x.txt").write_text("x")
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(out, keep_others=True) as tmp:
            (tmp / "data.txt").write_text("half")
            1 / 0
    assert (out / "data.txt").read_text() == "old" and (out / "mine" / "x.txt").read_text() == "x"
    inodes = (out.stat().st_ino, (out / "mine").stat().st_ino)
    with atomic_output_dir(out, keep_others=True) as tmp:
        (tmp / "data.txt").write_text("new")
    assert (out.stat().st_ino, (out / "mine").stat().st_ino) == inodes  # the user's folder never moved
    assert sorted(p.name for p in out.iterdir()) == ["data.txt", "mine"]
    assert (out / "data.txt").read_text() == "new" and (out / "mine" / "x.txt").read_text() == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_output_dir_recovers_a_killed_swap(tmp_path):
    """A kill between the two renames of a swap leaves the old folder (or entry) only in a hidden sibling; the next
    run puts it back before anything else, so even a run that then fails loses nothing."""
    import os
    import tempfile

    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "data").mkdir()
        (tmp / "data" / "a.txt").write_text("old")
        (tmp / "index.json").write_text("{}")
    # killed inside a whole-folder swap, after moving ``out`` aside
    old = Path(tempfile.mkdtemp(prefix=".out.ssmis-", suffix=".old", dir=tmp_path))
    os.rmdir(old)
    os.replace(out, old)
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(out) as tmp:
            1 / 0
    assert (out / "data" / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    # killed inside a keep_others swap, after setting ``data/`` aside
    aside = Path(tempfile.mkdtemp(prefix=".out.ssmis-", suffix=".aside", dir=tmp_path))
    os.replace(out / "data", aside / "data")
    with pytest.raises(ZeroDivisionError):
        with atomic_output_dir(out, keep_others=True) as tmp:
            1 / 0
    assert (out / "data" / "a.txt").read_text() == "old" and (out / "index.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_temporaries_are_removed(tmp_path):
    """Hidden temporaries of a killed write go once they are stale; fresh ones (maybe a running write) stay, and
    unrelated hidden files are never touched."""
    import os
    import time

    from ssmis.utils import atomic

    stale = time.time() - 2 * atomic.STALE_AFTER_S
    partial = tmp_path / ".out.ssmis-abcd1234.partial"
    (partial / "sub").mkdir(parents=True)
    (partial / "sub" / "x").write_text("x")
    tmp_file = tmp_path / ".seg.nii.gz.ssmis-k_9z0q1w.tmp.nii.gz"
    tmp_file.write_text("half")
    for entry in (partial / "sub" / "x", partial / "sub", partial, tmp_file):
        os.utime(entry, (stale, stale))
    fresh = tmp_path / ".seg.nii.gz.ssmis-fresh123.tmp.nii.gz"
    fresh.write_text("in progress")
    # an old folder in which a file is still being written is in use
    busy = tmp_path / ".out.ssmis-busy1234.partial"
    (busy / "sub").mkdir(parents=True)
    (busy / "sub" / "written-now").write_text("x")
    for entry in (busy / "sub", busy):  # the folders look stale, the file inside does not
        os.utime(entry, (stale, stale))
    # the user's own hidden entries, even stale ones shaped like ours but without the marker, are never touched
    mine = [tmp_path / ".out.notes.partial", tmp_path / ".out.abcd1234.partial", tmp_path / ".out.20240101.old"]
    for entry in mine:
        entry.mkdir()
        os.utime(entry, (stale, stale))
    with atomic_output_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("1")
    atomic.atomic_replace(lambda t: Path(t).write_text("seg"), tmp_path / "seg.nii.gz", keep_extension=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [fresh.name, busy.name, *(m.name for m in mine), "out", "seg.nii.gz"])


def test_recovery_waits_for_a_swap_in_progress(tmp_path):
    """While another writer holds the folder's lock (mid-swap, ``out`` moved aside), recovery waits instead of
    putting the old folder back under it; once the lock is free it recovers what a killed swap left."""
    import os
    import tempfile
    import threading

    from ssmis.utils import atomic

    if atomic.fcntl is None:
        pytest.skip("no fcntl on this platform")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.txt").write_text("old")
    old = Path(tempfile.mkdtemp(prefix=".out.ssmis-", suffix=".old", dir=tmp_path))
    os.rmdir(old)
    with atomic._dir_lock(tmp_path):
        os.replace(out, old)  # the other writer is between its two renames
        worker = threading.Thread(target=atomic.recover_interrupted, args=(out,), daemon=True)
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not out.exists() and old.is_dir()  # waiting, nothing moved
    # the holder "died" before its second rename: the waiting recovery now puts the folder back
    worker.join(timeout=10)
    assert not worker.is_alive()
    assert (out / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_swap_waits_for_the_folder_lock_and_a_slow_write_is_never_stale(tmp_path):
    """The swap at the end of a write takes the parent folder's lock (it waits while another process holds it), and
    a write that has touched nothing for longer than ``STALE_AFTER_S`` is still in use, so recovery leaves it."""
    import os
    import threading
    import time

    from ssmis.utils import atomic

    if atomic.fcntl is None:
        pytest.skip("no fcntl on this platform")
    out = tmp_path / "out"
    with atomic_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    written, proceed = threading.Event(), threading.Event()

    def write():
        with atomic_output_dir(out) as tmp:
            (tmp / "a.txt").write_text("new")
            stale = time.time() - 2 * atomic.STALE_AFTER_S
            os.utime(tmp / "a.txt", (stale, stale))
            os.utime(tmp, (stale, stale))
            written.set()
            proceed.wait(10)

    worker = threading.Thread(target=write, daemon=True)
    worker.start()
    assert written.wait(10)
    atomic.recover_interrupted(out)  # a recovery meanwhile: the partial folder looks stale but is held
    partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]
    assert len(partial) == 1 and (partial[0] / "a.txt").read_text() == "new"
    with atomic._dir_lock(tmp_path):
        proceed.set()
        worker.join(timeout=0.5)
        assert worker.is_alive() and (out / "a.txt").read_text() == "old"  # the swap waits for the lock
    worker.join(timeout=10)
    assert not worker.is_alive() and (out / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    """mkstemp/mkdtemp make owner-only entries; the published file and folder get what open/mkdir would give."""
    import os

    mask = os.umask(0o022)
    try:
        atomic_torch_save({"a": 1}, tmp_path / "model.pt")
        assert (tmp_path / "model.pt").stat().st_mode & 0o777 == 0o644
        (tmp_path / "model.pt").chmod(0o640)  # an existing file keeps the mode it was given
        atomic_torch_save({"a": 2}, tmp_path / "model.pt")
        assert (tmp_path / "model.pt").stat().st_mode & 0o777 == 0o640
        with atomic_output_dir(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("1")
        assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(mask)


def _evaluator(scores):
    """An engine whose key metric at epoch k is ``scores[k-1]`` (one iteration per epoch)."""
    e = Engine(lambda engine, batch: None)
    e.state.key_metric_name = "dice"

    @e.on(Events.EPOCH_COMPLETED)
    def _metric(engine):
        engine.state.metrics["dice"] = scores[engine.state.epoch - 1]

    return e


def test_best_model_saver_keeps_the_best_across_a_resume(tmp_path):
    from ssmis.handlers import BestModelSaver

    net = torch.nn.Linear(2, 1)
    saver = BestModelSaver(tmp_path, {"model": net})
    ev = _evaluator([0.5, 0.8, 0.7, float("nan")])
    saver.attach(ev)
    weights_at = {}

    @ev.on(Events.EPOCH_COMPLETED)
    def _change_weights(engine):  # after the saver: the saved weights are those validated
        weights_at[engine.state.epoch] = net.weight.detach().clone()
        with torch.no_grad():
            net.weight.add_(1.0)

    ev.run([0], max_epochs=4)
    best = torch.load(tmp_path / "model_best.pt", weights_only=True)
    assert (best["best_metric"], best["best_epoch"]) == (0.8, 2)  # 0.7 and NaN do not replace it
    torch.testing.assert_close(best["model"]["weight"], weights_at[2])

    # a resumed run restores the best score: a worse first validation leaves the file alone
    state = saver.state_dict()
    resumed = BestModelSaver(tmp_path, {"model": torch.nn.Linear(2, 1)})
    resumed.load_state_dict(state)
    ev2 = _evaluator([0.6, 0.9])
    resumed.attach(ev2)
    ev2.run([0], max_epochs=1)
    assert torch.load(tmp_path / "model_best.pt", weights_only=True)["best_metric"] == 0.8
    ev2.run([0], max_epochs=2)
    assert torch.load(tmp_path / "model_best.pt", weights_only=True)["best_metric"] == 0.9

    # the file can be newer than the checkpoint (validated after the last save): its score is adopted
    lagging = BestModelSaver(tmp_path, {"model": torch.nn.Linear(2, 1)})
    lagging.load_state_dict({"best_metric": 0.5, "best_epoch": 1})
    ev3 = _evaluator([None, None, 0.85])
    lagging.attach(ev3)
    ev3.state.epoch, ev3.state.max_epochs, ev3.state.iteration = 2, 2, 2  # resumed after epoch 2
    ev3.run([0], max_epochs=3)
    assert torch.load(tmp_path / "model_best.pt", weights_only=True)["best_metric"] == 0.9
    assert lagging.best_metric == 0.9 and lagging.best_epoch == 2


def test_checkpoint_without_an_optional_entry_still_resumes(tmp_path):
    from ssmis.handlers import BestModelSaver

    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    e = make_engine(net, opt)
    ResumableCheckpoint(tmp_path, {"model": net}, save_interval=2).attach(e)
    e.run([torch.randn(4, 3)] * 2, max_epochs=1)
    e2 = make_engine(net, opt)
    saver = BestModelSaver(tmp_path, {"model": net})
    ResumableCheckpoint(tmp_path, {"model": net, "best_model": saver}, save_interval=2).attach(e2)
    steps = []
    e2.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: steps.append(engine.state.iteration))
    e2.run([torch.randn(4, 3)] * 2, max_epochs=2)
    assert steps == [3, 4] and saver.best_metric == float("-inf")  # resumed after iteration 2, not restarted
    with pytest.raises(KeyError, match="no entry 'optimizer'"):
        e3 = make_engine(net, opt)
        ResumableCheckpoint(tmp_path / "x", {"model": net}, save_interval=2).attach(e3)
        e3.run([torch.randn(4, 3)] * 2, max_epochs=1)
        ResumableCheckpoint(tmp_path / "x", {"model": net, "optimizer": opt}, save_interval=2).attach(
            e4 := make_engine(net, opt))
        e4.run([torch.randn(4, 3)] * 2, max_epochs=2)
