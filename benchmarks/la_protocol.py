"""LA accuracy protocols: train and evaluate bundles at several label counts, then tabulate and plot.

    python benchmarks/la_protocol.py --bundles supervised_la --labeled 8 16 --iterations 1200
    python benchmarks/la_protocol.py --device cuda --bundles supervised_la --labeled 8 --max-wall-s 480

``--protocol cpu`` ("LA-1.25mm", v1):
For each (bundle, label count) it runs the bundle's own train.yaml (+ configs/cpu_protocol.yaml and
cpu_protocol_v1.yaml) on ``data/la_1.25mm_l<N>`` (made by
``python -m ssmis.data prepare-la --spacing 1.25 --labeled N --val 8`` when missing), then evaluate.yaml on the
validation split with the last checkpoint. Each run's wall time, CPU time and peak resident memory are measured
around its subprocess, with the host's steal fraction meanwhile. Results accumulate in
``docs/results/la_1.25mm.json``; the markdown table goes to ``docs/results/la_1.25mm.md`` (and between the markers
in ``docs/results/notes.md``) and the validation-Dice curves to ``docs/results/la_1.25mm_curves.png``. A run with
``--config BUNDLE=pseudo_label_quality.yaml`` also records its pseudo-label quality (``pseudo_quality`` in the row,
per validation interval) and draws it to ``docs/results/la_1.25mm_pseudo_quality.png``; its data must carry the
unlabelled volumes' ``reference_label`` (``prepare-la`` writes it; re-prepare data made before it did).

``--protocol cpu-v2`` ("LA-1.25mm v2", the default on a CPU): the bundles' ``cpu_protocol.yaml`` alone (validation
every 100 iterations; BCP's selected pre-training stage and 4 + 4 batch, the mean teacher's ramp scaled to the run);
``--protocol cpu`` ("LA-1.25mm", v1) adds ``cpu_protocol_v1.yaml``. v2's results go to
``docs/results/la_1.25mm_v2.*``, its runs to ``runs/la_1.25mm_v2``.

``--dataset acdc``: the same for the ACDC bundles (``supervised_acdc`` ...), on ``data/acdc_l<N>`` (``prepare-acdc``,
N labelled patients, 4 validation patients, the rest unlabelled), with each bundle's own iterations; results in
``docs/results/acdc_dev.*`` (``--protocol cpu``) or ``acdc_full.*`` (``--protocol full``, for a GPU).

``--protocol full`` (the default with ``--device cuda``): the standard setting for a GPU: 0.625 mm data, the
literature V-Net, 112x112x80 patches, the bundle's own iteration count (``--iterations`` overrides), sliding
windows with stride 18 in-plane and 4 along z. With ``--max-wall-s`` each call trains at most that long, saves and
exits; call it again to continue (the bundle resumes from its checkpoint). Evaluation runs once training has
finished. Results go to ``docs/results/la_full.*``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_steal import StealMeter, format_steal  # noqa: E402
from benchmarks.cpu_model import cpu_model  # noqa: E402
from benchmarks.paused_time import PausedMeter  # noqa: E402
from ssmis.bundle.layout import config_files  # noqa: E402
from ssmis.utils import atomic_write_text, bfloat16_is_fast  # noqa: E402

# the configs each protocol merges after a bundle's train.yaml (and before its extra configs): cpu_protocol.yaml is
# LA-1.25mm v2, and cpu_protocol_v1.yaml after it restores v1; the ACDC bundles' "cpu" is their cpu_protocol.yaml
PROTOCOL_CONFIGS = {"cpu": ["cpu_protocol.yaml", "cpu_protocol_v1.yaml"], "cpu-v2": ["cpu_protocol.yaml"], "full": []}
ACDC_PROTOCOL_CONFIGS = {"cpu": ["cpu_protocol.yaml"], "full": []}
# where each protocol's results and runs go (docs/results/<name>.json, runs/<name>)
PROTOCOL_NAMES = {"cpu": "la_1.25mm", "cpu-v2": "la_1.25mm_v2", "full": "la_full"}

# the pages whose tables (between <!-- begin NAME table --> markers) follow the results files
DOC_PAGES = (ROOT / "docs" / "benchmarks.md", ROOT / "docs" / "results" / "notes.md")

# configs that only measure (the trained weights are identical with and without them: tests/test_pseudo_label_quality)
DIAGNOSTIC_CONFIGS = {"pseudo_label_quality"}

# settings the papers tie to the label count: {bundle: {labelled count: [override, value, ...]}}
# (TraCoCo's w0 of the unlabelled weight: 0.3 with 8 labelled, the bundle default, and 1.0 with 16)
PER_LABEL_OVERRIDES = {"fixed_dynamic_pl_la": {16: ["--unlabeled_w0", "1.0"]}}


def run_cmd(cmd: list[str], log: Path) -> tuple[float, float, dict]:
    """Run ``cmd`` with output to ``log``; return (wall seconds, peak RSS in MiB, ``{"cpu_s", "steal",
    "paused_s"}``): the process's user + system CPU seconds, the host's steal fraction meanwhile, and the seconds
    of the wall time the process spent stopped (``SIGSTOP``; None where it cannot be read). Raises on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(log, "w") as f, StealMeter() as steal:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
        with PausedMeter(p.pid) as paused:
            _, status, usage = os.wait4(p.pid, 0)
    wall = time.time() - t0
    if status != 0:  # the last line of the log is the error (the bundle checks print theirs alone, as the last line)
        last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
        raise RuntimeError(f"command failed (exit {os.waitstatus_to_exitcode(status)}): "
                           f"{last[0][-400:] if last else ''}"
                           f"\n  log: {log}\n  command: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024.0, {"cpu_s": usage.ru_utime + usage.ru_stime, "steal": steal.fraction,
                                            "paused_s": paused.seconds}


