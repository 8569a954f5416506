"""MONAI Label app timings: inference latency on a full-resolution LA volume, and train-to-served time.

    python benchmarks/monailabel_app.py --weights transmedseg_la=runs/la_1.25mm/transmedseg_la_l8/models/model.pt

1. **Infer latency.** One LA training volume at its native 0.625 mm goes into a fresh datastore; the app is
   started with ``--conf extra_config cpu_protocol.yaml`` and the given weights; ``/infer/<model>`` is called
   ``--repeats`` times through ``MONAILabelClient`` (median, min, max). Beside it: the bundle's own
   ``inference.yaml`` (+ ``cpu_protocol.yaml``) on the same volume, timed around its evaluator run (the weights
   are loaded before the clock starts, as the server has them loaded).
2. **Train to served.** ``--train-labeled`` volumes at 1.25 mm get labels through ``PUT /datastore/label``, the rest
   stay unlabelled; the clock runs from ``POST /train/<model>`` (``--train-iterations`` iterations) to the first
   inference answered with the new weights.

Each model's returned label is checked against the bundle's own ``inference.yaml`` output for the same volume
(voxel for voxel; any difference stops the benchmark) and scored against the case's ground truth (foreground Dice),
so a fast but wrong answer cannot pass. The weights only set the network's values; latency does not depend on them.
Results: ``docs/results/monailabel_app.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "monailabel_app"))  # the app's lib/
from lib.server_process import start_server, stop_server  # noqa: E402
from ssmis.bundle.layout import config_files  # noqa: E402
from ssmis.utils import atomic_write_text  # noqa: E402


def app_server(studies: Path, model_dir: Path, models: str, log: Path) -> tuple[subprocess.Popen, str]:
    """The app serving ``models`` from ``model_dir`` under the CPU protocol
    (see ``lib.server_process.start_server``)."""
    conf = {"models": models, "model_dir": str(model_dir), "extra_config": "cpu_protocol.yaml", "device": "cpu"}
    return start_server(studies, conf, log)


def la_volume(source: Path, case: str, out: Path) -> tuple[Path, np.ndarray]:
    """One LA case at its native 0.625 mm as NIfTI (the image only, so the server sees no label), and its
    ground-truth label (H×W×D, uint8)."""
    from ssmis.data.la import read_la_case
    from ssmis.data.nifti import save_image, spacing_affine

    image, label = read_la_case(source / "volumes" / case / "mri_norm2.h5")
    return save_image(image, spacing_affine(0.625), out / f"{case}.nii.gz"), label


def label_check(app_label: Path, bundle_out: Path, truth: np.ndarray) -> dict:
    """Compare the label the app returned with the bundle's own ``inference.yaml`` output for the same image, voxel
    by voxel and grid (affine) against grid, and score it against ``truth`` (foreground Dice). Raises when the app's
    label is not the bundle's: the app must serve the bundle's own chain, so any difference is a bug, not noise."""
    import nibabel as nib

    outputs = sorted(bundle_out.rglob("*.nii.gz"))
    if len(outputs) != 1:
        raise RuntimeError(f"expected one label from the bundle's inference in {bundle_out}, found {len(outputs)}")
    app_img, own_img = nib.load(app_label), nib.load(outputs[0])
    if not np.allclose(app_img.affine, own_img.affine, atol=1e-3):
        raise RuntimeError(f"the app's label lies on another grid than the bundle's ({outputs[0].name}):\n"
                           f"{np.round(app_img.affine, 4)}\nagainst\n{np.round(own_img.affine, 4)}")
    app = np.asarray(app_img.dataobj).squeeze().astype(np.uint8)
    own = np.asarray(own_img.dataobj).squeeze().astype(np.uint8)
    if app.shape != truth.shape or own.shape != truth.shape:
        raise RuntimeError(f"label shapes differ: app {app.shape}, bundle {own.shape}, image {truth.shape}")

    def dice(a: np.ndarray) -> float:
        inter, total = np.logical_and(a > 0, truth > 0).sum(), (a > 0).sum() + (truth > 0).sum()
        return float(2 * inter / total) if total else 1.0

    differ = int((app != own).sum())
    if differ:
        raise RuntimeError(f"the app's label differs from the bundle's own inference in {differ} voxels "
                           f"({outputs[0].name}); the app should serve the bundle's chain unchanged")
    return {"voxels_differing_from_bundle": differ, "foreground_voxels": int((app > 0).sum()),
            "dice_vs_truth": dice(app)}


def bundle_inference_seconds(bundle: str, image: Path, weights: Path, out: Path) -> float:
    """Time of the bundle's own inference workflow (evaluator run only) on ``image``."""
    from monai.bundle import ConfigWorkflow

    configs = config_files(ROOT / "bundles" / bundle, "inference", "cpu_protocol")
    wf = ConfigWorkflow(config_file=configs, workflow_type="infer", bundle_root=str(ROOT / "bundles" / bundle),
                        datalist=[{"image": str(image)}], output_dir=str(out), ckpt_path=str(weights),
                        device="$torch.device('cpu')", amp=False)
    wf.initialize()
    evaluator = wf.parser.get_parsed_content("evaluator")
    t0 = time.perf_counter()
    evaluator.run()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", action="append", required=True, metavar="MODEL=PATH",
                   help="trained model.pt (CPU-protocol network) per model; repeatable")
    p.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "LA")
    p.add_argument("--data", type=Path, default=ROOT / "data" / "la_1.25mm_l8", help="1.25 mm LA for the train run")
    p.add_argument("--case", help="LA case for the latency test (default: the last of train.list)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--train-labeled", type=int, default=4)
    p.add_argument("--train-unlabeled", type=int, default=4)
    p.add_argument("--train-iterations", type=int, default=20)
    p.add_argument("--train-batch-size", type=int, default=2,
                   help="labelled (and unlabelled) images per training iteration (default 2, as the recorded runs "
                        "trained; transmedseg_la's CPU protocol trains 4 + 4, which needs 5 labelled images where "
                        "this benchmark uploads --train-labeled)")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "results" / "monailabel_app.json")
    args = p.parse_args(argv)
    weights = {}
    for item in args.weights:
        name, _, path = item.partition("=")
        if not name or not path:
            p.error(f"--weights {item!r}: expected MODEL=PATH, e.g. transmedseg_la=runs/.../models/model.pt")
        if not (ROOT / "bundles" / name / "configs").is_dir():
            p.error(f"--weights {item!r}: unknown model {name!r} (no bundles/{name})")
        if not Path(path).is_file():
            p.error(f"--weights {item!r}: {path} does not exist")
        weights[name] = path

    import nibabel as nib
    import requests
    from monailabel.client.client import MONAILabelClient

    case = args.case or (args.source / "train.list").read_text().split()[-1]
    work = Path(tempfile.mkdtemp(prefix="ssmis_label_bench_"))
    results: dict = {"case": case, "repeats": args.repeats, "models": {}}
    try:
        studies, model_dir = work / "studies", work / "model"
        studies.mkdir()
        image, truth = la_volume(args.source, case, studies)
        results["shape"] = list(nib.load(image).shape)
        for name, path in weights.items():
            (model_dir / name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, model_dir / name / "model.pt")
        proc, base = app_server(studies, model_dir, ",".join(weights), work / "server.log")
        try:
            client = MONAILabelClient(base, tmpdir=str(work / "client"))
            for name, path in weights.items():
                client.infer(name, case, {})  # warm-up: loads the weights
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    out, params = client.infer(name, case, {})
                    times.append(time.perf_counter() - t0)
                    assert nib.load(out).shape == tuple(results["shape"])
                own = []
                for _ in range(max(1, args.repeats // 2)):
                    shutil.rmtree(work / "bundle_out", ignore_errors=True)
                    own.append(bundle_inference_seconds(name, image, Path(path), work / "bundle_out"))
                results["models"][name] = {
                    "label": label_check(Path(out), work / "bundle_out", truth),
                    "app_infer_s": {"median": statistics.median(times), "min": min(times), "max": max(times)},
                    "app_infer_server_s": params["latencies"]["infer"],
                    "bundle_inference_s": {"median": statistics.median(own), "min": min(own), "max": max(own)},
                }
                print(name, json.dumps(results["models"][name]), flush=True)
        finally:
            stop_server(proc)

        # train -> served, on 1.25 mm volumes
        from ssmis.data import load_datalist

        studies2 = work / "studies_train"
        studies2.mkdir()
        labeled = load_datalist(args.data, "labeled")[: args.train_labeled]
        unlabeled = load_datalist(args.data, "unlabeled")[: args.train_unlabeled]
        for rec in labeled + unlabeled:
            shutil.copyfile(rec["image"], studies2 / Path(rec["image"]).name)
        name = next(iter(weights))
        proc, base = app_server(studies2, work / "model_train", name, work / "server_train.log")
        try:
            client = MONAILabelClient(base, tmpdir=str(work / "client"))
            for rec in labeled:
                client.save_label(Path(rec["image"]).name[: -len(".nii.gz")], rec["label"])
            probe = Path(unlabeled[0]["image"]).name[: -len(".nii.gz")]
            t0 = time.perf_counter()
            client.train_start(name, {"num_iterations": args.train_iterations, "batch_size": args.train_batch_size,
                                      "val_interval": max(1, args.train_iterations // 2)})
            while True:
                status = requests.get(f"{base}/train/").json()
                if status.get("status") not in ("SUBMITTED", "RUNNING"):
                    break
                time.sleep(0.5)
            if status["status"] != "DONE":
                raise RuntimeError("\n".join(status.get("details", [])[-80:]))
            client.infer(name, probe, {})
            results["train_to_served"] = {"model": name, "iterations": args.train_iterations,
                                          "batch_size": args.train_batch_size,
                                          "labeled": len(labeled), "unlabeled": len(unlabeled),
                                          "seconds": time.perf_counter() - t0}
            print("train to served", json.dumps(results["train_to_served"]), flush=True)
        finally:
            stop_server(proc)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=2) + "\n", args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
