"""Helpers of the benchmark scripts: the results table kept in docs/benchmarks.md, the host-steal meter and the
MONAI Label server command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.cpu_steal import StealMeter, _cpu_jiffies, format_steal  # noqa: E402
from benchmarks.la_protocol import (  # noqa: E402
    _version_cell, _wall_cell, merge_result, start_piece, method_name, paired, update_doc_table, version_label)
sys.path.insert(0, str(ROOT / "monailabel_app"))  # the app's lib/
from lib.server_process import server_command  # noqa: E402
from benchmarks.paused_time import PausedMeter, process_state  # noqa: E402


def test_doc_table_replaced_between_markers_only(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("intro\n<!-- begin la_x table -->\nold | row\n<!-- end la_x table -->\nafter\n")
    assert update_doc_table(doc, "la_x", "| new |\n")
    assert doc.read_text() == "intro\n<!-- begin la_x table -->\n| new |\n<!-- end la_x table -->\nafter\n"
    assert update_doc_table(doc, "la_x", "| newer |\n")  # idempotent markers: a second update works too
    assert "| newer |" in doc.read_text() and "| new |\n" not in doc.read_text()


def test_doc_without_markers_is_left_alone(tmp_path):
    doc = tmp_path / "benchmarks.md"
    doc.write_text("no markers here\n")
    assert not update_doc_table(doc, "la_x", "| new |\n")
    assert doc.read_text() == "no markers here\n"


def test_steal_jiffies_parsed_from_proc_stat_line(tmp_path):
    stat = tmp_path / "stat"
    stat.write_text("cpu  100 5 20 800 10 1 2 62 0 0\ncpu0 50 2 10 400 5 0 1 31 0 0\n")
    assert _cpu_jiffies(stat) == (100 + 5 + 20 + 800 + 10 + 1 + 2 + 62, 62)
    assert _cpu_jiffies(tmp_path / "missing") is None


def test_steal_meter_gives_a_fraction_or_none(tmp_path, monkeypatch):
    with StealMeter() as m:
        time.sleep(0.1)  # several jiffies
    if Path("/proc/stat").is_file():
        assert m.fraction is not None and 0.0 <= m.fraction <= 1.0
    else:
        assert m.fraction is None
    from benchmarks import cpu_steal

    monkeypatch.setattr(cpu_steal, "_cpu_jiffies", lambda: None)  # unreadable: None
    with StealMeter() as m:
        pass
    assert m.fraction is None


def test_steal_cell_rounds_to_percent_or_dash():
    assert format_steal(0.334) == "33 %"
    assert format_steal(0.0) == "0 %"
    assert format_steal(None) == "–"


def test_server_command_uses_this_interpreter_and_passes_each_conf(tmp_path):
    cmd = server_command(tmp_path, 8123, {"models": "a,b", "device": "cpu"})
    assert cmd[:3] == [sys.executable, "-m", "monailabel.main"]  # not the PATH-dependent `monailabel` script
    assert cmd[cmd.index("--app") + 1] == str(ROOT / "monailabel_app")
    assert cmd[cmd.index("--studies") + 1] == str(tmp_path)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "8123"
    confs = [tuple(cmd[i + 1:i + 3]) for i, a in enumerate(cmd) if a == "--conf"]
    assert confs == [("models", "a,b"), ("device", "cpu")]


def test_results_merge_rereads_the_file_and_replaces_one_row(tmp_path):
    path = tmp_path / "la.json"
    merge_result(path, {"bundle": "a", "method": "a", "labeled": 8, "dice": 1})
    path.write_text(json.dumps(json.loads(path.read_text()) + [{"bundle": "b", "method": "b", "labeled": 8}]))
    rows = merge_result(path, {"bundle": "a", "method": "a", "labeled": 8, "dice": 2})  # written meanwhile: kept
    merge_result(path, {"bundle": "a", "method": "a", "labeled": 16, "dice": 3})
    saved = json.loads(path.read_text())
    assert [(r["method"], r["labeled"]) for r in rows] == [("b", 8), ("a", 8)]
    assert sorted((r["method"], r["labeled"], r.get("dice")) for r in saved) == [("a", 8, 2), ("a", 16, 3),
                                                                                    ("b", 8, None)]


def test_curves_png_is_written_with_the_legend_beside_the_plot(tmp_path):
    from PIL import Image

    from ssmis.visualize import save_curves

    out = save_curves({f"method {i} (8 lab.)": ([200, 400], [0.7, 0.8 + i / 100]) for i in range(9)},
                      tmp_path / "curves.png", title="t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 1.5 * im.height  # the legend sits to the right, not over curves


def test_mean_band_averages_the_seeds_at_the_iterations_they_share():
    from ssmis.visualize import mean_band

    x, mean, low, high = mean_band([([100, 200, 300], [0.5, 0.6, 0.7]), ([100, 200], [0.7, 0.8])])
    assert x.tolist() == [100, 200]  # 300: one seed only
    assert mean.tolist() == pytest.approx([0.6, 0.7]) and low.tolist() == [0.5, 0.6] and high.tolist() == [0.7, 0.8]
    assert [len(v) for v in mean_band([])] == [0, 0, 0, 0]


def test_headline_figures_draw_the_table_methods_per_label_count(tmp_path):
    """One panel per label count, a line per method of the table (controls left out) and the upper bound; the
    pseudo-label figure only from rows that measured it, co-training's two networks' curves averaged."""
    from unittest import mock

    from benchmarks import headline

    def row(method, labeled, seed, dice, quality=None):
        return {"bundle": method.split("+")[0], "method": method if seed == 1337 else f"{method}@seed{seed}",
                "labeled": labeled, "seed": seed, "metrics": {"dice": dice},
                "curve": {"iteration": [100, 200], "val_dice": [dice - 0.1, dice]}, "pseudo_quality": quality}

    def q(*names):
        return {f"{n}/dice": {"iteration": [100, 200], "value": [0.5 + i / 10, 0.6 + i / 10]}
                for i, n in enumerate(names)}

    rows = [row("supervised_la", 8, 1337, 0.8), row("supervised_la", 8, 2, 0.7), row("supervised_la", 72, 1337, 0.9),
            row("supervised_la+batch_4_4", 8, 1337, 0.8), row("mean_teacher_la", 16, 1337, 0.8, q("teacher")),
            row("fixed_dynamic_pl_la", 8, 1337, 0.85, q("fixed_sn1", "fixed_sn2", "dynamic_sn1", "dynamic_sn2"))]
    drawn, options = {}, {}
    with mock.patch("ssmis.visualize.save_curve_panels",
                    side_effect=lambda panels, path, **kw: options.setdefault(path.name, kw)
                    and drawn.setdefault(path.name, panels) and path):
        headline.figures(rows, [8, 16], "la", tmp_path / "headline.md")
    curves, quality = drawn["headline_curves.png"], drawn["headline_pseudo_quality.png"]
    # a method keeps its colour from one figure to the next; co-training's dynamic pseudo-labels are its second line
    colours = options["headline_pseudo_quality.png"]["colours"]
    co = "fixed/dynamic co-training"
    assert colours[f"{co}, fixed"] == colours[f"{co}, dynamic"] == colours[co] != colours["mean teacher, teacher"]
    assert options["headline_pseudo_quality.png"]["dashed"] == [f"{co}, dynamic"]
    assert options["headline_curves.png"]["colours"][co] == colours[co]
    assert list(curves) == ["8 labelled", "16 labelled"]
    assert list(curves["8 labelled"]) == ["supervised", "fixed/dynamic co-training",
                                          "supervised, all labelled (upper bound)"]  # no batch-4 control
    assert len(curves["8 labelled"]["supervised"]) == 2  # both seeds, for the mean and the band
    assert list(curves["16 labelled"]) == ["mean teacher", "supervised, all labelled (upper bound)"]
    fixed = quality["8 labelled"]["fixed/dynamic co-training, fixed"]
    assert fixed == [([100, 200], pytest.approx([0.55, 0.65]))]  # the mean of fixed_sn1's and fixed_sn2's
    assert list(quality["16 labelled"]) == ["mean teacher, teacher"]
    from PIL import Image

    headline.figures(rows, [8, 16], "la", tmp_path / "headline.md")  # drawn for real
    with Image.open(tmp_path / "headline_curves.png") as im:
        assert im.format == "PNG" and im.width > 1.5 * im.height  # two panels side by side


def test_curve_panels_keep_the_colours_given_and_give_the_others_unused_ones(tmp_path):
    from unittest import mock

    import matplotlib.axes
    from matplotlib.colors import to_rgb

    from ssmis.visualize import save_curve_panels

    runs = [([100, 200], [0.5, 0.6])]
    panels = {"8 labelled": {"a": runs, "b": runs}, "16 labelled": {"b": runs, "c": runs}}
    used: list[tuple[str, tuple]] = []
    real = matplotlib.axes.Axes.plot

    def plot(ax, *args, **kw):
        used.append((kw["label"], to_rgb(kw["color"])))
        return real(ax, *args, **kw)

    with mock.patch.object(matplotlib.axes.Axes, "plot", plot):
        save_curve_panels(panels, tmp_path / "p.png", colours={"b": "tab:red"})
    colour = dict(used)
    assert len(used) == 4 and {c for name, c in used if name == "b"} == {to_rgb("tab:red")}  # in both panels
    assert len({colour["a"], colour["b"], colour["c"]}) == 3  # the others never take the given one


def test_version_cell_names_every_version_once():
    assert _version_cell("0.1.1 (trained), 0.1.2 (evaluated)") == "0.1.1/0.1.2"
    assert _version_cell("0.1.x (copy-paste loss averaged over the two mixed images)") == "0.1.x"
    assert _version_cell("0.2.2") == "0.2.2"
    assert _version_cell(None) == "–"


def test_version_label_says_which_versions_trained_and_evaluated():
    assert version_label(["0.2.2"], "0.2.2") == "0.2.2"
    assert version_label(["0.2.0", "0.2.1"], "0.2.2") == "0.2.0, 0.2.1 (trained), 0.2.2 (evaluated)"
    assert _version_cell(version_label(["0.2.0"], "0.2.2")) == "0.2.0/0.2.2"


def test_every_bundle_metadata_names_its_version_first_in_the_changelog():
    """The version a result row records is the newest changelog entry, a semantic version, for every bundle."""
    import re

    for meta_path in sorted((ROOT / "bundles").glob("*/configs/metadata.json")):
        meta = json.loads(meta_path.read_text())
        versions = list(meta["changelog"])
        assert meta["version"] == versions[0], meta_path
        assert all(re.fullmatch(r"\d+\.\d+\.\d+", v) for v in versions), meta_path
        as_tuples = [tuple(map(int, v.split("."))) for v in versions]
        assert as_tuples == sorted(as_tuples, reverse=True) and len(set(as_tuples)) == len(as_tuples), meta_path


def test_protocol_arguments_are_checked_before_any_work(tmp_path, capsys):
    from benchmarks.la_protocol import main

    bad_results = tmp_path / "results.json"
    bad_results.write_text("{not json")
    rows_file = tmp_path / "rows.json"
    rows_file.write_text(json.dumps([{"bundle": "a", "labeled": 8, "metrics": {}}, {"bundle": "b"}]))
    for argv, words in ((["--config", "transmedseg_la"], "expected BUNDLE=FILE"),
                        (["--bundles", "nope"], "unknown bundle 'nope'"),
                        (["--bundles", "transmedseg_la", "--config", "transmedseg_la=nope.yaml"], "does not exist"),
                        (["--bundles", "supervised_la", "--config", "transmedseg_la=ablation_no_tsa.yaml"],
                         "not among --bundles"),
                        (["--results", str(bad_results)], "not valid JSON"),
                        (["--results", str(rows_file)], "row 1 lacks ['labeled', 'metrics']"),
                        (["--results", str(tmp_path)], "not a file"),
                        (["--report-only", "--results", str(tmp_path / "misspelt.json")], "no such file"),
                        (["--labeled", "0"], "0 is not a count"),
                        (["--val", "0"], "0 is not a count"),
                        (["--iterations", "0"], "0 is not a count"),
                        (["--compare", "a", "b", "--metric", "hd95"], "invalid choice: 'hd95'"),
                        (["--dataset", "acdc", "--bundles", "supervised_la"], "not a bundle of --dataset acdc")):
        with pytest.raises(SystemExit) as e:
            main(argv + ["--data-root", str(tmp_path / "no_data"), "--runs-root", str(tmp_path / "runs")])
        assert e.value.code == 2 and words in capsys.readouterr().err, argv
    assert not (tmp_path / "no_data").exists() and not (tmp_path / "runs").exists()


def test_a_results_file_keeps_one_protocol(tmp_path, capsys):
    """v2 is the default protocol now: a v1 command without --protocol cpu must not train a v2 row into the v1 file
    (it would replace the v1 row of the same method); it stops before preparing data or training."""
    from benchmarks.la_protocol import main

    row = json.loads((ROOT / "docs" / "results" / "la_1.25mm_v2.json").read_text())[0]
    results = tmp_path / "mixed.json"  # a name no page has table markers for: the report writes beside it alone
    results.write_text(json.dumps([dict(row, protocol="cpu")]))
    argv = ["--results", str(results), "--data-root", str(tmp_path / "no_data"), "--runs-root", str(tmp_path / "runs")]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "holds rows of --protocol cpu, and this run is --protocol cpu-v2" in (
        capsys.readouterr().err)
    assert not (tmp_path / "no_data").exists() and not (tmp_path / "runs").exists()
    assert main(argv + ["--report-only"]) == 0  # reading it is fine


def test_report_tools_never_write_over_the_tables_from_a_missing_results_file(tmp_path, capsys):
    """A misspelt --results used to print an empty table and write it over the committed ones (exit 0)."""
    from benchmarks.headline import main as headline

    doc = tmp_path / "page.md"
    doc.write_text("<!-- begin headline table -->\nreal rows\n<!-- end headline table -->\n")
    for argv in (["--results", str(tmp_path / "misspelt.json")], ["--results", str(tmp_path)]):
        with pytest.raises(SystemExit) as e:
            headline([*argv, "--output", str(tmp_path / "h.md"), "--doc", str(doc)])
        assert e.value.code == 2 and "--results" in capsys.readouterr().err
    assert "real rows" in doc.read_text() and not (tmp_path / "h.md").exists()
    good = ROOT / "docs" / "results" / "la_1.25mm_v2.json"
    page = ROOT / "docs" / "benchmarks.md"
    if good.is_file():  # the page is touched only when asked for (or every argument is left at its default)
        before = (page.read_bytes(), page.stat().st_mtime_ns)
        headline(["--results", str(good), "--output", str(tmp_path / "h.md")])
        assert (tmp_path / "h.md").is_file() and "| method |" in (tmp_path / "h.md").read_text()
        assert (page.read_bytes(), page.stat().st_mtime_ns) == before


def test_paired_comparison_by_case():
    """Cases pair by name (order and extra cases do not matter); distances count lower as better."""
    def row(method, labeled, cases):
        return {"bundle": method.split("+")[0], "method": method, "labeled": labeled, "cases": cases}

    a = [{"case": "c1", "dice": 0.80, "hd95_mm": 5.0}, {"case": "c2", "dice": 0.70, "hd95_mm": 9.0},
         {"case": "c3", "dice": 0.90, "hd95_mm": 4.0}]
    b = [{"case": "c3", "dice": 0.91, "hd95_mm": 4.5}, {"case": "c1", "dice": 0.75, "hd95_mm": 6.0},
         {"case": "c2", "dice": 0.60, "hd95_mm": 8.0}, {"case": "c4", "dice": 0.5, "hd95_mm": 1.0}]
    results = [row("x+tsa", 8, a), row("x", 8, b), row("x", 16, []), row("x+tsa", 16, a)]
    c = paired(results, "x+tsa", "x", 8)
    assert c["cases"] == 3 and c["a_better"] == 2
    assert c["diffs"] == pytest.approx({"c1": 5.0, "c2": 10.0, "c3": -1.0})
    assert (c["min"], c["median"], c["max"]) == pytest.approx((-1.0, 5.0, 10.0))
    assert c["mean"] == pytest.approx(14.0 / 3)
    d = paired(results, "x+tsa", "x", 8, metric="hd95_mm")
    assert d["a_better"] == 2 and d["diffs"] == pytest.approx({"c1": -1.0, "c2": 1.0, "c3": -0.5})
    with pytest.raises(ValueError, match="'x' at 16 labelled has no per-case scores"):
        paired(results, "x+tsa", "x", 16)
    with pytest.raises(ValueError, match="no result row for 'y' at 8 labelled"):
        paired(results, "y", "x", 8)
    # seeds: each case averaged over the seeds both ran (x's seed 3 has no x+tsa row and is left out)
    seeded = results + [dict(row("x+tsa@seed2", 8, [{"case": "c1", "dice": 0.70}, {"case": "c2", "dice": 0.70},
                                                     {"case": "c3", "dice": 0.70}]), seed=2),
                        dict(row("x@seed2", 8, [{"case": "c1", "dice": 0.75}, {"case": "c2", "dice": 0.60},
                                                {"case": "c3", "dice": 0.91}]), seed=2),
                        dict(row("x@seed3", 8, [{"case": "c1", "dice": 0.0}, {"case": "c2", "dice": 0.0},
                                                {"case": "c3", "dice": 0.0}]), seed=3)]
    e = paired(seeded, "x+tsa", "x", 8)
    assert e["seeds"] == [2, 1337] and e["cases"] == 3
    assert e["diffs"] == pytest.approx({"c1": 0.0, "c2": 10.0, "c3": -11.0})
    with pytest.raises(ValueError, match="share no seed"):
        paired([dict(row("x+tsa@seed2", 8, a), seed=2), row("x", 8, b)], "x+tsa", "x", 8)


def test_seed_repeat_is_its_own_row(tmp_path):
    assert method_name("t", ["ablation_x.yaml"]) == "t+ablation_x"  # the default seed keeps the historical names
    repeat = method_name("t", ["ablation_x.yaml"], seed=2)
    assert repeat == "t+ablation_x@seed2"
    path = tmp_path / "r.json"
    merge_result(path, {"bundle": "t", "method": "t+ablation_x", "labeled": 8, "dice": 1})
    rows = merge_result(path, {"bundle": "t", "method": repeat, "labeled": 8, "dice": 2})
    assert sorted(r["dice"] for r in rows) == [1, 2]  # the repeat does not replace the default-seed row


def test_process_state_reads_the_field_after_the_command_name(tmp_path):
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "stat").write_text("42 (a (weird) name) T 1 42 42 0 -1\n")  # ")" inside the name
    assert process_state(42, proc=tmp_path) == "T"
    assert process_state(43, proc=tmp_path) is None


def test_paused_meter_adds_the_time_between_stopped_polls(monkeypatch):
    """Each poll reads the process state and the clock: the time between two polls that both found it stopped
    (``T`` or ``t``) is counted, so a pause seen by polls at t = 2, 3, 4 counts 2 s; the thread ends when the
    process is gone."""
    from types import SimpleNamespace

    from benchmarks import paused_time

    states = iter(["S", "S", "T", "t", "T", "S", "T", "S", None])  # the first is __enter__'s check
    clock = iter(range(100))
    monkeypatch.setattr(paused_time, "process_state", lambda pid: next(states))
    monkeypatch.setattr(paused_time, "time", SimpleNamespace(monotonic=lambda: float(next(clock))))
    with PausedMeter(1, interval=0.001) as meter:
        meter._thread.join(5)  # polls at t = 1 (S), 2 (T), 3 (t), 4 (T), 5 (S), 6 (T), 7 (S), then gone
    assert meter.seconds == 2.0  # 2 -> 3 -> 4; the lone stopped poll at 6 adds nothing


def test_paused_meter_counts_a_group_stop_that_froze_it_too(monkeypatch):
    """Stopping the whole process group stops the meter's own thread, so no poll sees state ``T``: a gap between
    polls longer than ``interval + late_s`` counts (less one interval) when the process used almost no CPU over
    it, and does not count when the process kept running (only the meter's process was stopped)."""
    from types import SimpleNamespace

    from benchmarks import paused_time

    process_cpu_s = paused_time.process_cpu_s
    assert process_cpu_s(os.getpid()) > 0
    assert process_cpu_s(2 ** 22 + 7) is None  # no such process

    def run(cpu_seconds):
        clock = iter([0.0, 1.0, 101.0, 102.0, 103.0])  # the thread's start, then its polls
        states = iter(["S", "S", "S", "R", "S", None])  # the first is __enter__'s check
        cpu = iter(cpu_seconds)
        monkeypatch.setattr(paused_time, "process_state", lambda pid: next(states))
        monkeypatch.setattr(paused_time, "process_cpu_s", lambda pid: next(cpu))
        monkeypatch.setattr(paused_time, "time", SimpleNamespace(monotonic=lambda: next(clock)))
        with PausedMeter(1, interval=0.001, late_s=5.0) as meter:
            meter._thread.join(5)
        return meter.seconds

    # polls at t = 1, 101 (a 100 s gap), 102, 103, then gone; the CPU read at the start and at each poll
    assert run([10.0, 11.0, 11.5, 12.5, 13.5, 14.0]) == pytest.approx(100.0 - 0.001)  # 0.5 CPU s in 100 s: stopped
    assert run([10.0, 11.0, 90.0, 91.0, 92.0, 93.0]) == 0.0  # 79 CPU s in the gap: it ran; only the meter stopped


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs /proc (Linux)")
def test_paused_meter_sees_a_real_sigstop():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with PausedMeter(child.pid, interval=0.05) as running:
            time.sleep(0.6)
        assert running.seconds == 0.0  # sleeping (S) is not stopped
        with PausedMeter(child.pid, interval=0.05) as paused:
            child.send_signal(signal.SIGSTOP)
            time.sleep(1.5)
            child.send_signal(signal.SIGCONT)
            time.sleep(0.3)
        assert paused.seconds > 0  # how much is the mechanics test's business, not a timing here
    finally:
        child.kill()
        child.wait()
    with PausedMeter(child.pid) as gone:  # a reaped process: nothing to measure
        pass
    assert gone.seconds is None


def test_wall_cell_shows_the_stopped_part():
    assert _wall_cell({"train_wall_s": 600.0}) == "10.0 min"  # rows from before the pause was measured
    assert _wall_cell({"train_wall_s": 600.0, "train_paused_s": 0.0}) == "10.0 min"
    assert _wall_cell({"train_wall_s": 3258.0, "train_paused_s": 1770.0}) == "54.3 min (29.5 stopped)"
    assert (_wall_cell({"train_wall_s": 600.0, "train_paused_s": 0.0, "train_unaccounted_pieces": 1})
            == "10.0 min (1 piece to its last checkpoint)")


def test_a_piece_that_died_is_counted_to_its_last_checkpoint(tmp_path):
    """A training piece killed before it could account for itself leaves ``running_since``; the next piece adds its
    wall time up to its last checkpoint (what the resumed run keeps) and counts it."""
    import os

    progress, ckpt = tmp_path / "progress.json", tmp_path / "models" / "checkpoint.pt"
    total = start_piece(progress, ckpt)  # a fresh run: nothing so far
    assert "wall_s" not in total and json.loads(progress.read_text())["running_since"] == total["running_since"]
    progress.write_text(json.dumps({"wall_s": 100.0, "cpu_s": 190.0, "running_since": time.time() - 900}))
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"x")
    os.utime(ckpt, (time.time() - 300, time.time() - 300))  # its last checkpoint, 600 s after the piece started
    total = start_piece(progress, ckpt)
    assert total["wall_s"] == pytest.approx(700.0, abs=2) and total["cpu_s"] == 190.0
    assert total["unaccounted_pieces"] == 1 and total["running_since"] >= time.time() - 5
    ckpt.unlink()  # a folder trained again from nothing: older totals do not carry over
    assert "wall_s" not in start_piece(progress, ckpt)