def scalar_curves(log_dir: Path, match: Callable[[str], bool]) -> dict[str, tuple[list[int], list[float]]]:
    """``{tag: (steps, values)}`` of the scalars of a run's TensorBoard logs whose tag ``match`` accepts."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, list[tuple[int, float]]] = {}
    for ev in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev), size_guidance={"scalars": 0})  # every point, not a sample
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            if match(tag):
                curves.setdefault(tag, []).extend((int(s.step), float(s.value)) for s in acc.Scalars(tag))
    return {tag: ([x for x, _ in sorted(p)], [y for _, y in sorted(p)]) for tag, p in curves.items()}


def val_curve(log_dir: Path) -> tuple[list[int], list[float]]:
    """The ``val_mean_dice`` scalars of a run's TensorBoard logs as (iterations, values)."""
    return scalar_curves(log_dir, lambda tag: tag == "val_mean_dice").get("val_mean_dice", ([], []))


def pseudo_quality_curves(log_dir: Path, every: int) -> dict[str, dict[str, list]]:
    """The pseudo-label quality of a run (``configs/pseudo_label_quality.yaml``), each tag
    ``pseudo_quality/<name>/<dice|wrong>`` averaged over windows of ``every`` iterations ending at the validations:
    ``{"<name>/<score>": {"iteration": [...], "value": [...]}}``; empty when the run did not measure it."""
    out = {}
    for tag, (xs, ys) in scalar_curves(log_dir, lambda t: t.startswith("pseudo_quality/")).items():
        windows: dict[int, list[float]] = {}
        for x, y in zip(xs, ys):
            windows.setdefault(-(-x // every) * every, []).append(y)
        ends = sorted(windows)
        out[tag[len("pseudo_quality/"):]] = {"iteration": ends,
                                             "value": [sum(windows[e]) / len(windows[e]) for e in ends]}
    return out


def ensure_data(data_root: Path, labeled: int, spacing: float, val: int, source: Path, dataset: str = "la") -> Path:
    """The prepared data folder of a label count, made with ``python -m ssmis.data`` when missing (ACDC: labelled
    and validation counts are patients)."""
    if dataset == "acdc":
        out = data_root / f"acdc_l{labeled}"
        cmd = ["prepare-acdc", "--labeled-patients", str(labeled), "--val-patients", str(val)]
    else:
        out = data_root / f"la_{spacing:g}mm_l{labeled}"
        cmd = ["prepare-la", "--spacing", str(spacing), "--labeled", str(labeled), "--val", str(val)]
    if not (out / "datalist.json").is_file():
        done = subprocess.run([sys.executable, "-m", "ssmis.data", cmd[0], "--source", str(source), "--output",
                               str(out), *cmd[1:]], cwd=ROOT)
        if done.returncode:
            raise RuntimeError(f"python -m ssmis.data {cmd[0]} failed (exit {done.returncode}): its error is above")
    return out


def bundle_configs(bundle: str, *names: str) -> str:
    """The ``--config_file`` value for ``names`` of a bundle: each shared config, then the bundle's own."""
    return repr(config_files(ROOT / "bundles" / bundle, *names))


def start_piece(progress: Path, checkpoint: Path) -> dict:
    """The run's time so far (``progress.json``), marked as running from now.

    A piece that died without accounting for itself (killed, or the machine stopped) left ``running_since``: its
    wall time up to its last checkpoint, the training that the next piece keeps, is added to ``wall_s`` and counted in
    ``unaccounted_pieces``; its CPU time cannot be known, so ``cpu_s`` then covers the accounted pieces only, and any
    time it spent stopped counts as running. A folder without a checkpoint starts from nothing."""
    # a run folder without a checkpoint starts from nothing, whatever an older progress.json says
    total = json.loads(progress.read_text()) if progress.is_file() and checkpoint.is_file() else {}
    since = total.pop("running_since", None)
    if since is not None:
        kept = checkpoint.stat().st_mtime - since if checkpoint.is_file() else 0.0
        total["wall_s"] = total.get("wall_s", 0.0) + max(0.0, kept)
        total["unaccounted_pieces"] = total.get("unaccounted_pieces", 0) + 1
    total["running_since"] = time.time()
    progress.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(total), progress)
    return total


def trained_iterations(out: Path) -> int:
    """Iterations recorded in a run's ``models/checkpoint.pt`` (0 when there is none)."""
    import torch

    ckpt = out / "models" / "checkpoint.pt"
    if not ckpt.is_file():
        return 0
    # memory-mapped: only the trainer's few numbers are read, not the networks' and optimiser's tensors
    return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["trainer"]["iteration"])


