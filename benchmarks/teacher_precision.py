"""Co-training's pseudo-labels with bfloat16 teacher passes against float32 ones, on real LA crops.

    python benchmarks/teacher_precision.py                  # fixed_dynamic_pl_la's shipped weights, LA-1.25mm data
    python benchmarks/teacher_precision.py --crops 2 --cases 8

The shipped pair of ``fixed_dynamic_pl_la`` (trained on LA-1.25mm) makes every pseudo-label of one co-training step
(each network's fixed one on the fixed crop, and its dynamic one from four shifted crops, COM) on random context
crops of the unlabelled volumes, once with ``teacher_precision: float32`` and once with ``bfloat16``, with the same
crops and shifts. It reports, per pseudo-label kind, the fraction of voxels whose label differs and the foreground
Dice between the two (the goal: at least 0.99), and the time of the gradient-free passes. Results:
``docs/results/teacher_precision_labels.{json,md}``. The training-loss check is
``benchmarks/training_setting.py --setting teacher_precision --values float32 bfloat16``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.results_files import write_results  # noqa: E402
from ssmis.bundle.layout import config_files  # noqa: E402

KINDS = ("fixed_sn1", "dynamic_sn1", "fixed_sn2", "dynamic_sn2")


def _dice(a, b) -> float:
    a, b = a > 0, b > 0
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def load_pair(bundle: str):
    """The bundle's two networks with its shipped weights, and its patch size."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(ROOT / "bundles" / bundle, "train", "cpu_protocol"))
    parser["bundle_root"] = str(ROOT / "bundles" / bundle)
    pair = parser.get_parsed_content("network_def")
    from ssmis.bundle.weights import read_state_dict

    pair.load_state_dict({k: v.float()
                          for k, v in read_state_dict(ROOT / "bundles" / bundle / "weights" / "model.pt").items()})
    from ssmis.networks import channels_last

    return channels_last(pair), list(parser.get_parsed_content("patch_size"))


def pseudo_labels(strategy, context):
    """Every pseudo-label of one step (``{kind: [B, *crop]}``) and the seconds its gradient-free passes took."""
    import torch

    sn1, sn2 = strategy.networks
    x_u = strategy.align_reference(context)
    t0 = time.perf_counter()
    p1 = strategy.fixed_prob(sn1, x_u)  # SN1's fixed label: a training pass in the step; here gradient-free
    p2 = strategy.fixed_prob(sn2, x_u)
    torch.manual_seed(7)
    d1 = strategy.dynamic_prob(sn1, context, p1)
    torch.manual_seed(8)
    d2 = strategy.dynamic_prob(sn2, context, p2)
    seconds = time.perf_counter() - t0
    return {k: p.argmax(1).numpy() for k, p in zip(KINDS, (p1, d1, p2, d2))}, seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default="fixed_dynamic_pl_la")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "la_1.25mm_l8",
                   help="prepared LA-1.25mm data (python -m ssmis.data prepare-la --spacing 1.25 ...)")
    p.add_argument("--cases", type=int, default=16, help="unlabelled volumes used (default 16)")
    p.add_argument("--crops", type=int, default=2, help="random context crops per volume, one batch (default 2)")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "results" / "teacher_precision_labels.json")
    args = p.parse_args(argv)
    import torch
    from monai.losses import DiceCELoss

    from ssmis.engines import CoTrainingStrategy
    from ssmis.transforms import context_size

    pair, patch = load_pair(args.bundle)
    pair.train()  # the CPU protocol's teacher_mode 'train' (instance norm: the batch does not matter)
    max_shift = [s // 4 for s in patch]
    ctx = context_size(patch, max_shift)
    strategies = {prec: CoTrainingStrategy(list(pair.nets), DiceCELoss(to_onehot_y=True, softmax=True), patch,
                                           max_shift, teacher_precision=prec) for prec in ("float32", "bfloat16")}
    records = json.loads((args.data / "datalist.json").read_text())["unlabeled"][: args.cases]
    rng = np.random.default_rng(0)
    per_kind = {k: {"differ": [], "dice": []} for k in KINDS}
    seconds = {prec: [] for prec in strategies}
    for record in records:
        volume = np.asarray(nib.load(str(args.data / record["image"])).dataobj, dtype=np.float32)
        pad = [(m, max(m, c - s - m)) for m, c, s in zip(max_shift, ctx, volume.shape)]
        volume = np.pad(volume, pad)
        crops = []
        for _ in range(args.crops):
            start = [int(rng.integers(0, s - c + 1)) for s, c in zip(volume.shape, ctx)]
            crops.append(volume[tuple(slice(a, a + c) for a, c in zip(start, ctx))])
        context = torch.as_tensor(np.stack(crops))[:, None]
        labels = {}
        for prec, strategy in strategies.items():
            labels[prec], s = pseudo_labels(strategy, context)
            seconds[prec].append(s)
        for k in KINDS:
            a, b = labels["float32"][k], labels["bfloat16"][k]
            per_kind[k]["differ"].append(float((a != b).mean()))
            per_kind[k]["dice"].append(_dice(a, b))
        print(f"{record['image']}: " + ", ".join(f"{k} {per_kind[k]['dice'][-1]:.4f}" for k in KINDS), flush=True)
    r = {"date": time.strftime("%Y-%m-%d"), "bundle": args.bundle, "volumes": len(records), "crops": args.crops,
         "patch": patch, "max_shift": max_shift,
         "kinds": {k: {"mean_differ": statistics.mean(v["differ"]), "max_differ": max(v["differ"]),
                       "mean_dice": statistics.mean(v["dice"]), "min_dice": min(v["dice"])}
                   for k, v in per_kind.items()},
         "seconds": {prec: statistics.median(v) for prec, v in seconds.items()}}
    print(write_results(r, args.output, report))
    return 0


def report(r: dict) -> str:
    lines = ["# Co-training pseudo-labels: bfloat16 teacher passes against float32", "",
             f"`python benchmarks/teacher_precision.py` on {r['date']}: `{r['bundle']}`'s shipped weights, "
             f"{r['volumes']} unlabelled LA-1.25mm volumes, {r['crops']} random context crops each (patch "
             f"{r['patch']}, shifts up to {r['max_shift']}), the same crops and shifts for both precisions.", "",
             "| pseudo-label | voxels that differ, mean / max | foreground Dice bf16 vs fp32, mean / min |",
             "|---|---|---|"]
    for k, v in r["kinds"].items():
        lines.append(f"| {k} | {100 * v['mean_differ']:.3f} % / {100 * v['max_differ']:.3f} % | "
                     f"{v['mean_dice']:.4f} / {v['min_dice']:.4f} |")
    s = r["seconds"]
    lines += ["", f"Gradient-free passes of one step (median over volumes): float32 {s['float32']:.2f} s, bfloat16 "
              f"{s['bfloat16']:.2f} s ({s['float32'] / s['bfloat16']:.2f}x). These include SN1's fixed crop, which "
              "training takes from SN1's own training pass instead (`teacher_mode: train`)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
