"""benchmarks/summary.py: the results at a glance, in README.md and at the top of docs/benchmarks.md."""

from __future__ import annotations

import sys

from conftest import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.summary import columns, main, table  # noqa: E402


def _row(method: str, labeled: int, seed: int, dices: list[float]) -> dict:
    cases = [{"case": f"c{i}", "dice": d} for i, d in enumerate(dices)]
    return {"bundle": method.split("+")[0], "method": method if seed == 1337 else f"{method}@seed{seed}",
            "labeled": labeled, "seed": seed, "cases": cases, "metrics": {"dice": sum(dices) / len(dices)}}


def test_a_cell_is_mean_sd_over_seeds_with_the_paired_difference_from_supervised():
    la = [_row("supervised_la", 8, 1337, [0.7, 0.8]), _row("supervised_la", 8, 2, [0.8, 0.8]),
          _row("fixed_dynamic_pl_la", 8, 1337, [0.9, 0.7]), _row("fixed_dynamic_pl_la", 8, 2, [0.9, 0.76]),
          _row("fixed_dynamic_pl_la", 8, 3, [0.9, 0.8]),  # supervised has no seed 3: left out of the difference
          _row("mean_teacher_la", 8, 1337, [0.6, 0.7]),
          _row("supervised_la", 72, 1337, [0.9, 0.9])]
    acdc = [_row("supervised_acdc", 3, 1337, [0.5, 0.5]),
            _row("transmedseg_acdc+self_training_schedule", 3, 1337, [0.6, 0.4])]
    text = table({"la": la, "acdc": acdc})
    parts = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
             if line.startswith("| ")]
    lines = {p[0]: p[1:] for p in parts}
    head = lines["data, labelled"]
    assert head[0] == "supervised" and head[-1].startswith("fixed/dynamic co-training")
    assert "supervised, batch 4" not in text  # controls are the headline's business
    cells = dict(zip(head, lines["LA, 8 of 72 volumes"]))
    assert cells["supervised"] == "77.5 ± 3.5, 2 seeds"
    # 3 seeds pooled (80, 83, 85); against supervised on seeds 1337 and 2: per seed +5.0 and +3.0 -> +4.0; the
    # cases averaged over those seeds: 0.90 against 0.75 (higher) and 0.73 against 0.80 (lower)
    assert cells["fixed/dynamic co-training"] == "82.7 ± 2.5 (+4.0; 1/2)"
    assert cells["mean teacher"] == "65.0, 1 seed (\u221210.0; 0/2)"
    assert cells["BCP only"] == "not run"
    assert lines["LA, 16 of 72 volumes"][0] == "not run"
    assert lines["LA, all 72 volumes labelled"][0] == "90.0, 1 seed"
    acdc3 = dict(zip(head, lines["ACDC-dev, 3 of 16 patients"]))
    assert acdc3["TransMedSeg"] == "50.0, 1 seed (+0.0; 1/2)"
    assert "| ACDC-dev, all" not in text  # ACDC has no upper-bound row


def test_every_dataset_reports_the_same_five_methods():
    assert columns() == ["supervised", "mean teacher", "BCP only", "TransMedSeg", "fixed/dynamic co-training"]


def test_the_pages_show_the_table_of_the_committed_results(capsys):
    """README.md and docs/benchmarks.md hold what ``python benchmarks/summary.py`` writes from docs/results: a new
    result row without rerunning it (or headline.py, which runs it) fails here."""
    assert main(["--print"]) == 0
    text = capsys.readouterr().out
    for page in (ROOT / "README.md", ROOT / "docs" / "benchmarks.md"):
        body = page.read_text()
        block = body.split("<!-- begin summary table -->\n", 1)[1].split("<!-- end summary table -->", 1)[0]
        assert block == text, f"{page.name}: run python benchmarks/summary.py"


def test_a_page_without_markers_is_left_as_it_is(tmp_path, capsys):
    page = tmp_path / "page.md"
    page.write_text("no markers here\n")
    assert main(["--pages", str(page)]) == 0
    assert page.read_text() == "no markers here\n"
    assert "no '<!-- begin summary table -->' marker" in capsys.readouterr().err
