"""Channels-last training against the contiguous layout: the same losses, and the time per iteration.

    python benchmarks/channels_last.py                    # supervised_la and transmedseg_la, 30 iterations each
    python benchmarks/channels_last.py --bundles fixed_dynamic_pl_la --iterations 20

Each bundle trains twice on the LA-1.25mm data (``cpu_protocol.yaml``, seed 1337), once with ``--channels_last
False`` and once with ``True``, for ``--iterations`` iterations. The per-iteration training losses of the two runs are
compared (the accuracy check: the arithmetic is the same, so they must match to rounding), and each run's CPU
seconds per iteration are measured around its process. Results: ``docs/results/channels_last.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.la_protocol import run_cmd, scalar_curves  # noqa: E402
from benchmarks.results_files import write_results  # noqa: E402
from ssmis.bundle.layout import config_files  # noqa: E402


def train(bundle: str, data: Path, out: Path, iterations: int, channels_last: bool) -> dict:
    """One short training run; its losses and its CPU seconds per iteration."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           repr(config_files(ROOT / "bundles" / bundle, "train", "cpu_protocol")),
           "--meta_file", str(ROOT / "bundles" / bundle / "configs" / "metadata.json"),
           "--bundle_root", str(ROOT / "bundles" / bundle), "--dataset_dir", str(data), "--output_dir", str(out),
           "--num_iterations", str(iterations), "--val_interval", str(iterations),
           "--channels_last", str(channels_last)]
    wall, _, usage = run_cmd(cmd, out / "train.log")
    steps, losses = scalar_curves(out / "logs", lambda tag: tag == "loss").get("loss", ([], []))
    return {"channels_last": channels_last, "losses": losses, "wall_s": wall, "cpu_s": usage["cpu_s"],
            "steal": usage["steal"], "cpu_s_per_iteration": usage["cpu_s"] / iterations}


def report(r: dict) -> str:
    lines = ["# Channels-last training", "", f"`python benchmarks/channels_last.py` on {r['date']}, "
             f"{r['iterations']} iterations per run, LA-1.25mm CPU protocol; CPU seconds per iteration include the "
             "process start, the data loading and one validation.", "",
             "| bundle | CPU s / it, contiguous | CPU s / it, channels-last | speed-up | largest loss difference |",
             "|---|---|---|---|---|"]
    for b in r["bundles"]:
        lines.append(f"| `{b['bundle']}` | {b['contiguous']['cpu_s_per_iteration']:.2f} | "
                     f"{b['channels_last']['cpu_s_per_iteration']:.2f} | {b['speedup']:.2f}x | "
                     f"{b['max_loss_difference']:.2e} (losses {b['loss_range'][0]:.3f}–{b['loss_range'][1]:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundles", nargs="+", default=["supervised_la", "transmedseg_la"])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "la_1.25mm_l8",
                   help="prepared LA-1.25mm data (python -m ssmis.data prepare-la --spacing 1.25 ...)")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "results" / "channels_last.json")
    args = p.parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in args.bundles:
            runs = {name: train(bundle, args.data, Path(tmp) / bundle / name, args.iterations, flag)
                    for name, flag in (("contiguous", False), ("channels_last", True))}
            a, b = runs["contiguous"]["losses"], runs["channels_last"]["losses"]
            if len(a) != args.iterations or len(b) != args.iterations:
                raise RuntimeError(f"{bundle}: expected {args.iterations} losses, got {len(a)} and {len(b)}")
            diff = max(abs(x - y) for x, y in zip(a, b))
            speedup = runs["contiguous"]["cpu_s_per_iteration"] / runs["channels_last"]["cpu_s_per_iteration"]
            results.append({"bundle": bundle, **runs, "max_loss_difference": diff, "speedup": speedup,
                            "loss_range": [min(a), max(a)]})
            print(f"{bundle}: {speedup:.2f}x, largest loss difference {diff:.2e}", flush=True)
    r = {"date": time.strftime("%Y-%m-%d"), "iterations": args.iterations, "bundles": results}
    print(write_results(r, args.output, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
