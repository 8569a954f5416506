"""One training setting, two values: the losses of both runs side by side, and the time per iteration of each.

    python benchmarks/training_setting.py                 # channels_last False vs True: supervised_la, transmedseg_la
    python benchmarks/training_setting.py --setting teacher_precision --values float32 bfloat16 \
        --bundles fixed_dynamic_pl_la --iterations 20

Each bundle trains twice on the LA-1.25mm data (``cpu_protocol.yaml``, seed 1337), once with ``--<setting>`` set to
each of the two ``--values``, for ``--iterations`` iterations. The per-iteration training losses of the two runs are
compared (the accuracy check: a change that keeps the arithmetic gives losses equal to rounding; one that lowers the
precision of a pass shows how far the losses move), and each run's CPU seconds per iteration are measured around its
process. Results: ``docs/results/<setting>.{json,md}``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_model import cpu_model  # noqa: E402
from benchmarks.la_protocol import run_cmd, scalar_curves  # noqa: E402
from benchmarks.results_files import write_results  # noqa: E402
from ssmis.bundle.layout import config_files  # noqa: E402

V1_CONFIGS = ("cpu_protocol", "cpu_protocol_v1")  # LA-1.25mm v1, the protocol of the recorded rows


def train(bundle: str, data: Path, out: Path, iterations: int, setting: str, value: str,
          configs: tuple[str, ...] = V1_CONFIGS) -> dict:
    """One short training run (``train`` + ``configs``); its losses and its CPU seconds per iteration."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           repr(config_files(ROOT / "bundles" / bundle, "train", *configs)),
           "--meta_file", str(ROOT / "bundles" / bundle / "configs" / "metadata.json"),
           "--bundle_root", str(ROOT / "bundles" / bundle), "--dataset_dir", str(data), "--output_dir", str(out),
           "--num_iterations", str(iterations), "--val_interval", str(iterations),
           f"--{setting}", value]
    wall, _, usage = run_cmd(cmd, out / "train.log")
    steps, losses = scalar_curves(out / "logs", lambda tag: tag == "loss").get("loss", ([], []))
    return {setting: value, "losses": losses, "wall_s": wall, "cpu_s": usage["cpu_s"],
            "steal": usage["steal"], "cpu_s_per_iteration": usage["cpu_s"] / iterations}


def report(r: dict) -> str:
    a, b = r["values"]
    command = r.get("command", "python benchmarks/training_setting.py")
    configs = " + ".join(f"`{c}.yaml`" for c in r.get("configs", V1_CONFIGS))
    machine = f" on {r['cpu']}" if r.get("cpu") else ""
    lines = [f"# Training with `{r['setting']}` {a} and {b}", "", f"`{command}` on {r['date']}{machine}, "
             f"{r['iterations']} iterations per run, train.yaml + {configs}; CPU seconds per iteration include the "
             "process start, the data loading and one validation.", "",
             f"| bundle | CPU s / it, {a} | CPU s / it, {b} | speed-up | largest loss difference |",
             "|---|---|---|---|---|"]
    for row in r["bundles"]:
        runs = row["runs"]
        lines.append(f"| `{row['bundle']}` | {runs[a]['cpu_s_per_iteration']:.2f} | "
                     f"{runs[b]['cpu_s_per_iteration']:.2f} | {row['speedup']:.2f}x | "
                     f"{row['max_loss_difference']:.2e} "
                     f"(losses {row['loss_range'][0]:.3f}–{row['loss_range'][1]:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundles", nargs="+", default=["supervised_la", "transmedseg_la"])
    p.add_argument("--data", type=Path, default=ROOT / "data" / "la_1.25mm_l8",
                   help="prepared LA-1.25mm data (python -m ssmis.data prepare-la --spacing 1.25 ...)")
    p.add_argument("--setting", default="channels_last", help="a key of train.yaml (default: channels_last)")
    p.add_argument("--values", nargs=2, default=["False", "True"], metavar=("BEFORE", "AFTER"),
                   help="its two values, as on the command line (default: False True); speed-up is BEFORE / AFTER")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--configs", nargs="+", default=list(V1_CONFIGS),
                   help=f"configs merged after train.yaml (default: {' '.join(V1_CONFIGS)}, the LA-1.25mm v1 "
                        "protocol of the recorded rows; cpu_protocol alone for v2)")
    p.add_argument("--output", type=Path, default=None, help="default: docs/results/<setting>.json")
    args = p.parse_args(argv)
    output = args.output or ROOT / "docs" / "results" / f"{args.setting}.json"
    before, after = args.values
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for bundle in args.bundles:
            runs = {v: train(bundle, args.data, Path(tmp) / bundle / v, args.iterations, args.setting, v,
                           tuple(args.configs))
                    for v in (before, after)}
            a, b = runs[before]["losses"], runs[after]["losses"]
            if len(a) != args.iterations or len(b) != args.iterations:
                raise RuntimeError(f"{bundle}: expected {args.iterations} losses, got {len(a)} and {len(b)}")
            diff = max(abs(x - y) for x, y in zip(a, b))
            speedup = runs[before]["cpu_s_per_iteration"] / runs[after]["cpu_s_per_iteration"]
            results.append({"bundle": bundle, "runs": runs, "max_loss_difference": diff, "speedup": speedup,
                            "loss_range": [min(a), max(a)]})
            print(f"{bundle}: {speedup:.2f}x, largest loss difference {diff:.2e}", flush=True)
    command = " ".join(["python benchmarks/training_setting.py", *(sys.argv[1:] if argv is None else argv)])
    r = {"date": time.strftime("%Y-%m-%d"), "command": command, "cpu": cpu_model(), "setting": args.setting,
         "values": [before, after], "iterations": args.iterations, "configs": list(args.configs),
         "bundles": results}
    print(write_results(r, output, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