def test_graph_loss_scale_on_a_synthetic_dataset(synthetic_3d, tmp_path):
    """The graph-loss scale benchmark runs the bundle's own BCP step on real batches: n is the bottleneck's voxel
    count over both mixed images, the reductions scale by n and n², and the default term is bounded by κ·2/τ."""
    from benchmarks.graph_loss_scale import main as graph_loss_scale

    out = tmp_path / "scale"
    assert graph_loss_scale(["--checkpoint", "none", "--dataset-dir", str(synthetic_3d), "--steps", "2",
                             "--results", str(out)]) == 0
    (r,) = json.loads(out.with_suffix(".json").read_text())
    assert r["n"] == 2 * 3 * 3 * 2  # two mixed 56x56x40 patches, a 3x3x2 bottleneck (BasicUNet's down_4) each
    assert 0 < r["pairs"]["kappa_cc_median"] <= 0.01 * 2 / 2.0
    assert r["nodes"]["kappa_cc_median"] == pytest.approx(r["pairs"]["kappa_cc_median"] * r["n"])
    assert r["sum"]["grad_ratio_median"] == pytest.approx(r["pairs"]["grad_ratio_median"] * r["n"] ** 2)
    assert all(0 < s["grad_ratio_pairs"] < float("inf") for s in r["per_step"])
    assert "| initial weights | 36 |" in out.with_suffix(".md").read_text()
    with pytest.raises(SystemExit):  # a folder without a datalist is named, not a traceback
        graph_loss_scale(["--checkpoint", "none", "--dataset-dir", str(tmp_path), "--results", str(out)])


