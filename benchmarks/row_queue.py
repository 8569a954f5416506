"""Run the headline's result rows one after another, skipping those already in their results file.

    python benchmarks/row_queue.py --list                          # the grid: what has run, what is missing
    python benchmarks/row_queue.py la:transmedseg:16:3 acdc:mean_teacher:3:2
    python benchmarks/row_queue.py --locks /tmp/row-locks ROWS...  # two queues on one machine share the locks
    python benchmarks/row_queue.py --stop-at 16:30 ROWS...         # train in pieces that end by 16:30

A row is ``DATASET:METHOD:LABELLED:SEED``: ``la`` or ``acdc``; a method of the results page (``supervised``,
``mean_teacher``, ``bcp_only``, ``transmedseg``, ``fixed_dynamic_pl``); labelled volumes (LA) or patients (ACDC);
a seed (the headline's are 1337, 2 and 3). Each row runs ``benchmarks/la_protocol.py`` with the protocol and the
configs its headline rows ran with (LA: ``cpu-v2``, with the pseudo-label diagnostic for the semi-supervised
methods; ACDC: ``cpu``, TransMedSeg's and BCP's rows named by ``self_training_schedule.yaml``), so it lands under
the same method name as its other seeds.

A row already in the results file is skipped; a row that fails is reported and the queue goes on. With
``--locks``, each row taken makes a folder there first and a row whose folder exists is skipped, so several queues
(one per core) never train the same row. A queue that is killed leaves its row's lock: remove it and queue the row
again, and the row resumes from its checkpoint. ``--root`` sends results, runs and prepared data to another
checkout, so that a queue can run the code of a frozen copy while work goes on in the checkout that keeps the
results.

``--stop-at HH:MM`` trains a row that cannot finish by then as a piece: training saves its checkpoint and stops
before that time (``la_protocol.py --max-wall-s``), the row's lock is released, and queueing the row again later
continues it from the checkpoint, its time summed over the pieces. A row is not started with less than
``MIN_PIECE_S`` left.
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.headline import DATASETS  # noqa: E402
from benchmarks.la_protocol import method_name, read_rows, trained_iterations  # noqa: E402

#: per dataset: the headline's protocol, and each method's bundle with the configs its rows merge (their order names
#: the row); the label counts and the results file are the headline's own (``benchmarks.headline.DATASETS``)
HEADLINE = {
    "la": {"protocol": "cpu-v2", "methods": {
        "supervised": ("supervised_la", ()),
        "mean_teacher": ("mean_teacher_la", ("pseudo_label_quality.yaml",)),
        "bcp_only": ("transmedseg_la", ("pseudo_label_quality.yaml", "ablation_bcp_only.yaml")),
        "transmedseg": ("transmedseg_la", ("pseudo_label_quality.yaml",)),
        "fixed_dynamic_pl": ("fixed_dynamic_pl_la", ("pseudo_label_quality.yaml",))}},
    "acdc": {"protocol": "cpu", "methods": {
        "supervised": ("supervised_acdc", ()),
        "mean_teacher": ("mean_teacher_acdc", ()),
        "bcp_only": ("transmedseg_acdc", ("ablation_bcp_only.yaml", "self_training_schedule.yaml")),
        "transmedseg": ("transmedseg_acdc", ("self_training_schedule.yaml",)),
        "fixed_dynamic_pl": ("fixed_dynamic_pl_acdc", ())}},
}
SEEDS = (1337, 2, 3)
#: with --stop-at: the time kept for evaluating a row that finishes training, and the shortest piece worth starting
EVAL_MARGIN_S = 300
MIN_PIECE_S = 900


def results_file(dataset: str, root: Path) -> Path:
    """The headline's results file of ``dataset`` under ``root``: ``docs/results/<file>``."""
    return root / "docs" / "results" / DATASETS[dataset]["results"]