def target_iterations(config_file: str, overrides: list[str]) -> int:
    """The iteration count a bundle run will reach: ``max_epochs * val_interval`` after the overrides."""
    import ast

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(ast.literal_eval(config_file))
    for key, value in zip(overrides[::2], overrides[1::2]):
        if key in ("--num_iterations", "--val_interval"):
            parser[key[2:]] = int(value)
    return int(parser.get_parsed_content("max_epochs")) * int(parser.get_parsed_content("val_interval"))


DEFAULT_SEED = 1337  # the seed of every row without a seed suffix


def method_name(bundle: str, extra: list[str], seed: int = DEFAULT_SEED) -> str:
    """Row name of a run: the bundle, plus the stems of extra configs (``transmedseg_la+ablation_no_tsa``), plus
    ``@seed<N>`` for a seed other than :data:`DEFAULT_SEED`, so a seed repeat gets its own row and run folder instead
    of replacing the default-seed row. Diagnostic configs (:data:`DIAGNOSTIC_CONFIGS`), which leave the trained
    weights unchanged, do not rename the row."""
    name = "+".join([bundle] + [Path(f).stem for f in extra if Path(f).stem not in DIAGNOSTIC_CONFIGS])
    return name if seed == DEFAULT_SEED else f"{name}@seed{seed}"


def run_dir(bundle: str, labeled: int, args: argparse.Namespace) -> Path:
    """Where a (bundle + extra configs, seed, label count) run keeps its models, logs and evaluation."""
    return args.runs_root / f"{method_name(bundle, args.extra_configs.get(bundle, []), args.seed)}_l{labeled}"


def bundle_version(bundle: str) -> str:
    """The ``version`` in the bundle's ``configs/metadata.json``, recorded with each result row."""
    return json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())["version"]


def version_label(trained_by: list[str], evaluated_by: str) -> str:
    """``"0.2.2"`` when one version trained and evaluated a run, else
    ``"0.2.0, 0.2.1 (trained), 0.2.2 (evaluated)"``."""
    if trained_by == [evaluated_by]:
        return evaluated_by
    return f"{', '.join(trained_by)} (trained), {evaluated_by} (evaluated)"


