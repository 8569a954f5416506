"""The results page's first table: method x label count, mean ± sd over seeds, paired against supervised.

    python benchmarks/headline.py                       # from docs/results/la_1.25mm_v2.json
    python benchmarks/headline.py --results docs/results/la_1.25mm.json --output docs/results/headline_v1.md
    python benchmarks/headline.py --dataset acdc         # from docs/results/acdc_dev.json: mean and per-class Dice

Rows of one method and label count that differ only in their seed (``<method>@seed<N>``; the default seed has no
suffix) are one cell: Dice, Jaccard, HD95 and ASD (voxels) as mean ± standard deviation over the seeds. The paired
comparison with supervised training takes the seeds both have run, averages each validation case's Dice over them
for either method, then counts the cases where the method is higher ("wins", of the cases both have) and takes the
median of the per-case differences in points. The table goes to ``--output`` and between the ``headline`` markers of
``docs/benchmarks.md`` (ACDC: ``headline_acdc``), whose rows also give the Dice of each structure (RV, Myo, LV);
writing that page also refreshes the summary of both datasets (``benchmarks/summary.py``) there and in README.md.

A second table compares two methods on the seeds both have run (TransMedSeg against BCP only, the issue's "at or
above" goal): the mean of the per-seed Dice differences, each seed's difference, and the same paired per-case
count and median, the cases averaged over the common seeds.

Beside ``--output`` go the figures the page shows under the table: ``<output>_curves.png`` (validation Dice) and,
from rows that measured it, ``<output>_pseudo_quality.png``: one panel per label count, each method of the table
as the mean over its seeds with their range shaded.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.la_protocol import paired, positive_int, read_rows, update_doc_table  # noqa: E402
from ssmis.utils import atomic_write_text  # noqa: E402

# per dataset: the bundle suffix, the default label counts, the table's lines in order (method as the rows name it
# without the suffix, display name), the controls among them (a line only where they have run), the per-class
# columns (metric key, header), the results file, the page's table marker and the unit of the distances
DATASETS = {
    "la": {"suffix": "_la", "labeled": [8, 16],
           "names": [("supervised", "supervised"), ("supervised+batch_4_4", "supervised, batch 4"),
                     ("mean_teacher", "mean teacher"), ("mean_teacher+batch_4_4", "mean teacher, batch 4 + 4"),
                     ("mean_teacher+ablation_consistency_1.0", "mean teacher, consistency weight 1.0"),
                     ("transmedseg+ablation_bcp_only", "BCP only"), ("transmedseg", "TransMedSeg"),
                     ("fixed_dynamic_pl", "fixed/dynamic co-training"),
                     ("fixed_dynamic_pl+batch_4_4", "fixed/dynamic co-training, batch 4 + 4")],
           "optional": {"supervised+batch_4_4", "mean_teacher+batch_4_4", "mean_teacher+ablation_consistency_1.0",
                        "fixed_dynamic_pl+batch_4_4"},
           "pairs": [("transmedseg", "transmedseg+ablation_bcp_only")],
           "classes": [], "results": "la_1.25mm_v2.json", "marker": "headline", "unit": "vox",
           "upper": 72},  # supervised with every training volume labelled: the upper bound
    # ACDC: TransMedSeg's CPU protocol restarts the rate for self-training from transmedseg_acdc 0.2.0; its rows
    # name that schedule (self_training_schedule.yaml, now the default and a no-op), and the earlier rows, made with
    # the step schedule, name step_schedule.yaml
    "acdc": {"suffix": "_acdc", "labeled": [3, 7],
             "names": [("supervised", "supervised"), ("mean_teacher", "mean teacher"),
                       ("transmedseg+ablation_bcp_only+self_training_schedule", "BCP only"),
                       ("transmedseg+self_training_schedule", "TransMedSeg"),
                       ("fixed_dynamic_pl", "fixed/dynamic co-training"),
                       ("transmedseg+ablation_bcp_only+step_schedule", "BCP only, step schedule (before 0.2.0)"),
                       ("transmedseg+step_schedule", "TransMedSeg, step schedule (before 0.2.0)")],
             "optional": {"transmedseg+ablation_bcp_only+step_schedule", "transmedseg+step_schedule"},
             "pairs": [("transmedseg+self_training_schedule", "transmedseg+ablation_bcp_only+self_training_schedule")],
             "classes": [("dice_class1", "RV"), ("dice_class2", "Myo"), ("dice_class3", "LV")],
             "results": "acdc_dev.json", "marker": "headline_acdc", "unit": "pixels",  # ACDC: no voxel size
             "upper": None},
}


def _row_name(key: str, suffix: str) -> str:
    return key.replace("+", suffix + "+", 1) if "+" in key else key + suffix


def methods(dataset: str) -> list[tuple[str, str]]:
    """(method as the rows name it, display name) of ``dataset``: e.g. ``transmedseg_la+ablation_bcp_only``."""
    spec = DATASETS[dataset]
    return [(_row_name(key, spec["suffix"]), name) for key, name in spec["names"]]


def optional(method: str, dataset: str = "la") -> bool:
    """Whether ``method`` (as the rows name it) is a control that gets a line only where it has run."""
    spec = DATASETS[dataset]
    return any(method == _row_name(key, spec["suffix"]) for key in spec["optional"])


SEED = re.compile(r"@seed\d+$")


def method_of(row: dict) -> str:
    """The row's method without its seed suffix."""
    return SEED.sub("", row.get("method", row["bundle"]))


def groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    """Rows by (method, labelled count); the last row of a seed wins (a rerun replaces it)."""
    out: dict[tuple[str, int], dict[int, dict]] = {}
    for r in rows:
        out.setdefault((method_of(r), int(r["labeled"])), {})[int(r.get("seed", 1337))] = r
    return {k: list(v.values()) for k, v in out.items()}


def _mean_sd(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    v = [scale * x for x in values]
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} ± {statistics.stdev(v):.{digits}f}"


def paired_with_baseline(rows: list[dict], method: str, baseline: str, labeled: int) -> str:
    """``"wins/cases, median"`` of ``method`` against ``baseline`` at ``labeled`` on the seeds both have run
    (``la_protocol.paired``), or "–" where they share no seed or no per-case scores."""
    try:
        c = paired(rows, method, baseline, labeled)
    except ValueError:
        return "–"
    return f"{c['a_better']}/{c['cases']}, {c['median']:+.1f}"


def pair_table(rows: list[dict], labeled: list[int], dataset: str = "la") -> str:
    """The pairs of ``DATASETS[dataset]["pairs"]`` on their common seeds; empty where no pair has a common seed."""
    spec, g = DATASETS[dataset], groups(rows)
    display = dict(methods(dataset))
    lines = []
    for n in labeled:
        for a_key, b_key in spec["pairs"]:
            a, b = _row_name(a_key, spec["suffix"]), _row_name(b_key, spec["suffix"])
            by_seed_a = {int(r.get("seed", 1337)): r for r in g.get((a, n), [])}
            by_seed_b = {int(r.get("seed", 1337)): r for r in g.get((b, n), [])}
            seeds = [s for s in by_seed_a if s in by_seed_b]
            if not seeds:
                continue
            diffs = [100 * (by_seed_a[s]["metrics"]["dice"] - by_seed_b[s]["metrics"]["dice"]) for s in seeds]
            per_seed = ", ".join(f"{d:+.1f}" for d in diffs)
            lines.append(f"| {display[a]} − {display[b]} | {n} | {len(seeds)} | {statistics.mean(diffs):+.1f} "
                         f"({per_seed}) | {paired_with_baseline(rows, a, b, n)} |")
    if not lines:
        return ""
    return ("| comparison | labelled | common seeds | Dice difference, points: mean (each seed) | "
            "cases better, median |\n|---|---|---|---|---|\n" + "\n".join(lines) + "\n")