@dataclass(frozen=True)
class Row:
    """One result row: ``dataset`` (``la``, ``acdc``), ``method`` (a key of ``HEADLINE[dataset]["methods"]``),
    ``labeled`` volumes or patients, ``seed``."""

    dataset: str
    method: str
    labeled: int
    seed: int

    @classmethod
    def parse(cls, text: str) -> "Row":
        """``DATASET:METHOD:LABELLED:SEED``; ValueError naming the part that is wrong."""
        parts = text.split(":")
        if len(parts) != 4:
            raise ValueError(f"{text!r}: expected DATASET:METHOD:LABELLED:SEED, e.g. la:transmedseg:16:3")
        dataset, method, labeled, seed = parts
        if dataset not in HEADLINE:
            raise ValueError(f"{text!r}: dataset {dataset!r} is not one of {', '.join(HEADLINE)}")
        if method not in HEADLINE[dataset]["methods"]:
            raise ValueError(f"{text!r}: method {method!r} is not one of {', '.join(HEADLINE[dataset]['methods'])}")
        if not labeled.isdigit() or int(labeled) < 1:
            raise ValueError(f"{text!r}: labelled count {labeled!r} is not a positive whole number")
        if not seed.isdigit():
            raise ValueError(f"{text!r}: seed {seed!r} is not a whole number")
        return cls(dataset, method, int(labeled), int(seed))

    def __str__(self) -> str:
        return f"{self.dataset}:{self.method}:{self.labeled}:{self.seed}"

    @property
    def bundle(self) -> str:
        return HEADLINE[self.dataset]["methods"][self.method][0]

    @property
    def configs(self) -> tuple[str, ...]:
        return HEADLINE[self.dataset]["methods"][self.method][1]

    @property
    def name(self) -> str:
        """The row's method as its results file names it, e.g. ``transmedseg_la+ablation_bcp_only@seed2``."""
        return method_name(self.bundle, list(self.configs), self.seed)

    def results_file(self, root: Path) -> Path:
        return results_file(self.dataset, root)

    def run_folder(self, root: Path) -> Path:
        """The row's training folder under ``root``: ``runs/<results file's stem>/<name>_l<labelled>``, as
        ``la_protocol.py`` names it by default."""
        return root / "runs" / self.results_file(root).stem / f"{self.name}_l{self.labeled}"

    def command(self, root: Path, max_wall_s: float | None = None) -> list[str]:
        """The ``la_protocol.py`` command that trains and evaluates this row, its outputs under ``root`` (the runs in
        ``runs/<results file's stem>``, as ``la_protocol.py`` names them by default); with ``max_wall_s``, training
        stops at its checkpoint after that many seconds (a piece; the same command continues it)."""
        results = self.results_file(root)
        return [sys.executable, str(ROOT / "benchmarks" / "la_protocol.py"), "--dataset", self.dataset,
                "--protocol", HEADLINE[self.dataset]["protocol"], "--bundles", self.bundle,
                *(part for c in self.configs for part in ("--config", f"{self.bundle}={c}")),
                "--labeled", str(self.labeled), "--seed", str(self.seed),
                "--results", str(results), "--runs-root", str(self.run_folder(root).parent),
                "--data-root", str(root / "data"),
                *(("--max-wall-s", f"{max_wall_s:.0f}") if max_wall_s is not None else ())]


def read_results(path: Path) -> list[dict]:
    """The rows of a results file; none when it does not exist yet (the first row makes it)."""
    return read_rows(path) if path.exists() else []


def has_run(row: Row, rows: list[dict]) -> dict | None:
    """The result of ``row`` among ``rows``, or None."""
    return next((r for r in rows if r.get("method") == row.name and int(r["labeled"]) == row.labeled), None)


def checkpoint_state(run: Path) -> str:
    """``"; checkpoint at N iterations"`` for a run folder with a checkpoint (a row trained in pieces, killed, or
    training now), ``"; checkpoint unreadable"`` for one that cannot be read, else ``""``."""
    if not (run / "models" / "checkpoint.pt").is_file():
        return ""
    try:
        return f"; checkpoint at {trained_iterations(run)} iterations"
    except Exception:  # noqa: BLE001 - any unreadable file: --list goes on
        return "; checkpoint unreadable"


def grid(root: Path) -> str:
    """The headline's rows (every method, label count and seed of ``SEEDS``) as a table: the validation Dice of
    those that have run, ``missing`` otherwise with the longest training CPU minutes of its other seeds (a guide to
    what fits a session; pieces are summed, except those killed before they were counted, and the processors
    differ: ``trained_on``) and the iterations its checkpoint holds where it has one (:func:`checkpoint_state`)."""
    lines = ["| row | Dice % | train CPU min | processor |", "|---|---|---|---|"]
    for dataset, spec in HEADLINE.items():
        results = read_results(results_file(dataset, root))
        for labeled in DATASETS[dataset]["labeled"]:
            for method in spec["methods"]:
                rows = [Row(dataset, method, labeled, s) for s in SEEDS]
                runs = [has_run(r, results) for r in rows]
                cpu = [r["train_cpu_s"] / 60 for r in runs if r and r.get("train_cpu_s")]
                for row, run in zip(rows, runs):
                    if run:
                        lines.append(f"| {row} | {100 * run['metrics']['dice']:.2f} | {run['train_cpu_s'] / 60:.0f} "
                                     f"| {', '.join(run.get('trained_on') or ['not recorded'])} |")
                    else:
                        guess = f"up to {max(cpu):.0f} (other seeds)" if cpu else "–"
                        state = "missing" + checkpoint_state(row.run_folder(root))
                        lines.append(f"| {row} | {state} | {guess} | |")
    return "\n".join(lines) + "\n"


