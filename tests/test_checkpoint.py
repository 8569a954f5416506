"""ResumableCheckpoint, BestModelSaver, AtomicDiskSaver, the atomic file writes and the preparation output folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from ignite.engine import Engine, Events

from ssmis.handlers import ResumableCheckpoint
from ssmis.data.output import replace_output_dir
from ssmis.utils import atomic_torch_save


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


def test_max_wall_s_stops_and_saves(tmp_path, monkeypatch):
    """The clock (patched: one second per reading) starts when the run starts; the first iteration that ends more
    than ``max_wall_s`` after it stops the run, which saves that iteration."""
    from types import SimpleNamespace

    from ssmis.handlers import checkpoint

    clock = iter(range(1000))
    monkeypatch.setattr(checkpoint, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    e = make_engine(net, opt)
    ResumableCheckpoint(tmp_path, {"model": net}, save_interval=0, max_wall_s=3).attach(e)
    e.run([torch.randn(2, 3)] * 100, max_epochs=1)  # started at 1; iterations end at 2, 3, 4, 5 (> 1 + 3)
    assert e.state.iteration == 4
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["trainer"]["iteration"] == 4


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


def test_output_dir_is_replaced_in_one_step(tmp_path):
    """The new folder is written as ``<out>.partial`` and exchanged with ``out``: a failed run leaves ``out`` as it
    was, a successful one puts a new folder in its place, and nothing is left beside it."""
    out = tmp_path / "out"
    with replace_output_dir(out) as tmp:
        assert tmp == tmp_path / "out.partial"
        (tmp / "a.txt").write_text("1")
    with pytest.raises(ZeroDivisionError):
        with replace_output_dir(out) as tmp:
            (tmp / "a.txt").write_text("half")
            (tmp / "b.txt").write_text("2")
            1 / 0
    assert sorted(p.name for p in out.iterdir()) == ["a.txt"] and (out / "a.txt").read_text() == "1"
    inode = out.stat().st_ino
    with replace_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("3")
        assert (out / "a.txt").read_text() == "1"  # a reader sees the old folder until the exchange
    assert [p.name for p in out.iterdir()] == ["a.txt"] and (out / "a.txt").read_text() == "3"
    assert out.stat().st_ino != inode  # a new folder, not the old one edited
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_entries_the_preparation_does_not_write_are_carried_over(tmp_path):
    """A user's ``imagesTs/`` in a prepared folder survives a re-preparation (hard links, no copy of the data), and a
    failed one keeps everything as it was."""
    out = tmp_path / "out"
    with replace_output_dir(out) as tmp:
        (tmp / "data.txt").write_text("old")
    (out / "imagesTs").mkdir()
    (out / "imagesTs" / "x.nii.gz").write_text("x")
    (out / "notes.md").write_text("mine")
    with pytest.raises(ZeroDivisionError):
        with replace_output_dir(out) as tmp:
            (tmp / "data.txt").write_text("half")
            1 / 0
    assert (out / "data.txt").read_text() == "old" and (out / "imagesTs" / "x.nii.gz").read_text() == "x"
    inode = (out / "imagesTs" / "x.nii.gz").stat().st_ino
    with replace_output_dir(out) as tmp:
        (tmp / "data.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["data.txt", "imagesTs", "notes.md"]
    assert (out / "data.txt").read_text() == "new" and (out / "notes.md").read_text() == "mine"
    assert (out / "imagesTs" / "x.nii.gz").stat().st_ino == inode  # the same file, linked
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_partial_folder_in_use_is_refused_a_stale_one_removed_and_a_cut_swap_restored(tmp_path):
    """A ``<out>.partial`` that a live run holds is named and left alone; one a killed run left (nobody holds its
    lock) is deleted and the preparation goes on; a file of that name is refused; a two-rename swap cut short
    (``out`` only as ``<out>.old``) is put back before anything else, so a run that then fails loses nothing."""
    import fcntl
    import os

    from ssmis.utils.errors import DataError

    out = tmp_path / "out"
    with replace_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "running.txt").write_text("x")
    fd = os.open(tmp_path / "out.partial", os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as a running preparation holds it
    try:
        with pytest.raises(DataError, match="out.partial exists and another preparation is writing it"):
            with replace_output_dir(out):
                pass
        assert (tmp_path / "out.partial" / "running.txt").exists() and (out / "a.txt").read_text() == "old"
    finally:
        os.close(fd)  # the running one dies: its lock goes with it
    with replace_output_dir(out) as tmp:
        assert not (tmp / "running.txt").exists()
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    (tmp_path / "out.partial").write_text("someone's file")
    with pytest.raises(DataError, match="not a folder this project writes"):
        with replace_output_dir(out):
            pass
    assert (tmp_path / "out.partial").read_text() == "someone's file"
    (tmp_path / "out.partial").unlink()
    out.rename(tmp_path / "out.old")  # killed between the two renames of the fallback swap
    with pytest.raises(ZeroDivisionError):
        with replace_output_dir(out):
            1 / 0
    assert (out / "a.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_killed_preparation_leaves_a_partial_folder_the_next_run_removes(tmp_path):
    """A preparation killed mid-write (SIGKILL: no clean-up runs) leaves ``<out>.partial``; the next run deletes it
    and completes, and the earlier ``out`` was never touched."""
    import signal
    import subprocess
    import sys
    import textwrap

    out = tmp_path / "out"
    with replace_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    script = textwrap.dedent(f"""
        import os, signal
        from ssmis.data.output import replace_output_dir
        with replace_output_dir({str(out)!r}) as tmp:
            (tmp / "half.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "out.partial" / "half.txt").exists() and (out / "a.txt").read_text() == "old"
    with replace_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("new")
    assert (out / "a.txt").read_text() == "new" and not (out / "half.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_the_fallback_swap_replaces_the_folder(tmp_path, monkeypatch):
    """Where the one-step exchange is not available, two renames do the swap, and nothing is left beside ``out``."""
    from ssmis.data import output

    monkeypatch.setattr(output, "_exchange", lambda a, b: False)
    out = tmp_path / "out"
    for text in ("old", "new"):
        with replace_output_dir(out) as tmp:
            (tmp / "a.txt").write_text(text)
    assert (out / "a.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_stale_temporaries_are_removed(tmp_path):
    """Hidden temporary files of a killed write go once they are stale; fresh ones (maybe a running write) stay,
    and unrelated hidden files are never touched."""
    import os
    import time

    from ssmis.utils import atomic

    stale = time.time() - 2 * atomic.STALE_AFTER_S
    tmp_file = tmp_path / ".seg.nii.gz.ssmis-k_9z0q1w.tmp.nii.gz"
    fresh = tmp_path / ".seg.nii.gz.ssmis-fresh123.tmp.nii.gz"
    mine = [tmp_path / ".seg.nii.gz.notes.tmp.nii.gz", tmp_path / ".seg.nii.gz.abcd1234.tmp.nii.gz"]
    for entry in (tmp_file, fresh, *mine):
        entry.write_text("x")
    for entry in (tmp_file, *mine):
        os.utime(entry, (stale, stale))
    atomic.atomic_replace(lambda t: Path(t).write_text("seg"), tmp_path / "seg.nii.gz", keep_extension=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, *(m.name for m in mine), "seg.nii.gz"])


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
        with replace_output_dir(tmp_path / "out") as tmp:
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


def test_atomic_disk_saver_never_deletes_before_the_next_file_is_written(tmp_path):
    """ignite's Checkpoint removes the file it supersedes before writing the next: with a fixed name, a failed (or
    killed) write would leave none. Through AtomicDiskSaver the previous file survives a failed write, a superseded
    file of another name goes only once its successor exists, and files get ordinary permissions."""
    import os

    from ignite.handlers import Checkpoint

    from ssmis.handlers import AtomicDiskSaver

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")  # fails inside torch.save, after Checkpoint removed what it supersedes

    class Flaky:
        fail = False

        def state_dict(self):
            return {"x": Unpicklable() if self.fail else 1}

    obj, engine = Flaky(), Engine(lambda e, b: None)
    fixed = Checkpoint({"a": obj, "b": obj}, AtomicDiskSaver(tmp_path), filename_pattern="state.pt", n_saved=1)
    engine.state.iteration = 1
    mask = os.umask(0o022)
    try:
        fixed(engine)
    finally:
        os.umask(mask)
    assert (tmp_path / "state.pt").stat().st_mode & 0o777 == 0o644
    obj.fail, engine.state.iteration = True, 2
    with pytest.raises(RuntimeError, match="disk full"):
        fixed(engine)
    assert torch.load(tmp_path / "state.pt") == {"a": {"x": 1}, "b": {"x": 1}}

    obj.fail = False
    named = Checkpoint({"a": obj}, AtomicDiskSaver(tmp_path / "named"), n_saved=1)  # a_<iteration>.pt
    for it in (3, 4):
        engine.state.iteration = it
        named(engine)
    assert sorted(p.name for p in (tmp_path / "named").iterdir()) == ["a_4.pt"]


def test_where_folders_cannot_be_locked_an_existing_partial_is_refused(tmp_path, monkeypatch):
    """Without flock (NFS's emulation needs a file open for writing; other platforms have none), nobody can tell a
    live run's ``.partial`` from a dead one's: it is refused by name, never deleted, and the preparation fails
    before writing anything."""
    import errno

    from ssmis.data import output
    from ssmis.utils.errors import DataError

    out = tmp_path / "out"
    with replace_output_dir(out) as tmp:
        (tmp / "a.txt").write_text("old")
    (tmp_path / "out.partial").mkdir()
    (tmp_path / "out.partial" / "running.txt").write_text("x")

    class NoFolderLocks:
        LOCK_EX, LOCK_NB = 2, 4

        @staticmethod
        def flock(fd, op):
            raise OSError(errno.EBADF, "Bad file descriptor")

    for fcntl in (NoFolderLocks, None):
        monkeypatch.setattr(output, "fcntl", fcntl)
        with pytest.raises(DataError, match="out.partial exists.*cannot tell which"):
            with replace_output_dir(out):
                pass
        assert (tmp_path / "out.partial" / "running.txt").exists() and (out / "a.txt").read_text() == "old"