def table(rows: list[dict], labeled: list[int], dataset: str = "la") -> str:
    g = groups(rows)
    classes = DATASETS[dataset]["classes"]
    dice = "mean Dice %" if classes else "Dice %"
    unit = DATASETS[dataset]["unit"]
    lines = [f"| method | labelled | seeds | {dice} | " + "".join(f"{h} % | " for _, h in classes)
             + f"Jaccard % | HD95 ({unit}) | ASD ({unit}) | vs supervised: wins, median |",
             "|---|---|---|---|" + "---|" * len(classes) + "---|---|---|---|"]
    baseline, upper = methods(dataset)[0][0], DATASETS[dataset]["upper"]
    lines_for = [(n, method, name) for n in labeled for method, name in methods(dataset)]
    if upper and g.get((baseline, upper)):  # the upper bound, last: supervised with every volume labelled
        lines_for.append((upper, baseline, f"{methods(dataset)[0][1]}, all labelled (upper bound)"))
    for n, method, name in lines_for:
        cell = g.get((method, n))
        if not cell and optional(method, dataset):
            continue
        if not cell:
            lines.append(f"| {name} | {n} | 0 | not run | " + "| " * len(classes) + "| | | |")
            continue
        m = [r["metrics"] for r in cell]
        vs = "–" if method == baseline else paired_with_baseline(rows, method, baseline, n)
        per_class = "".join(f"{_mean_sd([x[k] for x in m], 100)} | " for k, _ in classes)
        lines.append(f"| {name} | {n} | {len(cell)} | {_mean_sd([x['dice'] for x in m], 100)} | {per_class}"
                     f"{_mean_sd([x['jaccard'] for x in m], 100)} | {_mean_sd([x['hd95_vox'] for x in m])} | "
                     f"{_mean_sd([x['asd_vox'] for x in m], digits=2)} | {vs} |")
    return "\n".join(lines) + "\n"


def upper_bound_shares(rows: list[dict], labeled: list[int], dataset: str = "la") -> str:
    """For each label count, the best method's mean Dice as a share of the upper bound (supervised with every
    volume labelled); empty without an upper-bound row. Controls and ablations are left out of "best"."""
    g, spec = groups(rows), DATASETS[dataset]
    baseline = methods(dataset)[0][0]
    bound = g.get((baseline, spec["upper"])) if spec["upper"] else None
    if not bound:
        return ""
    top = statistics.mean(r["metrics"]["dice"] for r in bound)
    lines = []
    for n in labeled:
        means = {name: (statistics.mean(r["metrics"]["dice"] for r in g[(m, n)]), len(g[(m, n)]))
                 for m, name in methods(dataset) if not optional(m, dataset) and g.get((m, n))}
        if len(means) > 1:  # the baseline alone is no "best method"
            name, (best, seeds) = max(means.items(), key=lambda kv: kv[1][0])
            lines.append(f"- {n} labelled: the best method, {name} ({100 * best:.1f}, {seeds} seed"
                         f"{'s' if seeds > 1 else ''}), reaches **{100 * best / top:.1f} %** of the upper bound "
                         f"({100 * top:.1f}, {len(bound)} seed{'s' if len(bound) > 1 else ''}).")
    return "\n".join(lines) + "\n" if lines else ""


def _runs(cell: list[dict], pick) -> list[tuple[list[float], list[float]]]:
    """``pick(row)`` (an ``(x, y)`` curve, or None) of each seed's row that has one."""
    return [c for c in (pick(r) for r in cell) if c is not None]


def _pseudo(names: tuple[str, ...]):
    """A row's pseudo-label Dice curve: the mean of its ``pseudo_quality`` curves ``names`` (co-training's two
    networks' fixed, or dynamic, pseudo-labels), or None where it has not measured them."""
    def pick(row: dict) -> tuple[list[float], list[float]] | None:
        q = row.get("pseudo_quality") or {}
        curves = [q[f"{n}/dice"] for n in names if f"{n}/dice" in q]
        if not curves:
            return None
        return curves[0]["iteration"], [statistics.mean(v) for v in zip(*(c["value"] for c in curves))]
    return pick


# one colour per method (by its display name) in every figure, LA's and ACDC's, validation and pseudo-label alike
COLOURS = {"supervised": "tab:blue", "mean teacher": "tab:orange", "BCP only": "tab:green", "TransMedSeg": "tab:red",
           "fixed/dynamic co-training": "tab:purple"}
UPPER_COLOUR = "tab:gray"

# the pseudo-labels each method trains on, by the names the quality handler logs them under
PSEUDO_LABELS = {"fixed_dynamic_pl": [("fixed", ("fixed_sn1", "fixed_sn2")),
                                      ("dynamic", ("dynamic_sn1", "dynamic_sn2"))]}


