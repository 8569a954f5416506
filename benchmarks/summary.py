"""The results at a glance: one table over both datasets, each method against supervised training.

    python benchmarks/summary.py            # README.md's "In brief" and the top of docs/benchmarks.md
    python benchmarks/summary.py --print    # print it, write nothing

A line per dataset and labelled count of the headline tables (``benchmarks/headline.py``), a column per method;
a cell is the validation Dice (mean Dice of RV, Myo and LV on ACDC) as mean ± sd over the seeds run, and, in
brackets, the difference from supervised training in points (the mean over the seeds both have run of each seed's
difference) and the validation cases where the method is higher (each case averaged over those seeds). A cell with
fewer than 3 seeds says how many. The table goes between the ``summary`` markers of each page given (by default
``README.md`` and ``docs/benchmarks.md``); a page without them is left as it is.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.headline import DATASETS, _mean_sd, groups, methods, optional  # noqa: E402
from benchmarks.la_protocol import paired, read_rows, update_doc_table  # noqa: E402

#: per dataset: the name a line starts with, what is counted, and how many training volumes or patients there are
#: to label (the rest of the data is the validation split)
POOLS = {"la": ("LA", "volumes", 72), "acdc": ("ACDC-dev", "patients", 16)}
SEEDS = 3  # the headline's seeds per cell
MARKER = "summary"


def columns() -> list[str]:
    """The methods every dataset reports (their display names, in the headline's order); controls are left out."""
    per = [[name for method, name in methods(d) if not optional(method, d)] for d in DATASETS]
    return [name for name in per[0] if all(name in other for other in per[1:])]


def versus(rows: list[dict], method: str, baseline: str, labeled: int) -> str:
    """``"+2.3; 6/8"``: the mean per-seed Dice difference from ``baseline`` in points on their common seeds, and the
    cases where ``method`` is higher; ``""`` where they share no seed."""
    by = {m: {int(r.get("seed", 1337)): r["metrics"]["dice"] for r in groups(rows).get((m, labeled), [])}
          for m in (method, baseline)}
    seeds = sorted(set(by[method]) & set(by[baseline]))
    if not seeds:
        return ""
    diff = f"{statistics.mean(100 * (by[method][s] - by[baseline][s]) for s in seeds):+.1f}".replace("-", "\u2212")
    try:
        c = paired(rows, method, baseline, labeled)
    except ValueError:  # rows from before per-case scores were kept
        return diff
    return f"{diff}; {c['a_better']}/{c['cases']}"


def cell(rows: list[dict], method: str, baseline: str, labeled: int) -> str:
    """One method at one labelled count: ``"82.7 ± 0.5 (+2.3; 6/8)"``, ``"not run"`` without a row."""
    runs = groups(rows).get((method, labeled), [])
    if not runs:
        return "not run"
    text = _mean_sd([r["metrics"]["dice"] for r in runs], 100)
    if len(runs) < SEEDS:
        text += f", {len(runs)} seed{'s' if len(runs) > 1 else ''}"
    vs = "" if method == baseline else versus(rows, method, baseline, labeled)
    return f"{text} ({vs})" if vs else text


def table(results: dict[str, list[dict]]) -> str:
    """The summary over ``results`` (dataset -> its rows, as ``read_rows`` gives them)."""
    names = columns()
    lines = ["| data, labelled | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for dataset, rows in results.items():
        spec, (title, unit, pool) = DATASETS[dataset], POOLS[dataset]
        by_name = {name: method for method, name in methods(dataset)}
        baseline = by_name[names[0]]
        for n in spec["labeled"]:
            cells = [cell(rows, by_name[name], baseline, n) for name in names]
            lines.append(f"| {title}, {n} of {pool} {unit} | " + " | ".join(cells) + " |")
        upper = spec["upper"]
        if upper and groups(rows).get((baseline, upper)):
            lines.append(f"| {title}, all {upper} {unit} labelled | {cell(rows, baseline, baseline, upper)} |"
                         + " |" * (len(names) - 1))
    lines += ["", *textwrap.wrap(f"Validation Dice %, mean ± sd over {SEEDS} seeds unless a cell says fewer; in "
                                 "brackets, the difference from supervised training in points and the validation "
                                 "cases where the method is higher.", 116)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pages", type=Path, nargs="*", default=[ROOT / "README.md", ROOT / "docs" / "benchmarks.md"],
                   help="pages whose summary markers receive the table (default: README.md docs/benchmarks.md)")
    p.add_argument("--print", dest="print_only", action="store_true", help="print the table and write nothing")
    args = p.parse_args(argv)
    results = {}
    for dataset, spec in DATASETS.items():
        path = ROOT / "docs" / "results" / spec["results"]
        try:  # a missing file would otherwise write "not run" over every real cell
            results[dataset] = read_rows(path)
        except ValueError as e:
            p.error(str(e))
    text = table(results)
    if not args.print_only:
        for page in args.pages:
            if not update_doc_table(page, MARKER, text):
                print(f"{page}: no '<!-- begin {MARKER} table -->' marker; left as it is", file=sys.stderr)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
