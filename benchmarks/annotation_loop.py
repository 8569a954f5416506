"""The annotation loop, measured: a simulated annotator drives the real MONAI Label server on LA-1.25mm.

    python benchmarks/annotation_loop.py --model fixed_dynamic_pl_la --strategy uncertainty
    python benchmarks/annotation_loop.py --model fixed_dynamic_pl_la --strategy random
    python benchmarks/annotation_loop.py --model supervised_la --strategy random
    python benchmarks/annotation_loop.py --plot            # table and plot from the curves measured so far

Each curve starts the app (``--conf extra_config cpu_protocol.yaml``, the network the CPU protocol trains) on a
studies folder of the LA training volumes at 1.25 mm, minus the last 8 of ``train.list``, which are the validation
volumes and never enter the datastore. Then, through ``MONAILabelClient``:

1. the first ``--start`` cases of ``train.list`` get their ground truth as labels, and the model trains
   ``--first-iterations`` iterations;
2. each round asks ``next_sample`` (``--strategy``), submits that volume's ground truth as the "corrected" label,
   trains ``--iterations`` more iterations from the served weights (the app's retraining), and, for the
   ``uncertainty`` strategy, rescores the unlabelled images (``POST /scoring/<model>_uncertainty``);
3. after every training the served model segments each validation volume (uploaded with the request) and the mean
   Dice against its ground truth is recorded, until ``--end`` volumes are labelled.

The curve is resumable: its studies folder and weights live in ``runs/annotation_loop/<model>_<strategy>``, and a
rerun continues from the last recorded round. Results: ``docs/results/annotation_loop.json`` (one curve per
model and strategy), ``docs/results/annotation_loop.md`` and ``docs/results/annotation_loop.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_steal import StealMeter  # noqa: E402
sys.path.insert(0, str(ROOT / "monailabel_app"))  # the app's lib/
from lib.server_process import start_server, stop_server  # noqa: E402
from ssmis.utils import atomic_write_text  # noqa: E402

RESULTS = ROOT / "docs" / "results"  # --results-dir


def prepare_data(source: Path, data_dir: Path) -> dict:
    """LA at 1.25 mm (``prepare-la --spacing 1.25 --val 8``) once; returns its datalist (absolute paths)."""
    if not (data_dir / "datalist.json").is_file():
        import subprocess

        subprocess.run([sys.executable, "-m", "ssmis.data", "prepare-la", "--source", str(source), "--output",
                        str(data_dir), "--spacing", "1.25", "--labeled", "3", "--val", "8"], check=True)
    from ssmis.data import load_datalist

    return {k: load_datalist(data_dir, k) for k in ("labeled", "unlabeled", "validation")}


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    p, t = pred > 0, truth > 0
    denominator = p.sum() + t.sum()
    return float(2.0 * (p & t).sum() / denominator) if denominator else 1.0


def wait_for_training(base: str, timeout_s: float) -> dict:
    import requests

    t0 = time.time()
    while time.time() - t0 < timeout_s:
        status = requests.get(f"{base}/train/", timeout=30).json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(2)
    raise TimeoutError(f"training did not finish within {timeout_s:.0f} s")


def evaluate(client, model: str, validation: list[dict], tmp: Path) -> list[float]:
    """Dice of the served model on each validation volume (uploaded with the inference request)."""
    import nibabel as nib

    scores = []
    for record in validation:
        path, _ = client.infer(model, "", {}, file=record["image"])
        scores.append(dice(np.asarray(nib.load(path).dataobj), np.asarray(nib.load(record["label"]).dataobj)))
        Path(path).unlink(missing_ok=True)
    return scores


def run_curve(args: argparse.Namespace) -> dict:
    from monailabel.client import MONAILabelClient

    import requests

    data = prepare_data(args.source, args.data_dir)
    pool = data["labeled"] + data["unlabeled"]  # train.list order: the first --start are labelled first
    # prepare-la writes every case's label, the unlabelled ones' included: the simulated annotator's corrections
    truth = {Path(r["image"]).name.split(".")[0]: str(args.data_dir / "labelsTr" / Path(r["image"]).name)
             for r in pool}
    name = f"{args.model}_{args.strategy}"
    run_dir = args.run_root / name
    studies, model_dir = run_dir / "studies", run_dir / "model"
    if not studies.is_dir():
        studies.mkdir(parents=True)
        for record in pool:
            shutil.copy(record["image"], studies / Path(record["image"]).name)
    results_file = args.results_dir / "annotation_loop.json"
    all_curves = json.loads(results_file.read_text()) if results_file.is_file() else {}
    curve = all_curves.get(name, {"model": args.model, "strategy": args.strategy, "rounds": []})
    curve.update(iterations_first=args.first_iterations, iterations_per_round=args.iterations, start=args.start,
                 end=args.end, validation=len(data["validation"]), pool=len(pool))

    def save(curve: dict) -> None:
        all_curves = json.loads(results_file.read_text()) if results_file.is_file() else {}
        all_curves[name] = curve
        args.results_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(json.dumps(all_curves, indent=2), results_file)

    # the curve starts from an untrained model: not from the weights the bundle ships
    conf = {"models": args.model, "model_dir": str(model_dir), "extra_config": "cpu_protocol.yaml", "device": "cpu",
            "shipped_weights": "false"}
    env = {"OMP_NUM_THREADS": str(args.threads), "MONAI_LABEL_AUTO_UPDATE_SCORING": "false"}
    proc, base = start_server(studies, conf, run_dir / "server.log", env=env, timeout_s=300)
    client = MONAILabelClient(base, tmpdir=str(run_dir / "client"))
    try:
        labelled = {i for i, o in requests.get(f"{base}/datastore/?output=all", timeout=60).json()["objects"].items()
                    if o["labels"]}
        if not labelled:
            for record in pool[: args.start]:
                image_id = Path(record["image"]).name.split(".")[0]
                client.save_label(image_id, truth[image_id])
                labelled.add(image_id)
        done = {r["labelled"] for r in curve["rounds"]}
        while True:
            n = len(labelled)
            if n not in done:
                t0 = time.time()
                iterations = args.first_iterations if n == args.start else args.iterations
                with StealMeter() as steal:
                    client.train_start(args.model, {"num_iterations": iterations, "val_interval": iterations,
                                                    "seed": args.seed, "batch_size": args.batch_size})
                    status = wait_for_training(base, args.round_timeout_s)
                    if status.get("status") != "DONE":
                        raise RuntimeError(f"training at {n} labels ended {status.get('status')}: "
                                           f"{list(status.get('details', []))[-3:]}")
                    train_s = time.time() - t0
                    scores = evaluate(client, args.model, data["validation"], run_dir)
                    score_s = 0.0
                    if args.strategy == "uncertainty" and n < args.end:
                        t1 = time.time()
                        score(base, args.model)
                        score_s = time.time() - t1
                stats = json.loads((model_dir / args.model / "train_stats.json").read_text())
                curve["rounds"].append({
                    "labelled": n, "images": sorted(labelled), "mean_dice": float(np.mean(scores)),
                    "dice": [round(s, 4) for s in scores], "iterations": iterations,
                    "labeled_train": stats["labeled"], "labeled_validation": stats["validation"],
                    "unlabeled": stats["unlabeled"], "batch_size": args.batch_size,
                    "train_s": round(train_s, 1), "scoring_s": round(score_s, 1),
                    "round_s": round(time.time() - t0, 1), "steal": round(steal.fraction or 0.0, 3)})
                save(curve)
                print(f"{name}: {n} labelled, mean Dice {np.mean(scores):.4f}, round {time.time() - t0:.0f} s",
                      flush=True)
            if n >= args.end:
                break
            last = next(r for r in curve["rounds"] if r["labelled"] == n)
            if args.strategy == "uncertainty" and not last["scoring_s"]:
                # a curve resumed past its old --end: the last round's model has not scored the pool yet
                t1 = time.time()
                score(base, args.model)
                last["scoring_s"] = round(time.time() - t1, 1)
                last["round_s"] = round(last["round_s"] + last["scoring_s"], 1)
                save(curve)
            sample = client.next_sample(args.strategy, {})
            image_id = sample["id"]
            client.save_label(image_id, truth[image_id])
            labelled.add(image_id)
    finally:
        stop_server(proc)
    return curve


def score(base: str, model: str) -> None:
    """Score every unlabelled datastore image with the served model's disagreement (blocks until done)."""
    import requests

    r = requests.post(f"{base}/scoring/{model}_uncertainty?run_sync=true", timeout=3600)
    r.raise_for_status()


