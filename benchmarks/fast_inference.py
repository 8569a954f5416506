"""The fast inference path against the float32 one: the same labels, and how much faster.

    python benchmarks/fast_inference.py                      # every LA bundle that ships weights, then the V-Net
    python benchmarks/fast_inference.py --bundles supervised_la --repeats 3

For each bundle with shipped weights (``weights/model.pt``), ``inference.yaml`` (+ ``cpu_protocol`` and
``shipped_weights``) segments the validation volumes of ``--data`` twice: the reference path (``channels_last false``,
``sw_precision float32``) and the fast one (``channels_last true``, ``sw_precision bfloat16``; the defaults on a CPU
with bfloat16 instructions). It reports the Dice between the two label maps per volume (the goal: at least 0.99),
the Dice of each against the ground truth, and the time of each run. Then it times the literature V-Net (untrained:
no V-Net weights exist yet) on one full-resolution LA volume (0.625 mm) with each combination, median of
``--repeats``. Results: ``docs/results/fast_inference.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_steal import StealMeter  # noqa: E402
from benchmarks.results_files import write_results  # noqa: E402
from ssmis.bundle.layout import config_files  # noqa: E402

VARIANTS = {"float32": {"channels_last": False, "sw_precision": "float32"},
            "channels_last": {"channels_last": True, "sw_precision": "float32"},
            "bfloat16": {"channels_last": False, "sw_precision": "bfloat16"},
            "fast": {"channels_last": True, "sw_precision": "bfloat16"}}


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def segment(bundle: str, images: list[str], out: Path, variant: dict) -> tuple[dict[str, np.ndarray], float, float]:
    """Label maps ``{image name: [*S]}`` from the bundle's inference workflow with ``variant``'s settings, and the
    run's wall and CPU seconds."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(ROOT / "bundles" / bundle, "inference", "cpu_protocol", "shipped_weights"))
    parser.update({"bundle_root": str(ROOT / "bundles" / bundle), "output_dir": str(out),
                   "datalist": [{"image": i} for i in images], "device": "$torch.device('cpu')", **variant})
    evaluator = parser.get_parsed_content("evaluator")
    t0, c0 = time.perf_counter(), _cpu_s()
    evaluator.run()
    wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
    segs = {}
    for image in images:
        name = Path(image).name.replace(".nii.gz", "")
        segs[name] = np.asarray(nib.load(str(out / name / f"{name}_seg.nii.gz")).dataobj)
    return segs, wall, cpu


def compare_bundle(bundle: str, data: Path) -> dict:
    datalist = json.loads((data / "datalist.json").read_text())
    records = datalist["validation"]
    images = [str(data / r["image"]) for r in records]
    labels = {Path(r["image"]).name.replace(".nii.gz", ""): np.asarray(nib.load(str(data / r["label"])).dataobj)
              for r in records}
    with tempfile.TemporaryDirectory() as tmp:
        ref, ref_wall, ref_cpu = segment(bundle, images, Path(tmp) / "ref", VARIANTS["float32"])
        fast, fast_wall, fast_cpu = segment(bundle, images, Path(tmp) / "fast", VARIANTS["fast"])
    cases = [{"case": n, "dice_fast_vs_reference": _dice(fast[n], ref[n]), "dice_reference": _dice(ref[n], labels[n]),
              "dice_fast": _dice(fast[n], labels[n])} for n in sorted(ref)]
    return {"bundle": bundle, "volumes": len(cases), "cases": cases,
            "min_dice_fast_vs_reference": min(c["dice_fast_vs_reference"] for c in cases),
            "mean_dice_reference": statistics.mean(c["dice_reference"] for c in cases),
            "mean_dice_fast": statistics.mean(c["dice_fast"] for c in cases),
            "reference_s": ref_wall, "fast_s": fast_wall, "reference_cpu_s": ref_cpu, "fast_cpu_s": fast_cpu}