def run_one(bundle: str, labeled: int, args: argparse.Namespace) -> dict | None:
    data = ensure_data(args.data_root, labeled, args.spacing, args.val, args.source, args.dataset)
    extra = [c for c in args.extra_configs.get(bundle, [])]
    method = method_name(bundle, extra, args.seed)
    out = run_dir(bundle, labeled, args)
    folder = ROOT / "bundles" / bundle
    common = ["--bundle_root", str(folder), "--meta_file", str(folder / "configs" / "metadata.json"),
              "--dataset_dir", str(data), "--output_dir", str(out), "--seed", str(args.seed)]
    if args.device:  # after cpu_protocol.yaml, which pins the CPU: a command-line override wins
        common += ["--device", f"$torch.device({args.device!r})"]
    if args.iterations:
        common += ["--num_iterations", str(args.iterations)]
    if args.val_interval:
        common += ["--val_interval", str(args.val_interval)]
    train_extra = []
    if args.max_wall_s:
        train_extra += ["--max_wall_s", str(args.max_wall_s)]
    eval_extra = []
    if args.sw_overlap:
        common += ["--sw_overlap", args.sw_overlap]
        eval_extra += ["--eval_sw_stride", "0"]  # evaluate.yaml's stride would otherwise replace this overlap
    common += PER_LABEL_OVERRIDES.get(bundle, {}).get(labeled, [])
    common += [part for key, value in args.override for part in (f"--{key}", value)]
    protocol = (ACDC_PROTOCOL_CONFIGS if args.dataset == "acdc" else PROTOCOL_CONFIGS)[args.protocol]
    train_cfg = bundle_configs(bundle, "train.yaml", *protocol, *extra)
    eval_cfg = bundle_configs(bundle, "train.yaml", *protocol, *extra, "evaluate.yaml")
    py = [sys.executable, "-m", "monai.bundle", "run"]
    log = out / f"train_{time.strftime('%Y%m%d-%H%M%S')}.log" if args.max_wall_s else out / "train.log"
    if args.iterations:  # the bundle rounds its iterations up to whole validation intervals: say so before training
        target = target_iterations(train_cfg, common)
        if target != args.iterations:
            raise SystemExit(f"--iterations {args.iterations} is not a multiple of {bundle}'s validation interval, so "
                             f"the run would train {target} iterations; pass --val-interval with a divisor of "
                             f"{args.iterations}")
    version = bundle_version(bundle)  # read before training: the configs the training process parses
    # wall and CPU time summed over the pieces of a run trained in several calls (--max-wall-s, or a run killed and
    # started again, which resumes from its checkpoint)
    progress = out / "progress.json"
    total = start_piece(progress, out / "models" / "checkpoint.pt")
    train_wall, train_mem, usage = run_cmd(py + ["--config_file", train_cfg] + common + train_extra, log)
    total["wall_s"] = total.get("wall_s", 0.0) + train_wall
    total["cpu_s"] = total.get("cpu_s", 0.0) + usage["cpu_s"]
    if usage["paused_s"] is not None:
        total["paused_s"] = total.get("paused_s", 0.0) + usage["paused_s"]
    trained_by = total.setdefault("trained_by", [])  # the bundle versions that trained the pieces of this run
    if version not in trained_by:
        trained_by.append(version)
    trained_on, cpu = total.setdefault("trained_on", []), cpu_model()  # and the processors: times compare on one
    if cpu not in trained_on:
        trained_on.append(cpu)
    if usage["steal"] is not None:  # steal averaged over the pieces, weighted by their wall time
        total["steal_wall_s"] = total.get("steal_wall_s", 0.0) + usage["steal"] * train_wall
        total["measured_wall_s"] = total.get("measured_wall_s", 0.0) + train_wall
    total.pop("running_since", None)
    atomic_write_text(json.dumps(total), progress)
    done, target = trained_iterations(out), target_iterations(train_cfg, common)
    if done < target:
        print(f"   {done} of {target} iterations done; run the same command again to continue", flush=True)
        return None
    train_wall = total["wall_s"]
    steal = total["steal_wall_s"] / total["measured_wall_s"] if total.get("measured_wall_s") else None
    eval_version = bundle_version(bundle)  # read before evaluating, as the training version is before training
    eval_wall, eval_mem, _ = run_cmd(py + ["--config_file", eval_cfg] + common + eval_extra, out / "evaluate.log")
    scored = json.loads((out / "eval" / "metrics.json").read_text())
    metrics = scored["mean"]
    xs, ys = val_curve(out / "logs")
    every = max(1, xs[0] if xs else target)  # the validation interval
    quality = pseudo_quality_curves(out / "logs", every)
    if any(Path(f).stem == "pseudo_label_quality" for f in extra) and not quality:
        # a diagnostic does not rename the run folder: a run finished without it resumes and trains nothing
        raise SystemExit(f"{out}: the run finished without pseudo_label_quality.yaml, so nothing was measured; move "
                         "the folder away (or pass another --runs-root) to train it again with the diagnostic")
    return {
        "bundle": bundle, "method": method, "extra_configs": extra, "labeled": labeled, "iterations": target,
        "seed": args.seed, "protocol": args.protocol,
        "train_wall_s": train_wall, "train_cpu_s": total["cpu_s"], "train_paused_s": total.get("paused_s"),
        "train_unaccounted_pieces": total.get("unaccounted_pieces", 0),
        # what decides machine-dependent defaults (teacher_precision, sw_precision) and how many threads trained
        "bfloat16_is_fast": bfloat16_is_fast(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "host_steal": steal, "trained_on": total["trained_on"],
        "train_peak_mib": train_mem, "eval_wall_s": eval_wall,
        "eval_peak_mib": eval_mem, "metrics": metrics, "curve": {"iteration": xs, "val_dice": ys},
        "pseudo_quality": quality,
        "cases": scored.get("cases", []),  # per-case scores, kept for paired comparisons once run dirs are gone
        "checkpoint": "last", "run_dir": str(out),
        "bundle_version": version_label(total["trained_by"], eval_version),
    }


def merge_result(path: Path, row: dict) -> list[dict]:
    """Add ``row`` to the results file, replacing the row of the same method and label count, and return all rows.

    The file is read now, not when the script started, so rows written meanwhile by another run (or by hand) are
    kept; it is replaced atomically."""
    results = json.loads(path.read_text()) if path.is_file() else []
    results = [x for x in results
               if not (x.get("method", x["bundle"]) == row["method"] and x["labeled"] == row["labeled"])] + [row]
    atomic_write_text(json.dumps(results, indent=2) + "\n", path)
    return results


def _minutes(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds / 60:.1f} min"


def update_doc_table(doc: Path, name: str, table: str) -> bool:
    """Replace the text between ``<!-- begin <name> table -->`` and ``<!-- end <name> table -->`` in ``doc`` with
    ``table``, so ``docs/benchmarks.md`` always shows the latest results; False if the markers are absent."""
    begin, end = f"<!-- begin {name} table -->", f"<!-- end {name} table -->"
    text = doc.read_text() if doc.is_file() else ""
    if begin not in text or end not in text:
        return False
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(f"{head}{begin}\n{table}{end}{tail}", doc)
    return True


def _wall_cell(row: dict) -> str:
    """A row's train wall time, with the part the run spent stopped and the pieces whose time was estimated from
    their last checkpoint (:func:`start_piece`): ``"54.3 min (29.5 stopped; 1 piece to its last checkpoint)"``.

    Rows from before the pause was measured have no ``train_paused_s``; their cell is the wall time alone."""
    wall, paused = row["train_wall_s"] / 60, (row.get("train_paused_s") or 0.0) / 60
    notes = [f"{paused:.1f} stopped"] if paused >= 0.05 else []
    n = row.get("train_unaccounted_pieces") or 0
    if n:
        notes.append(f"{n} piece{'s' if n > 1 else ''} to its last checkpoint")
    if row.get("train_time_note"):  # set by hand where the time is known to be incomplete
        notes.append(row["train_time_note"])
    return f"{wall:.1f} min" + (f" ({'; '.join(notes)})" if notes else "")


def _version_cell(version: str | None) -> str:
    """The bundle versions named in a row's ``bundle_version``
    ("0.1.1 (trained), 0.1.2 (evaluated)" → "0.1.1/0.1.2")."""
    found = re.findall(r"\d+\.\d+\.[0-9x]+", version or "")
    return "/".join(dict.fromkeys(found)) or "–"


def processors_note(rows: list[dict]) -> str:
    """A line under the table naming the processors that trained the rows that recorded one (``trained_on``), and
    which rows, since the machines differ (empty where no row recorded its processor)."""
    by_cpu: dict[str, list[str]] = {}
    for r in rows:
        for cpu in r.get("trained_on") or []:
            by_cpu.setdefault(str(cpu), []).append(f"{r.get('method', r['bundle'])} ({r['labeled']})")
    if not by_cpu:
        return ""
    named = "; ".join(f"{cpu}: {', '.join(names)}" for cpu, names in by_cpu.items())
    return (f"\nTrain wall and CPU times compare only between rows of one processor. Processors recorded: {named}. "
            "The other rows did not record theirs.\n")


def write_report(results: list[dict], md: Path, png: Path, title: str) -> None:
    from ssmis.visualize import save_curves

    # ACDC's files carry no voxel size (prepare-acdc writes 1 mm), so its distances are in pixels only
    pixels = bool(results) and all(r["bundle"].endswith("_acdc") for r in results)
    unit = "(pixels)" if pixels else "(vox / mm)"
    rows = [
        f"| method | bundle | labelled | iterations | Dice % | Jaccard % | HD95 {unit} | ASD {unit} "
        "| train wall | train CPU | host steal | peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ordered = sorted(results, key=lambda r: (r["labeled"], r.get("method", r["bundle"])))
    for r in ordered:
        m = r["metrics"]
        hd95 = f"{m['hd95_vox']:.2f}" + ("" if pixels else f" / {m['hd95_mm']:.2f}")
        asd = f"{m['asd_vox']:.2f}" + ("" if pixels else f" / {m['asd_mm']:.2f}")
        rows.append(
            f"| {r.get('method', r['bundle'])} | {_version_cell(r.get('bundle_version'))} | {r['labeled']} "
            f"| {r['iterations']} | {100 * m['dice']:.2f} "
            f"| {100 * m['jaccard']:.2f} | {hd95} | {asd} | {_wall_cell(r)} "
            f"| {_minutes(r.get('train_cpu_s'))} | {format_steal(r.get('host_steal'))} "
            f"| {r['train_peak_mib'] / 1024:.2f} GiB |"
        )
    table = "\n".join(rows) + "\n" + processors_note(ordered)
    atomic_write_text(table, md)  # as the JSON and the doc table: a killed run leaves no half-written table
    if md.parent.resolve() == (ROOT / "docs" / "results").resolve():  # results kept elsewhere stay out of the docs
        for page in DOC_PAGES:  # each page that has this table's markers
            update_doc_table(page, md.stem, table)
    curves = {f"{r.get('method', r['bundle'])} ({r['labeled']} lab.)": (r["curve"]["iteration"], r["curve"]["val_dice"])
              for r in ordered}
    save_curves(curves, png, title=title)
    quality = {f"{r.get('method', r['bundle'])} ({r['labeled']} lab.), {name[:-len('/dice')]}":
               (c["iteration"], c["value"]) for r in ordered for name, c in (r.get("pseudo_quality") or {}).items()
               if name.endswith("/dice")}
    if quality:  # the runs that measured it (configs/pseudo_label_quality.yaml): beside the validation curves
        save_curves(quality, png.with_name(png.stem.replace("_curves", "") + "_pseudo_quality.png"),
                    ylabel="pseudo-label Dice (interval mean)",
                    title=f"{title.split(':')[0]}: Dice of the pseudo-labels against the unlabelled volumes' labels")


def paired(results: list[dict], a: str, b: str, labeled: int, metric: str = "dice") -> dict:
    """Per-case comparison of methods ``a`` and ``b`` (their ``method`` names without a seed suffix) at
    ``labeled`` labelled volumes, pooled over the seeds both have run.

    A method's rows are its own and its ``<method>@seed<N>`` rows (the last row of each seed that holds per-case
    scores, ``cases``). Each case's score is averaged over the seeds common to ``a`` and ``b``, the cases are
    paired by name, and ``{"cases": n, "seeds": [...], "a_better": k, "diffs": {case: a - b}, "mean": ..,
    "median": .., "min": .., "max": ..}`` is returned, with the differences in points (×100) for
    ``dice``/``jaccard`` and in the metric's unit otherwise. Raises ValueError naming the method whose rows or
    per-case scores are missing, or when the two share no seed or case.
    """
    def scores(method: str) -> dict[int, dict[str, float]]:
        rows = [r for r in results if re.sub(r"@seed\d+$", "", r.get("method", r["bundle"])) == method
                and r["labeled"] == labeled]
        if not rows:
            raise ValueError(f"no result row for {method!r} at {labeled} labelled")
        by_seed = {int(r.get("seed", 1337)): {c["case"]: float(c[metric]) for c in r["cases"]}
                   for r in rows if r.get("cases")}
        if not by_seed:
            raise ValueError(f"{method!r} at {labeled} labelled has no per-case scores (run before they were kept)")
        return by_seed

    sa, sb = scores(a), scores(b)
    seeds = sorted(set(sa) & set(sb))
    if not seeds:
        raise ValueError(f"{a!r} (seeds {sorted(sa)}) and {b!r} (seeds {sorted(sb)}) share no seed")

    def pooled(by_seed: dict[int, dict[str, float]]) -> dict[str, float]:
        cases = set.intersection(*(set(by_seed[s]) for s in seeds))
        return {c: sum(by_seed[s][c] for s in seeds) / len(seeds) for c in cases}

    pa, pb = pooled(sa), pooled(sb)
    common = sorted(set(pa) & set(pb))
    if not common:
        raise ValueError(f"{a!r} and {b!r} share no case")
    scale = 100.0 if metric in ("dice", "jaccard") else 1.0
    diffs = {c: scale * (pa[c] - pb[c]) for c in common}
    values = sorted(diffs.values())
    mid = len(values) // 2
    median = values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
    better = sum(d < 0 if metric.startswith(("hd", "asd")) else d > 0 for d in values)  # distances: lower is better
    return {"cases": len(common), "seeds": seeds, "a_better": better, "diffs": diffs,
            "mean": sum(values) / len(values), "median": median, "min": values[0], "max": values[-1]}


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of volumes, patients or iterations)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a count (must be at least 1)")
    return value


#: the per-case scores a results row keeps, which --compare can compare
CASE_METRICS = ("dice", "jaccard", "hd95_mm", "asd_mm", "hd95_vox", "asd_vox", "dice_class1", "dice_class2",
                "dice_class3")


def check_rows(rows: object, path: Path) -> list[dict]:
    """``rows`` (a results file's JSON) if it is a list of result rows; ValueError naming ``path`` and the first bad
    row otherwise."""
    if not isinstance(rows, list):
        raise ValueError(f"{path}: expected a JSON list of result rows, got {type(rows).__name__}")
    for i, row in enumerate(rows):
        missing = {"bundle", "labeled", "metrics"} - set(row) if isinstance(row, dict) else None
        if missing is None or missing or not isinstance(row["metrics"], dict):
            what = f"lacks {sorted(missing)}" if missing else "is not a result row (an object with a metrics object)"
            raise ValueError(f"{path}: row {i} {what}: {json.dumps(row)[:120]}")
    return rows


def read_rows(path: Path) -> list[dict]:
    """The result rows of the results file ``path``; ValueError naming it when it is missing, not a file, not JSON or
    not a list of rows (:func:`check_rows`)."""
    if not path.is_file():
        raise ValueError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        rows = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    return check_rows(rows, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--protocol", choices=list(PROTOCOL_CONFIGS),
                   help="cpu-v2: LA-1.25mm v2 on 2 cores (each recipe's structure kept; the bundles' "
                        "cpu_protocol.yaml); "
                        "cpu: LA-1.25mm v1, or ACDC-dev with --dataset acdc; full: the standard setting, for a GPU "
                        "(default: full with --device cuda, else cpu-v2, or cpu for ACDC)")
    p.add_argument("--device", default=None,
                   help="torch device for training and evaluation, e.g. cuda or cuda:1 (default: cpu for the cpu "
                        "protocol, the bundle's choice otherwise); --device cuda selects the full protocol")
    p.add_argument("--dataset", choices=["la", "acdc"], default="la",
                   help="la (default) or acdc: ACDC's *_acdc bundles on ../shared/data/ACDC, split by patient "
                        "(--labeled and --val count patients; defaults 3 7 and 4), with each bundle's iterations")
    p.add_argument("--bundles", nargs="+", default=None, help="bundle names under bundles/ (default supervised_la, "
                                                             "or supervised_acdc with --dataset acdc)")
    p.add_argument("--labeled", nargs="+", type=positive_int, default=None,
                   help="labelled-volume counts (default 8 16; "
                        "ACDC: labelled patients, 3 7)")
    p.add_argument("--iterations", type=positive_int,
                   help="training iterations per run (cpu default 1200; full: the bundle's)")
    p.add_argument("--val-interval", type=positive_int,
                   help="iterations between validations (default: the protocol's; cpu-v2 100, cpu 200)")
    p.add_argument("--max-wall-s", type=float, help="train at most this long per call, then save and exit")
    p.add_argument("--sw-overlap", help="sliding-window overlap (full default: stride 18/18/4 of 112x112x80)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED,
                   help=f"training seed (default {DEFAULT_SEED}); another seed is a separate row, named "
                        "<method>@seed<N>, for measuring the spread between seeds")
    p.add_argument("--val", type=positive_int, default=None,
                   help="validation volumes, the last of train.list (default 8; "
                        "ACDC: validation patients, 4)")
    p.add_argument("--source", type=Path, default=None, help="the raw data (default ../shared/data/LA or ACDC)")
    p.add_argument("--data-root", type=Path, default=ROOT / "data",
                   help="where prepared data go, one folder per label count (default data/)")
    p.add_argument("--runs-root", type=Path, help="default runs/la_1.25mm_v2, runs/la_1.25mm (v1) or runs/la_full")
    p.add_argument("--results", type=Path,
                   help="default docs/results/la_1.25mm_v2.json, la_1.25mm.json (v1) or la_full.json")
    p.add_argument("--override", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="a config override passed to every training and evaluation, e.g. --override patch_size "
                        "'[96, 96, 64]'; repeatable (a run so changed is still filed under the method's name)")
    p.add_argument("--config", action="append", default=[], metavar="BUNDLE=FILE",
                   help="extra config file (in the bundle's configs/) merged for BUNDLE; repeatable")
    p.add_argument("--curves-only", action="store_true",
                   help="train nothing: print the validation-Dice curve logged so far by each run (an unfinished "
                        "run too), to compare methods at equal iterations")
    p.add_argument("--compare", nargs=2, metavar=("METHOD_A", "METHOD_B"),
                   help="train nothing: per-case differences A - B at each --labeled count, from the results file, "
                        "each case averaged over the seeds both ran (method names without @seed, e.g. "
                        "transmedseg_la transmedseg_la+ablation_bcp_only)")
    p.add_argument("--metric", default="dice", choices=CASE_METRICS, help="metric for --compare (default dice)")
    p.add_argument("--report-only", action="store_true",
                   help="train nothing: rewrite the table, the plot and the table in the docs from the "
                        "results file")
    args = p.parse_args(argv)
    acdc = args.dataset == "acdc"
    args.bundles = args.bundles or ["supervised_acdc" if acdc else "supervised_la"]
    args.labeled = args.labeled if args.labeled is not None else ([3, 7] if acdc else [8, 16])
    args.val = args.val if args.val is not None else (4 if acdc else 8)
    args.source = args.source or ROOT.parent / "shared" / "data" / ("ACDC" if acdc else "LA")
    if acdc and args.protocol == "cpu-v2":
        p.error("--protocol cpu-v2 is LA's; ACDC has cpu (its bundles' cpu_protocol.yaml) and full")
    if args.protocol is None:
        args.protocol = "full" if (args.device or "").startswith("cuda") else "cpu" if acdc else "cpu-v2"
    name = PROTOCOL_NAMES[args.protocol] if not acdc else f"acdc_{'dev' if args.protocol == 'cpu' else 'full'}"
    cpu = args.protocol.startswith("cpu")
    args.spacing = 1.25 if cpu else 0.625
    if cpu and not acdc:  # ACDC: the iterations and validation interval of each bundle's cpu_protocol.yaml
        args.iterations = args.iterations if args.iterations is not None else 1200
    elif not cpu and not acdc:  # LA's stride 18/18/4 in 112 x 112 x 80 windows
        args.sw_overlap = args.sw_overlap or "[0.839, 0.839, 0.95]"
    args.runs_root = args.runs_root or ROOT / "runs" / name
    args.results = args.results or ROOT / "docs" / "results" / f"{name}.json"
    args.extra_configs = {}
    for item in args.config:
        b, _, f = item.partition("=")
        if not b or not f:
            p.error(f"--config {item!r}: expected BUNDLE=FILE, e.g. transmedseg_la=ablation_no_tsa.yaml")
        if b not in args.bundles:
            p.error(f"--config {item!r}: bundle {b!r} is not among --bundles {args.bundles}")
        try:
            config_files(ROOT / "bundles" / b, f)
        except FileNotFoundError as e:
            p.error(f"--config {item!r}: {e}")
        args.extra_configs.setdefault(b, []).append(f)
    for b in args.bundles:
        if not (ROOT / "bundles" / b / "configs" / "train.yaml").is_file():
            p.error(f"--bundles: unknown bundle {b!r} (no bundles/{b}/configs/train.yaml)")
        if b.endswith(("_la", "_acdc")) and not b.endswith(f"_{args.dataset}"):
            p.error(f"--bundles: {b} is not a bundle of --dataset {args.dataset} (its bundles end in _{args.dataset})")
    # a misspelt path must not write empty tables over the real ones, and a malformed file fails now, not after hours
    # of training (training makes the file when there is none)
    rows = None
    if args.report_only or args.compare or args.results.exists():
        try:
            rows = read_rows(args.results)
        except ValueError as e:
            p.error(f"--results {e}")
    # one protocol per results file: a v1 command without --protocol cpu (now that cpu-v2 is the default) would
    # otherwise replace a v1 row by a v2 one of the same method
    other = sorted({str(r.get("protocol")) for r in rows or [] if r.get("protocol")} - {args.protocol})
    if other and not (args.report_only or args.compare):
        p.error(f"--results {args.results} holds rows of --protocol {', '.join(other)}, and this run is --protocol "
                f"{args.protocol}: pass that protocol, or other --results and --runs-root")

    def report(results: list[dict]) -> None:
        write_report(results, args.results.with_suffix(".md"), args.results.with_name(f"{name}_curves.png"),
                     title=f"{name}: validation Dice ({args.val} validation "
                           f"{'patients, 2 frames each' if args.dataset == 'acdc' else 'volumes'})")

    if args.report_only:
        report(rows)
        print(args.results.with_suffix(".md").read_text())
        return 0
    if args.compare:
        results = rows
        for labeled in args.labeled:
            try:
                c = paired(results, *args.compare, labeled, args.metric)
            except ValueError as e:
                print(f"{labeled} labelled: {e}")
                continue
            a, b = args.compare
            print(f"{labeled} labelled, {args.metric}, {a} - {b}, cases averaged over seeds {c['seeds']}: {a} better "
                  f"on {c['a_better']} of {c['cases']} cases; mean {c['mean']:+.2f}, median {c['median']:+.2f}, "
                  f"range {c['min']:+.2f} to {c['max']:+.2f}")
            for case, d in c["diffs"].items():
                print(f"   {case}: {d:+.2f}")
        return 0
    if args.curves_only:
        for labeled in args.labeled:
            for bundle in args.bundles:
                out = run_dir(bundle, labeled, args)
                xs, ys = val_curve(out / "logs") if (out / "logs").is_dir() else ([], [])
                points = ", ".join(f"{x}: {y:.4f}" for x, y in zip(xs, ys)) or "no validation logged"
                print(f"{out.name}: {points}")
        return 0
    args.results.parent.mkdir(parents=True, exist_ok=True)
    for labeled in args.labeled:
        for bundle in args.bundles:
            print(f"== {bundle}, {labeled} labelled, protocol {args.protocol}", flush=True)
            try:
                r = run_one(bundle, labeled, args)
            except RuntimeError as e:  # a failed preparation or run: its error, without this script's traceback
                p.exit(1, f"{p.prog}: {bundle}, {labeled} labelled: {e}\n")
            if r is None:
                continue
            results = merge_result(args.results, r)
            print(f"   Dice {r['metrics']['dice']:.4f}, train {r['train_wall_s'] / 60:.1f} min", flush=True)
            report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