def parse_stop_at(text: str, now: datetime.datetime) -> datetime.datetime:
    """``HH:MM`` as the next such time after ``now``: today, or tomorrow once it has passed today (a session that
    runs past midnight); ValueError for anything but a clock time."""
    try:
        hour, minute = (int(part) for part in text.split(":"))
        at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    except ValueError:
        raise ValueError(f"--stop-at {text!r}: expected HH:MM, e.g. 16:30") from None
    return at if at > now else at + datetime.timedelta(days=1)


def run_queue(rows: list[Row], root: Path, locks: Path | None, runner=subprocess.run,
              stop_at: float | None = None, clock=time.time) -> int:
    """Run each row not yet in its results file (and not locked by another queue); the number that failed.

    ``stop_at`` (seconds since the epoch): each row's training gets ``--max-wall-s`` of the time left minus
    ``EVAL_MARGIN_S`` (which also covers the training process's start and the iteration and validation that may
    run past the limit before it saves), and no row starts with less than ``MIN_PIECE_S`` left; a row that ends
    without a result (a piece) is left at its checkpoint with its lock released."""
    failed = 0
    for row in rows:
        if has_run(row, read_results(row.results_file(root))):
            print(f"{row}: done ({row.name} is in {row.results_file(root).name})", flush=True)
            continue
        max_wall_s = None
        if stop_at is not None:
            max_wall_s = stop_at - clock() - EVAL_MARGIN_S
            if max_wall_s < MIN_PIECE_S:
                left = ", ".join(str(r) for r in rows[rows.index(row):])
                print(f"{row}: under {MIN_PIECE_S // 60} min left before --stop-at; not started ({left}: queue "
                      "again later)", flush=True)
                break
        lock = None
        if locks is not None:
            lock = locks / str(row).replace(":", "_")
            try:
                lock.mkdir(parents=True)
            except FileExistsError:
                print(f"{row}: taken by another queue (lock {lock})", flush=True)
                continue
        print(f"{row}: training {row.name}" + (f" for at most {max_wall_s / 60:.0f} min" if max_wall_s else ""),
              flush=True)
        if runner(row.command(root, max_wall_s), cwd=ROOT).returncode:
            failed += 1
            print(f"{row}: failed (its error is above); the queue goes on", flush=True)
        elif not has_run(row, read_results(row.results_file(root))):
            print(f"{row}: stopped at its checkpoint" + (" before --stop-at" if stop_at is not None else "")
                  + "; queue it again to continue", flush=True)
            if lock is not None:
                try:
                    lock.rmdir()  # a piece: any queue may continue the row
                except OSError as e:
                    print(f"{row}: its lock {lock} could not be released ({e}); remove it to queue the row again",
                          flush=True)
    return failed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("rows", nargs="*", help="DATASET:METHOD:LABELLED:SEED, e.g. la:transmedseg:16:3")
    p.add_argument("--list", action="store_true", help="print the headline's rows, run and missing, and exit")
    p.add_argument("--locks", type=Path, help="a folder shared by the queues of one machine: each row taken once")
    p.add_argument("--stop-at", metavar="HH:MM",
                   help="a clock time (the next one: tomorrow's once it has passed today): rows that cannot "
                        "finish by then train as pieces that stop at their checkpoint before it")
    p.add_argument("--root", type=Path, default=ROOT,
                   help="the checkout whose docs/results, runs/ and data/ receive the rows (default this one)")
    args = p.parse_args(argv)
    args.root = args.root.resolve()  # la_protocol.py runs in this checkout: a relative --root means the same there
    if args.list:
        print(grid(args.root), end="")
        return 0
    if not args.rows:
        p.error("name the rows to run (DATASET:METHOD:LABELLED:SEED), or --list")
    try:
        rows = [Row.parse(text) for text in args.rows]
        stop_at = parse_stop_at(args.stop_at, datetime.datetime.now()) if args.stop_at else None
    except ValueError as e:
        p.error(str(e))
    if stop_at is not None:
        print(f"pieces stop before {stop_at:%Y-%m-%d %H:%M}", flush=True)
        stop_at = stop_at.timestamp()
    return 1 if run_queue(rows, args.root, args.locks, stop_at=stop_at) else 0


if __name__ == "__main__":
    sys.exit(main())
