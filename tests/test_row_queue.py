"""benchmarks/row_queue.py: rows named as the results page names them, done rows skipped, locks shared."""

import datetime
import json
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.headline import methods  # noqa: E402
from benchmarks.row_queue import (  # noqa: E402
    EVAL_MARGIN_S, HEADLINE, MIN_PIECE_S, Row, grid, parse_stop_at, run_queue)


@pytest.mark.parametrize("text, name", [
    ("la:bcp_only:16:3", "transmedseg_la+ablation_bcp_only@seed3"),  # the diagnostic does not name the row
    ("la:supervised:8:1337", "supervised_la"),
    ("acdc:transmedseg:7:2", "transmedseg_acdc+self_training_schedule@seed2"),
    ("acdc:bcp_only:3:1337", "transmedseg_acdc+ablation_bcp_only+self_training_schedule"),
])
def test_rows_are_named_as_their_other_seeds(text, name):
    row = Row.parse(text)
    assert str(row) == text and row.name == name


@pytest.mark.parametrize("dataset", sorted(HEADLINE))
def test_every_queued_method_is_a_line_of_the_headline(dataset):
    """The queue's bundles and configs (``HEADLINE``) and the headline's lines (``headline.DATASETS``) are written
    apart: each queued method must name a headline line, or its rows would land where no table reads them."""
    lines = {name for name, _ in methods(dataset)}
    for method in HEADLINE[dataset]["methods"]:
        assert Row(dataset, method, 3, 1337).name in lines, (dataset, method)


@pytest.mark.parametrize("text, part", [("la:bcp_only:16", "DATASET:METHOD:LABELLED:SEED"),
                                        ("lung:supervised:8:1", "dataset 'lung'"),
                                        ("la:bcp:8:1", "method 'bcp'"), ("la:supervised:0:1", "labelled count '0'"),
                                        ("la:supervised:8:x", "seed 'x'")])
def test_a_bad_row_names_its_bad_part(text, part):
    with pytest.raises(ValueError, match=part):
        Row.parse(text)


def test_the_command_carries_the_protocol_configs_and_the_root(tmp_path):
    cmd = Row.parse("acdc:bcp_only:7:2").command(tmp_path)
    joined = " ".join(cmd)
    assert "--dataset acdc --protocol cpu --bundles transmedseg_acdc" in joined
    assert ("--config transmedseg_acdc=ablation_bcp_only.yaml --config transmedseg_acdc=self_training_schedule.yaml"
            in joined)
    assert cmd[cmd.index("--results") + 1] == str(tmp_path / "docs" / "results" / "acdc_dev.json")
    assert cmd[cmd.index("--runs-root") + 1] == str(tmp_path / "runs" / "acdc_dev")
    assert "--protocol cpu-v2" in " ".join(Row.parse("la:transmedseg:8:2").command(tmp_path))


def test_the_queue_skips_done_and_locked_rows_and_goes_on_after_a_failure(tmp_path, capsys):
    results = tmp_path / "docs" / "results" / "la_1.25mm_v2.json"
    results.parent.mkdir(parents=True)
    results.write_text(json.dumps([{"bundle": "supervised_la", "method": "supervised_la@seed2", "labeled": 8,
                                    "seed": 2, "metrics": {"dice": 0.8}, "train_cpu_s": 600}]))
    locks = tmp_path / "locks"
    (locks / "la_mean_teacher_8_2").mkdir(parents=True)  # another queue's
    ran = []

    def runner(cmd, cwd):
        ran.append(cmd[cmd.index("--bundles") + 1])
        return subprocess.CompletedProcess(cmd, 1 if len(ran) == 1 else 0)

    rows = [Row.parse(t) for t in ("la:supervised:8:2", "la:mean_teacher:8:2", "la:transmedseg:8:2",
                                   "la:fixed_dynamic_pl:8:2")]
    assert run_queue(rows, tmp_path, locks, runner) == 1  # the first row run failed, the next still ran
    assert ran == ["transmedseg_la", "fixed_dynamic_pl_la"]
    out = capsys.readouterr().out
    assert "la:supervised:8:2: done" in out and "la:mean_teacher:8:2: taken by another queue" in out
    assert (locks / "la_transmedseg_8_2").is_dir()  # taken, and kept: a killed queue's row stays taken
    table = grid(tmp_path)
    assert "| la:supervised:8:2 | 80.00 | 10 | not recorded |" in table
    assert "| la:supervised:8:3 | missing | up to 10 (other seeds) | |" in table
    assert "| acdc:supervised:3:2 | missing | – | |" in table  # no ACDC results file yet
    import torch
    piece = Row.parse("la:supervised:8:3").run_folder(tmp_path) / "models"
    piece.mkdir(parents=True)
    torch.save({"trainer": {"iteration": 300}}, piece / "checkpoint.pt")  # a row trained in pieces so far
    assert "| la:supervised:8:3 | missing; checkpoint at 300 iterations | up to 10 (other seeds) | |" in grid(tmp_path)
    (piece / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert "| la:supervised:8:3 | missing; checkpoint unreadable |" in grid(tmp_path)


def test_the_command_line_names_a_bad_row():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "row_queue.py"), "la:bcp:8:1"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "method 'bcp'" in done.stderr


