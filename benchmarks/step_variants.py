"""One training step of the CPU-protocol network under each speed-up #24 lists: which ones pay on this machine.

    python benchmarks/step_variants.py                    # BasicUNet (8-128), batch 4, 56x56x40, every variant
    python benchmarks/step_variants.py --variants float32 compile --steps 5

A step is forward, cross-entropy, backward and an SGD update on a fixed random batch. Each variant runs in its own
process (thread settings and compiled code do not leak) from the same initial weights:

- ``float32``: contiguous weights, torch's default threads (the reference);
- ``channels_last``: channels-last weights (the bundles' CPU default);
- ``bfloat16``: channels-last + ``torch.autocast`` to bfloat16 for the forward pass;
- ``compile``: channels-last + ``torch.compile`` (inductor, default mode); its first step includes the compilation,
  from an empty inductor cache (a temporary ``TORCHINDUCTOR_CACHE_DIR``);
- ``one_thread``: channels-last on one thread (``torch.set_num_threads(1)``), against torch's default;
- ``two_processes``: two ``one_thread`` processes at once (two benchmark rows side by side, one thread each); its
  step time is the seconds per step of the pair together (the mean of their medians, halved), its first step the
  slower process's.

Reported: median step time over ``--steps`` after two warm-up steps, the first step's time, the speed-up against
``float32``, and the loss of the first step against ``float32``'s (the same weights and batch: a check that the
variant computes the same thing). Results: ``docs/results/step_variants.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_steal import StealMeter, format_steal  # noqa: E402
from benchmarks.results_files import write_results  # noqa: E402

VARIANTS = ["float32", "channels_last", "bfloat16", "compile", "one_thread", "two_processes"]


def run_variant(name: str, batch: int, patch: list[int], steps: int) -> dict:
    """Step times and first loss of one variant, in this process."""
    import torch
    from monai.networks.nets import BasicUNet

    from ssmis.networks import channels_last

    if name == "one_thread":
        torch.set_num_threads(1)
    torch.manual_seed(0)
    net = BasicUNet(3, 1, 2, features=(8, 16, 32, 64, 128, 8))
    if name != "float32":
        net = channels_last(net)
    model = torch.compile(net) if name == "compile" else net
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, *patch, generator=g)
    y = torch.randint(0, 2, (batch, *patch), generator=g)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    times, losses = [], []
    for _ in range(steps + 2):
        t0 = time.perf_counter()
        if name == "bfloat16":
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
        else:
            out = model(x)
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(float(loss))
    return {"median_s": statistics.median(times[2:]), "first_s": times[0], "first_loss": losses[0],
            "threads": torch.get_num_threads()}


def report(r: dict) -> str:
    ref, cl = r["variants"].get("float32"), r["variants"].get("channels_last")
    lines = ["# One training step under each CPU speed-up", "",
             f"`python benchmarks/step_variants.py` on {r['date']}: "
             "MONAI BasicUNet (8–128 features, the CPU-protocol "
             f"network), batch {r['batch']}, patch {r['patch']}, {r['steps']} timed steps each; host steal "
             f"{format_steal(r['steal'])}.", "",
             "| variant | median step | first step | speed-up vs float32 | vs channels-last "
             "| first loss − float32's |",
             "|---|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        speed = f"{ref['median_s'] / v['median_s']:.2f}x" if ref else "-"
        vs_cl = f"{cl['median_s'] / v['median_s']:.2f}x" if cl else "-"
        diff = f"{v['first_loss'] - ref['first_loss']:+.1e}" if ref else "-"
        label = f"{name} ({v['threads']} thread{'s' if v['threads'] > 1 else ''}" + (
            f" each; {' and '.join(f'{s:.3f}' for s in v['each_median_s'])} s per step side by side)"
            if "each_median_s" in v else ")")
        lines.append(f"| {label} | {v['median_s']:.3f} s | {v['first_s']:.1f} s | {speed} | {vs_cl} | {diff} |")
    lines += ["", "`compile`'s first step includes inductor's compilation, from an empty cache."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--batch", type=int, default=4, help="the v2 protocol's batch (default 4)")
    p.add_argument("--patch", nargs=3, type=int, default=[56, 56, 40])
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "results" / "step_variants.json")
    p.add_argument("--_variant", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._variant:
        print(json.dumps(run_variant(args._variant, args.batch, args.patch, args.steps)))
        return 0
    results = {}

    cache = tempfile.TemporaryDirectory()  # compile's: empty, so its first step includes the whole compilation

    def start(name: str) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--batch", str(args.batch), "--patch", *map(str, args.patch),
               "--steps", str(args.steps), "--_variant", name]
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache.name} if name == "compile" else os.environ.copy()
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env)

    def result(proc: subprocess.Popen) -> dict:
        out, _ = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"a variant failed: {proc.args}")
        return json.loads(out.strip().splitlines()[-1])

    with StealMeter() as steal:
        for name in args.variants:
            if name == "two_processes":
                pair = [result(p) for p in [start("one_thread"), start("one_thread")]]
                results[name] = {"median_s": statistics.mean(r["median_s"] for r in pair) / 2,
                                 "first_s": max(r["first_s"] for r in pair), "first_loss": pair[0]["first_loss"],
                                 "threads": 1, "each_median_s": [r["median_s"] for r in pair]}
            else:
                results[name] = result(start(name))
            print(name, results[name], flush=True)
    cache.cleanup()
    r = {"date": time.strftime("%Y-%m-%d"), "batch": args.batch, "patch": args.patch, "steps": args.steps,
         "steal": steal.fraction, "variants": results}
    print(write_results(r, args.output, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