def test_pseudo_quality_is_averaged_over_each_validation_interval(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from benchmarks.la_protocol import pseudo_quality_curves, val_curve

    w = SummaryWriter(str(tmp_path))
    for i in range(1, 11):
        w.add_scalar("pseudo_quality/teacher/dice", i / 10, i)
        w.add_scalar("loss", 1.0, i)
    w.add_scalar("val_mean_dice", 0.5, 5)
    w.add_scalar("val_mean_dice", 0.6, 10)
    w.close()
    assert val_curve(tmp_path)[0] == [5, 10]
    got = pseudo_quality_curves(tmp_path, 5)
    assert list(got) == ["teacher/dice"] and got["teacher/dice"]["iteration"] == [5, 10]
    assert got["teacher/dice"]["value"] == pytest.approx([0.3, 0.8])
    assert pseudo_quality_curves(tmp_path / "absent", 5) == {}


@pytest.mark.slow
def test_full_protocol_runs_end_to_end_on_the_cpu(tmp_path):
    """What a lent GPU would run (``--protocol full``: 0.625 mm data, resumable pieces, evaluation with the LA stride)
    runs here on the CPU with a tiny network and two iterations, so GPU time goes to training, not to debugging."""
    import json

    from benchmarks.la_protocol import main
    from test_data_prepare import make_la_source

    src = make_la_source(tmp_path / "LA", n=6, shape=(40, 40, 30))
    tiny = [["backbone_def#_target_", "BasicUNet"], ["backbone_def#features", "[4, 4, 8, 8, 16, 4]"],
            ["patch_size", "[32, 32, 24]"], ["batch_size", "2"], ["sw_batch_size", "2"]]
    argv = ["--protocol", "full", "--device", "cpu", "--bundles", "supervised_la", "--labeled", "2", "--val", "2",
            "--iterations", "2", "--val-interval", "2", "--max-wall-s", "600", "--source", str(src),
            "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
            "--results", str(tmp_path / "la_full.json"), *[a for kv in tiny for a in ("--override", *kv)]]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "la_full.json").read_text())
    assert len(rows) == 1 and rows[0]["protocol"] == "full" and rows[0]["iterations"] == 2
    assert 0.0 <= rows[0]["metrics"]["dice"] <= 1.0 and len(rows[0]["cases"]) == 2
    assert (tmp_path / "la_full.md").is_file() and (tmp_path / "la_full_curves.png").is_file()
    # iterations the bundle would round up to whole validation intervals are refused before training
    odd = [a if a != "2" or argv[i - 1] != "--iterations" else "3" for i, a in enumerate(argv)]
    odd[odd.index("--runs-root") + 1] = str(tmp_path / "runs_odd")
    with pytest.raises(SystemExit, match="--iterations 3 is not a multiple"):
        main(odd)
    assert not list((tmp_path / "runs_odd").rglob("checkpoint.pt"))