def time_vnet(volume: np.ndarray, repeats: int) -> dict:
    """Median seconds of the V-Net's sliding-window inference on ``volume`` with each variant (untrained weights)."""
    import torch

    from ssmis.inferers import SoftmaxSlidingWindowInferer
    from ssmis.networks import VNet, channels_last

    torch.manual_seed(0)
    x = torch.as_tensor(volume, dtype=torch.float32)[None, None]
    out = {}
    for name, v in VARIANTS.items():
        net = VNet(spatial_dims=3, in_channels=1, out_channels=2, features=16).eval()
        net = channels_last(net) if v["channels_last"] else net
        inferer = SoftmaxSlidingWindowInferer(roi_size=(112, 112, 80), sw_batch_size=4, overlap=0.5,
                                              precision=v["sw_precision"])
        times, cpus = [], []
        with torch.inference_mode():
            inferer(x, net)  # warm-up (oneDNN picks its kernels)
            for _ in range(repeats):
                t0, c0 = time.perf_counter(), _cpu_s()
                inferer(x, net)
                times.append(time.perf_counter() - t0)
                cpus.append(_cpu_s() - c0)
        out[name] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                     "median_cpu_s": statistics.median(cpus)}
    return out


def report(r: dict) -> str:
    lines = ["# Fast inference against the float32 path", "",
             f"`python benchmarks/fast_inference.py` on {r['date']}; host steal "
             f"{'unknown' if r['steal'] is None else format(r['steal'] * 100, '.0f') + ' %'}; "
             f"bfloat16 instructions: {r['bfloat16_is_fast']}.", "",
             "Shipped LA-1.25mm weights on the 8 validation volumes (1.25 mm), through each bundle's `inference.yaml`:",
             "", "| bundle | min Dice fast vs float32 | Dice vs truth, float32 | Dice vs truth, fast "
                 "| float32 run | fast run |",
             "|---|---|---|---|---|---|"]
    for b in r["bundles"]:
        lines.append(f"| `{b['bundle']}` | {b['min_dice_fast_vs_reference']:.4f} | {b['mean_dice_reference']:.4f} | "
                     f"{b['mean_dice_fast']:.4f} | {b['reference_s']:.1f} s | {b['fast_s']:.1f} s |")
    if r.get("vnet"):
        lines += ["", f"V-Net (untrained) on one full-resolution LA volume {r['vnet_volume']}, 112×112×80 windows, "
                  f"overlap 0.5, median of {r['repeats']}:", "",
                  "| variant | median | min / max | CPU time |", "|---|---|---|---|"]
        for name, v in r["vnet"].items():
            lines.append(f"| {name} | {v['median_s']:.2f} s | {v['min_s']:.2f} / {v['max_s']:.2f} s | "
                         f"{v['median_cpu_s']:.1f} s |")
        lines += ["", "The untrained V-Net's labels are not compared: with near-equal logits everywhere, any change of "
                  "rounding flips them (even channels-last float32). The label agreement above, on trained weights, "
                  "is the accuracy check."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--bundles", nargs="*", default=None, help="default: every LA bundle that ships weights")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "la_1.25mm_l8",
                   help="prepared LA-1.25mm data (python -m ssmis.data prepare-la --spacing 1.25 ...)")
    p.add_argument("--volume", type=Path, default=ROOT.parent / "shared" / "data" / "LA",
                   help="the raw LA data; its first case is the full-resolution volume timed (none: skip)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "results" / "fast_inference.json")
    args = p.parse_args(argv)
    from ssmis.inferers import bfloat16_is_fast

    bundles = args.bundles if args.bundles is not None else sorted(
        b.parent.parent.name for b in (ROOT / "bundles").glob("*_la/weights/model.pt"))
    with StealMeter() as steal:
        results = [compare_bundle(b, args.data) for b in bundles]
        for b in results:
            print(f"{b['bundle']}: min Dice fast vs float32 {b['min_dice_fast_vs_reference']:.4f}; "
                  f"{b['reference_s']:.1f} s -> {b['fast_s']:.1f} s", flush=True)
        vnet, shape = None, None
        if args.volume and (args.volume / "train.list").is_file():
            from ssmis.data.h5 import read_h5_volume

            case = (args.volume / "train.list").read_text().split()[0]
            volume, _ = read_h5_volume(args.volume / "volumes" / case / "mri_norm2.h5")
            shape = list(volume.shape)
            vnet = time_vnet(volume, args.repeats)
            for name, v in vnet.items():
                print(f"V-Net {name}: {v['median_s']:.2f} s", flush=True)
    r = {"date": time.strftime("%Y-%m-%d"), "steal": steal.fraction, "bfloat16_is_fast": bfloat16_is_fast(),
         "bundles": results, "vnet": vnet, "vnet_volume": shape, "repeats": args.repeats}
    print(write_results(r, args.output, report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
