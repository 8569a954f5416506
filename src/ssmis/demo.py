"""``make demo``: synthetic data, a short CPU training run of a bundle, evaluation, mean Dice and a PNG overlay.

Every step is a real bundle command, printed before it runs, so the demo doubles as a walk-through:

    python -m ssmis.demo --output demo [--bundle supervised_la] [--iterations 200]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

from .bundle.layout import config_files

ROOT = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], log: Path | None = None) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    if log is None:
        subprocess.run(cmd, check=True)
        return
    with open(log, "w") as f:
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"step failed (exit {p.returncode}); full log: {log}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssmis.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=Path("demo"), help="working folder (default ./demo)")
    p.add_argument("--bundle", default="transmedseg_la", help="bundle under bundles/ (default transmedseg_la)")
    p.add_argument("--iterations", type=int, default=150,
                   help="training iterations (default 150; rounded up to a multiple of 3: three validations)")
    p.add_argument("--bundles-dir", type=Path, default=ROOT / "bundles", help="folder holding the bundles")
    args = p.parse_args(argv)

    out = args.output.absolute()
    bundle = (args.bundles_dir / args.bundle).absolute()
    if not (bundle / "configs" / "train.yaml").is_file():
        raise SystemExit(f"error: no bundle at {bundle} (configs/train.yaml missing)")
    out.mkdir(parents=True, exist_ok=True)
    data, run = out / "data", out / "run"
    py = sys.executable
    t0 = time.time()
    print("[1/3] synthetic 3D dataset", flush=True)
    _run([py, "-m", "ssmis.data", "demo", "--output", str(data)])
    overrides = ["--bundle_root", str(bundle), "--meta_file", str(bundle / "configs" / "metadata.json"),
                 "--dataset_dir", str(data), "--output_dir", str(run)]
    train = repr(config_files(bundle, "train", "cpu_protocol"))
    evaluate = repr(config_files(bundle, "train", "cpu_protocol", "evaluate"))
    # three validations, so that one falls in the CPU protocol's pre-training (5/12 of the run), whose best state
    # self-training starts from; the bundle trains whole validation intervals, hence the rounding
    val_interval = max(1, -(-args.iterations // 3))
    iterations = 3 * val_interval
    print(f"[2/3] training {args.bundle} for {iterations} iterations (log: {run / 'train.log'})", flush=True)
    run.mkdir(parents=True, exist_ok=True)
    _run([py, "-m", "monai.bundle", "run", "--config_file", train, *overrides,
          "--num_iterations", str(iterations), "--val_interval", str(val_interval)], log=run / "train.log")
    print("[3/3] evaluating on the validation cases", flush=True)
    _run([py, "-m", "monai.bundle", "run", "--config_file", evaluate, *overrides], log=run / "evaluate.log")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    pngs = sorted((run / "eval").glob("overlay_*.png"))
    print(f"\nmean Dice on {len(metrics['cases'])} validation cases: {metrics['mean']['dice']:.4f}")
    print(f"metrics: {run / 'eval' / 'metrics.csv'}")
    for png in pngs:
        print(f"overlay: {png}")
    print(f"TensorBoard: tensorboard --logdir {run / 'logs'}")
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