@pytest.mark.slow
def test_speed_benchmark_counts_flops_against_the_measured_peak(tmp_path):
    """``speed.py`` reports each step's FLOPs, CPU time and efficiency over the matmul peak it measures."""
    import subprocess

    out = tmp_path / "speed.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "speed.py"), "--cases", "peak", "supervised", "bcp",
                    "--patch", "32", "32", "24", "--steps", "2", "--output", str(out)], check=True, cwd=ROOT,
                   capture_output=True, timeout=600)
    cases = json.loads(out.read_text())["cases"]
    peak = cases["peak"]
    assert peak["fp32_gflops"] > 0 and (peak["bf16_gflops"] > 0 if peak["bf16_native"] else "bf16_gflops" not in peak)
    for case in ("supervised", "bcp"):
        assert cases[case]["gflop"] > 0 and cases[case]["cpu_s"] > 0
    assert cases["bcp"]["gflop"] > cases["supervised"]["gflop"]  # the teacher's pass on top of the student's
    assert "| efficiency |" in out.with_suffix(".md").read_text()


def test_headline_table_pools_seeds_and_pairs_cases_with_supervised():
    from benchmarks.headline import table

    def row(method, seed, dices):
        cases = [{"case": f"c{i}", "dice": d} for i, d in enumerate(dices)]
        mean = sum(dices) / len(dices)
        return {"bundle": method.split("+")[0], "method": method if seed == 1337 else f"{method}@seed{seed}",
                "labeled": 8, "seed": seed, "cases": cases,
                "metrics": {"dice": mean, "jaccard": mean - 0.1, "hd95_vox": 5.0, "asd_vox": 1.0}}

    rows = [row("supervised_la", 1337, [0.7, 0.8]), row("supervised_la", 2, [0.8, 0.8]),
            row("transmedseg_la", 1337, [0.9, 0.7]), row("transmedseg_la", 2, [0.9, 0.75]),
            row("transmedseg_la", 3, [0.9, 0.8])]
    text = table(rows, [8])
    sup = next(line for line in text.splitlines() if line.startswith("| supervised | 8"))
    tms = next(line for line in text.splitlines() if line.startswith("| TransMedSeg | 8"))
    assert "| 2 | 77.5 ± 3.5 |" in sup
    # the cell pools its 3 seeds; the pairing takes the 2 seeds both ran: TransMedSeg's case means 0.90, 0.725,
    # supervised's 0.75, 0.80 -> wins 1 of 2, median of +15 and -7.5
    assert "| 3 | 82.5 ± 2.5 |" in tms and tms.endswith("| 1/2, +3.7 |")
    assert "| BCP only | 8 | 0 | not run |" in text
    assert "batch 4" not in text  # a control gets a line only where it has run
    text = table(rows + [row("supervised_la+batch_4_4", 1337, [0.8, 0.9])], [8])
    assert "| supervised, batch 4 | 8 | 1 | 85.0 |" in text and "mean teacher, batch 4" not in text
    # the upper bound (supervised, all 72 labelled) is the table's last line, and the best method's share of it
    from benchmarks.headline import upper_bound_shares

    assert upper_bound_shares(rows, [8]) == "" and "upper bound" not in text
    full = dict(row("supervised_la", 1337, [0.9, 0.9]), labeled=72)
    text = table(rows + [full], [8])
    assert text.splitlines()[-1].startswith("| supervised, all labelled (upper bound) | 72 | 1 | 90.0 |")
    assert "TransMedSeg (82.5, 3 seeds), reaches **91.7 %** of the upper bound (90.0, 1 seed)" in upper_bound_shares(
        rows + [full], [8])