def figures(rows: list[dict], labeled: list[int], dataset: str, output: Path) -> list[Path]:
    """Beside ``output``: the validation Dice curves (``<output>_curves.png``) and, where rows measured them, the
    pseudo-label Dice curves (``<output>_pseudo_quality.png``) of the table's methods (controls left out), one
    panel per label count, each line the mean over seeds with their range shaded."""
    from ssmis.visualize import save_curve_panels

    g, spec = groups(rows), DATASETS[dataset]
    shown = [(key, m, name) for (key, _), (m, name) in zip(spec["names"], methods(dataset))
             if key not in spec["optional"]]
    baseline = shown[0][1]
    bound = g.get((baseline, spec["upper"])) if spec["upper"] else None
    bound_name = f"{shown[0][2]}, all labelled (upper bound)"

    def val(r: dict) -> tuple[list, list]:
        return r["curve"]["iteration"], r["curve"]["val_dice"]

    colours = {name: COLOURS[name] for _, _, name in shown if name in COLOURS} | {bound_name: UPPER_COLOUR}
    second = []  # a method's second pseudo-label line (co-training's dynamic ones): its colour, dashed
    curves, quality = {}, {}
    for n in labeled:
        panel = f"{n} labelled"
        curves[panel] = {name: _runs(g[(m, n)], val) for _, m, name in shown if g.get((m, n))}
        if bound:
            curves[panel][bound_name] = _runs(bound, val)
        for key, m, name in shown:
            for i, (label, names) in enumerate(PSEUDO_LABELS.get(key, [("teacher", ("teacher",))])):
                runs = _runs(g.get((m, n), []), _pseudo(names))
                if runs:
                    quality.setdefault(panel, {})[f"{name}, {label}"] = runs
                    if name in colours:
                        colours[f"{name}, {label}"] = colours[name]
                    if i:
                        second.append(f"{name}, {label}")
    written = [save_curve_panels(curves, output.with_name(f"{output.stem}_curves.png"), dashed=[bound_name],
                                 title="validation Dice: mean over seeds, range shaded", colours=colours)]
    if quality:
        written.append(save_curve_panels(
            quality, output.with_name(f"{output.stem}_pseudo_quality.png"), ylabel="pseudo-label Dice",
            title="pseudo-labels against the unlabelled volumes' labels: mean over seeds, range shaded",
            dashed=second, colours=colours))
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), default="la")
    p.add_argument("--results", type=Path, default=None,
                   help="default: docs/results/la_1.25mm_v2.json (ACDC: acdc_dev.json)")
    p.add_argument("--labeled", nargs="+", type=positive_int, default=None,
                   help="default: 8 16 (ACDC: 3 7 patients)")
    p.add_argument("--output", type=Path, default=None,
                   help="default: docs/results/headline.md (ACDC: headline_acdc.md)")
    p.add_argument("--doc", type=Path, default=None,
                   help="page whose 'headline' table is replaced (nothing happens without its markers); default: "
                        "docs/benchmarks.md when --results, --labeled and --output are left at their defaults, "
                        "otherwise none")
    args = p.parse_args(argv)
    if args.doc is None and args.results is None and args.labeled is None and args.output is None:
        args.doc = ROOT / "docs" / "benchmarks.md"
    spec = DATASETS[args.dataset]
    args.results = args.results or ROOT / "docs" / "results" / spec["results"]
    args.labeled = args.labeled or spec["labeled"]
    args.output = args.output or ROOT / "docs" / "results" / f"{spec['marker']}.md"
    try:  # a misspelt path would write a table of "not run" over the real one
        rows = read_rows(args.results)
    except ValueError as e:
        p.error(f"--results {e}")
    text = table(rows, args.labeled, args.dataset)
    pairs = pair_table(rows, args.labeled, args.dataset)
    text += f"\n{pairs}" if pairs else ""
    shares = upper_bound_shares(rows, args.labeled, args.dataset)
    text += f"\n{shares}" if shares else ""
    atomic_write_text(text, args.output)
    figures(rows, args.labeled, args.dataset, args.output)
    if args.doc is not None and args.doc.is_file():
        update_doc_table(args.doc, spec["marker"], text)
        if args.doc == ROOT / "docs" / "benchmarks.md":  # the default page: its summary follows the new rows
            from benchmarks.summary import main as summary

            summary([])
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