def test_stop_at_trains_pieces_releases_their_locks_and_starts_nothing_too_short(tmp_path, capsys):
    locks, now = tmp_path / "locks", 1_000_000.0
    ran = []

    def runner(cmd, cwd):  # trains, but never finishes: no row reaches the results file
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    rows = [Row.parse(t) for t in ("acdc:mean_teacher:3:2", "acdc:mean_teacher:3:3")]
    stop_at = now + EVAL_MARGIN_S + MIN_PIECE_S + 600
    assert run_queue(rows, tmp_path, locks, runner, stop_at=stop_at, clock=lambda: now) == 0
    assert len(ran) == 2 and ran[0][ran[0].index("--max-wall-s") + 1] == f"{MIN_PIECE_S + 600}"
    walls = [float(cmd[cmd.index("--max-wall-s") + 1]) for cmd in ran]
    assert walls == [MIN_PIECE_S + 600] * 2  # the clock stood still: each row got the time left
    assert not any(locks.iterdir())  # each piece's lock released: a later queue continues the row
    assert "acdc:mean_teacher:3:2: stopped at its checkpoint before --stop-at" in capsys.readouterr().out

    ran.clear()
    times = iter([now, now + 601])  # the first piece takes 601 s: under MIN_PIECE_S is left for the second row
    assert run_queue(rows, tmp_path, locks, runner, stop_at=stop_at, clock=lambda: next(times)) == 0
    assert len(ran) == 1 and "acdc:mean_teacher:3:3: under 15 min left" in capsys.readouterr().out

    ran.clear()
    late = stop_at - EVAL_MARGIN_S - MIN_PIECE_S + 1  # under MIN_PIECE_S left: nothing starts
    assert run_queue(rows, tmp_path, locks, runner, stop_at=stop_at, clock=lambda: late) == 0
    assert ran == []
    out = capsys.readouterr().out
    assert "not started (acdc:mean_teacher:3:2, acdc:mean_teacher:3:3: queue again later)" in out
    assert "--max-wall-s" not in " ".join(Row.parse("la:supervised:8:2").command(tmp_path))


def test_stop_at_is_the_next_such_clock_time():
    now = datetime.datetime(2026, 12, 2, 14, 30)
    assert parse_stop_at("16:05", now) == datetime.datetime(2026, 12, 2, 16, 5)
    assert parse_stop_at("14:00", now) == datetime.datetime(2026, 12, 3, 14, 0)  # passed today: tomorrow's
    assert parse_stop_at("00:50", datetime.datetime(2026, 12, 31, 22, 3)) == datetime.datetime(2027, 1, 1, 0, 50)
    assert parse_stop_at("14:30", now) == datetime.datetime(2026, 12, 3, 14, 30)  # now itself is not later
    with pytest.raises(ValueError, match="expected HH:MM"):
        parse_stop_at("4pm", now)
    with pytest.raises(ValueError, match="expected HH:MM"):
        parse_stop_at("25:00", now)


def test_the_run_folder_is_the_one_la_protocol_trains_in(tmp_path):
    import argparse

    from benchmarks.la_protocol import run_dir

    for text in ("acdc:bcp_only:7:2", "la:mean_teacher:8:1337"):
        row = Row.parse(text)
        args = argparse.Namespace(runs_root=row.run_folder(tmp_path).parent, seed=row.seed,
                                  extra_configs={row.bundle: list(row.configs)})
        assert run_dir(row.bundle, row.labeled, args) == row.run_folder(tmp_path)


def test_the_command_line_passes_stop_at_and_names_a_bad_one(monkeypatch):
    import benchmarks.row_queue as row_queue

    seen = {}
    monkeypatch.setattr(row_queue, "run_queue", lambda rows, root, locks, stop_at=None: seen.update(stop_at=stop_at))
    later = datetime.datetime.now().replace(hour=23, minute=59, second=0, microsecond=0)
    if datetime.datetime.now() < later:  # no later time today in the last minute of a day
        assert row_queue.main(["--stop-at", "23:59", "acdc:supervised:7:3"]) == 0
        assert seen["stop_at"] == later.timestamp()
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "row_queue.py"), "--stop-at", "4pm",
                           "la:supervised:8:2"], capture_output=True, text=True)
    assert done.returncode == 2 and "--stop-at '4pm': expected HH:MM" in done.stderr