def test_pair_table_compares_two_methods_on_their_common_seeds_only():
    """TransMedSeg against BCP only: per-seed differences on the seeds both ran, cases averaged over those seeds."""
    from benchmarks.headline import pair_table

    def row(method, seed, dices):
        return {"bundle": "transmedseg_la", "method": method if seed == 1337 else f"{method}@seed{seed}",
                "labeled": 8, "seed": seed, "cases": [{"case": f"c{i}", "dice": d} for i, d in enumerate(dices)],
                "metrics": {"dice": sum(dices) / len(dices)}}

    bcp = "transmedseg_la+ablation_bcp_only"
    assert pair_table([row("transmedseg_la", 1337, [0.8, 0.8])], [8]) == ""  # no common seed: no table
    rows = [row("transmedseg_la", 1337, [0.9, 0.7]), row("transmedseg_la", 2, [0.8, 0.8]),
            row("transmedseg_la", 3, [0.1, 0.1]),  # seed 3 has no BCP row: left out
            row(bcp, 1337, [0.8, 0.8]), row(bcp, 2, [0.8, 0.6])]
    line = pair_table(rows, [8, 16]).splitlines()[2]
    # seed differences 0 and +10 points; case means 0.85/0.75 against 0.80/0.70: 2 of 2 better by +5.0
    assert line == "| TransMedSeg − BCP only | 8 | 2 | +5.0 (+0.0, +10.0) | 2/2, +5.0 |"