def labels_to_reach(curve: dict, target: float) -> int | None:
    """The fewest labelled volumes at which the curve reaches ``target`` mean Dice (None if never)."""
    hits = [r["labelled"] for r in curve["rounds"] if r["mean_dice"] >= target]
    return min(hits) if hits else None


def report(targets: list[float], results_dir: Path = RESULTS) -> None:
    """``annotation_loop.md`` (the table) and ``annotation_loop.png`` (Dice against labelled volumes)."""
    results_file = results_dir / "annotation_loop.json"
    curves = json.loads(results_file.read_text())
    lines = ["| model | selection | rounds | Dice at start → end | " + " | ".join(
        f"labels to reach {t:.0%}" for t in targets) + " | wall per round |", "|---|---|---|---|" + "---|" * (
        len(targets) + 1)]
    for name, c in sorted(curves.items()):
        rounds = sorted(c["rounds"], key=lambda r: r["labelled"])
        if not rounds:
            continue
        reach = [labels_to_reach(c, t) for t in targets]
        lines.append(f"| {c['model']} | {c['strategy']} | {rounds[0]['labelled']}–{rounds[-1]['labelled']} | "
                     f"{rounds[0]['mean_dice']:.4f} → {rounds[-1]['mean_dice']:.4f} | "
                     + " | ".join("not reached" if r is None else str(r) for r in reach)
                     + f" | {np.mean([r['round_s'] for r in rounds]) / 60:.1f} min |")
    atomic_write_text("\n".join(lines) + "\n", results_dir / "annotation_loop.md")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, c in sorted(curves.items()):
        rounds = sorted(c["rounds"], key=lambda r: r["labelled"])
        ax.plot([r["labelled"] for r in rounds], [r["mean_dice"] for r in rounds], marker="o",
                label=f"{c['model']}, {c['strategy']}")
    for t in targets:
        ax.axhline(t, color="grey", lw=0.5, ls="--")
    ax.set_xlabel("labelled volumes")
    ax.set_ylabel("validation Dice (8 volumes)")
    ax.set_title("Annotation loop, LA-1.25mm, MONAI Label app")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir / "annotation_loop.png", dpi=120)
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="fixed_dynamic_pl_la",
                        choices=["fixed_dynamic_pl_la", "transmedseg_la", "supervised_la"])
    parser.add_argument("--strategy", default="uncertainty", choices=["uncertainty", "random"])
    parser.add_argument("--start", type=int, default=3, help="labelled volumes at the start (default 3)")
    parser.add_argument("--end", type=int, default=16, help="labelled volumes at the end (default 16)")
    parser.add_argument("--first-iterations", type=int, default=150, help="first training (default 150)")
    parser.add_argument("--iterations", type=int, default=60, help="training per round (default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=2,
                        help="labelled (and unlabelled) images per training iteration (default 2, as the recorded "
                             "curves trained: the loop starts from --start labels, fewer than transmedseg_la's "
                             "CPU-protocol 4 + 4 batch and its validation image need)")
    parser.add_argument("--threads", type=int, default=2, help="OMP threads of the server and its training")
    parser.add_argument("--round-timeout-s", type=float, default=3600.0)
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data" / "LA")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data" / "la_1.25mm_l3")
    parser.add_argument("--run-root", type=Path, default=ROOT / "runs" / "annotation_loop")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.80, 0.85])
    parser.add_argument("--plot", action="store_true", help="only write the table and plot from the results")
    args = parser.parse_args(argv)
    if not args.plot:
        if not 2 <= args.start <= args.end:
            parser.error("--start must be at least 2 and at most --end")
        run_curve(args)
    report(args.targets, args.results_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