def test_headline_table_for_acdc_gives_each_structure():
    """``--dataset acdc``: the *_acdc rows, with the Dice of RV, Myo and LV beside the mean; TransMedSeg's rows are
    those of the self-training schedule (the CPU default from 0.2.0), and the step-schedule rows a control line."""
    from benchmarks.headline import table

    metrics = {"dice": 0.8, "dice_class1": 0.7, "dice_class2": 0.8, "dice_class3": 0.9, "jaccard": 0.7,
               "hd95_vox": 3.0, "asd_vox": 1.0}
    rows = [{"bundle": b, "method": m, "labeled": 3, "seed": 1337, "cases": [{"case": "p1", "dice": d}],
             "metrics": {**metrics, "dice": d}}
            for b, m, d in [("supervised_acdc", "supervised_acdc", 0.8),
                            ("transmedseg_acdc", "transmedseg_acdc+ablation_bcp_only+self_training_schedule", 0.85),
                            ("transmedseg_acdc", "transmedseg_acdc+step_schedule", 0.75),
                            ("supervised_la", "supervised_la", 0.5)]]
    text = table(rows, [3], "acdc")
    assert "| mean Dice % | RV % | Myo % | LV % |" in text.splitlines()[0]
    assert "| supervised | 3 | 1 | 80.0 | 70.0 | 80.0 | 90.0 |" in text
    assert "| BCP only | 3 | 1 | 85.0 | 70.0 |" in text and text.count("| 1/1, +5.0 |") == 1
    assert "| TransMedSeg | 3 | 0 | not run |" in text
    assert "| TransMedSeg, step schedule (before 0.2.0) | 3 | 1 | 75.0 |" in text and "BCP only, step" not in text


@pytest.mark.slow
def test_acdc_protocol_runs_end_to_end_on_the_cpu(tmp_path):
    """``--dataset acdc``: prepare-acdc by patient, an ACDC bundle trained and evaluated, per-class Dice kept."""
    from benchmarks.la_protocol import main
    from test_acdc_data import make_acdc

    src = make_acdc(tmp_path / "ACDC", patients=6)
    small = [["patch_size", "[32, 32]"], ["batch_size", "2"], ["unet_2d#features", "[4, 4, 8, 8, 16, 4]"]]
    argv = ["--dataset", "acdc", "--protocol", "full", "--device", "cpu", "--bundles", "supervised_acdc", "--labeled",
            "2", "--val", "1", "--iterations", "4", "--val-interval", "2", "--source", str(src),
            "--data-root", str(tmp_path / "data"), "--runs-root", str(tmp_path / "runs"),
            "--results", str(tmp_path / "acdc.json"), *[a for kv in small for a in ("--override", *kv)]]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "acdc.json").read_text())
    assert len(rows) == 1 and rows[0]["iterations"] == 4 and len(rows[0]["cases"]) == 2  # 1 patient, 2 frames
    assert {"dice_class1", "dice_class2", "dice_class3"} <= set(rows[0]["metrics"])


def test_app_benchmark_fails_when_the_served_label_is_not_the_bundles(tmp_path):
    """The MONAI Label benchmark compares the app's label with the bundle's own inference voxel by voxel and scores
    it against the truth; one differing voxel stops it, naming the count."""
    import nibabel as nib
    import numpy as np

    from benchmarks.monailabel_app import label_check

    truth = np.zeros((6, 5, 4), np.uint8)
    truth[1:4, 1:4, 1:3] = 1
    pred = truth.copy()
    pred[1, 1, 1] = 0
    (tmp_path / "bundle").mkdir()
    nib.save(nib.Nifti1Image(pred, np.eye(4)), tmp_path / "app.nii.gz")
    nib.save(nib.Nifti1Image(pred, np.eye(4)), tmp_path / "bundle" / "case_seg.nii.gz")
    out = label_check(tmp_path / "app.nii.gz", tmp_path / "bundle", truth)
    assert out["voxels_differing_from_bundle"] == 0 and out["foreground_voxels"] == 17
    assert out["dice_vs_truth"] == pytest.approx(2 * 17 / (17 + 18))
    pred[0, 0, 0] = 1
    nib.save(nib.Nifti1Image(pred, np.eye(4)), tmp_path / "app.nii.gz")
    with pytest.raises(RuntimeError, match="differs from the bundle's own inference in 1 voxels"):
        label_check(tmp_path / "app.nii.gz", tmp_path / "bundle", truth)
    pred[0, 0, 0] = 0
    nib.save(nib.Nifti1Image(pred, np.diag([2.0, 1.0, 1.0, 1.0])), tmp_path / "app.nii.gz")  # same voxels, other grid
    with pytest.raises(RuntimeError, match="another grid"):
        label_check(tmp_path / "app.nii.gz", tmp_path / "bundle", truth)


def test_headline_pairs_each_method_with_supervised_on_their_common_seeds():
    """A method that has run seed 1337 alone is paired with supervised's seed 1337, not with supervised's mean over
    seeds it has not run (a second supervised seed used to move the one-seed rows' wins)."""
    from benchmarks.headline import paired_with_baseline

    def row(method, seed, scores):
        return {"bundle": method, "method": method if seed == 1337 else f"{method}@seed{seed}", "labeled": 8,
                "seed": seed, "cases": [{"case": f"c{i}", "dice": d} for i, d in enumerate(scores)]}

    method = [row("m", 1337, [0.80, 0.70, 0.60])]
    supervised = [row("s", 1337, [0.75, 0.72, 0.55]), row("s", 2, [0.95, 0.95, 0.95])]
    assert paired_with_baseline(method + supervised, "m", "s", 8) == "2/3, +5.0"  # against seed 1337 alone
    assert paired_with_baseline(method + [row("s", 2, [0.5, 0.5, 0.5])], "m", "s", 8) == "–"  # no common seed


def test_cpu_model_names_the_processor_with_its_family_and_model(tmp_path):
    from benchmarks.cpu_model import cpu_model

    info = tmp_path / "cpuinfo"
    block = "processor\t: {}\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\nmodel name\t: AMD EPYC\n"
    info.write_text(block.format(0) + "\n" + block.format(1).replace("AMD EPYC", "other"))
    assert cpu_model(info) == "AMD EPYC (family 23, model 1)"  # the first processor's
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert cpu_model(info) == "Some CPU"
    info.write_text("processor\t: 0\nFeatures\t: fp asimd\n")  # no model name (some ARM kernels)
    assert cpu_model(info) is None
    assert cpu_model(tmp_path / "missing") is None


def test_report_names_the_processors_that_trained_the_rows():
    from benchmarks.la_protocol import processors_note

    rows = [{"bundle": "a", "method": "a", "labeled": 8, "trained_on": ["X (family 1, model 2)"]},
            {"bundle": "b", "method": "b@seed2", "labeled": 16, "trained_on": ["X (family 1, model 2)", "Y"]},
            {"bundle": "c", "method": "c", "labeled": 8}]
    note = processors_note(rows)
    assert "X (family 1, model 2): a (8), b@seed2 (16); Y: b@seed2 (16)." in note
    assert "other rows did not record" in note
    assert processors_note(rows[2:]) == ""  # nothing recorded: no line


def test_timing_reports_name_the_processor_and_configs_where_recorded():
    from benchmarks import speed, training_setting

    run = {"cpu_s_per_iteration": 1.0}
    setting = {"setting": "channels_last", "values": ["False", "True"], "date": "2026-12-02", "iterations": 30,
               "bundles": [{"bundle": "supervised_la", "runs": {"False": run, "True": run}, "speedup": 1.0,
                            "max_loss_difference": 0.0, "loss_range": [0.1, 0.9]}]}
    old = training_setting.report(setting)  # a record from before the processor was kept
    assert "`cpu_protocol.yaml` + `cpu_protocol_v1.yaml`" in old and " on 2026-12-02, " in old
    new = training_setting.report({**setting, "cpu": "AMD EPYC (family 23, model 1)", "configs": ["cpu_protocol"]})
    assert "on 2026-12-02 on AMD EPYC (family 23, model 1)" in new and "train.yaml + `cpu_protocol.yaml`;" in new
    base = {"device": "cpu", "network": "basic_unet", "patch": [56, 56, 40], "batch": 2, "amp": False, "cases": {}}
    assert "Processor" not in speed.report(base)
    assert "Processor: X (family 1, model 2), 2 cores." in speed.report({**base, "cpu": "X (family 1, model 2)",
                                                                          "cpu_count": 2})


def test_peak_times_bfloat16_only_where_it_is_native(monkeypatch):
    import torch

    from benchmarks import speed
    from ssmis.utils import precision

    for native in (False, True):
        monkeypatch.setattr(precision, "bfloat16_is_fast", lambda: native)
        peak = speed.case_peak(None, torch.device("cpu"), n=32)
        assert peak["bf16_native"] is native and peak["fp32_gflops"] > 0 and ("bf16_gflops" in peak) is native
    base = {"device": "cpu", "network": "basic_unet", "patch": [56, 56, 40], "batch": 2, "amp": False}
    step = {"step_s": 1.0, "cpu_s": 2.0, "gflop": 10.0, "peak_rss_mib": 1024}
    text = speed.report({**base, "cases": {"peak": {"fp32_gflops": 60.0, "bf16_native": False},
                                           "supervised": step}})
    assert "fp32 60.0 GFLOP/s, bf16 not timed (no bfloat16 instructions: emulated)" in text
