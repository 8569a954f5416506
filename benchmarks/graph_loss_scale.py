"""How much the graph-clustering term weighs in TransMedSeg's update, for each ``graph_reduction``.

    python benchmarks/graph_loss_scale.py --checkpoint runs/la_1.25mm/transmedseg_la_l16/models/checkpoint.pt
    python benchmarks/graph_loss_scale.py --checkpoint none          # the network's initial weights

Builds the bundle's own BCP strategy (``train.yaml`` + ``cpu_protocol.yaml`` + ``cpu_protocol_v1.yaml`` by default:
the LA-1.25mm v1 protocol of the recorded rows and of ``runs/la_1.25mm``'s checkpoints) on a prepared LA dataset,
loads a checkpoint (student, teacher, graph head, TSA statistics), and runs self-training steps on real batches
without updating anything. For each step it takes the gradient, over the network's weights, of the copy-paste loss
and of ``κ·L_CC``, and reports their norms' ratio. ``L_CC`` is computed once, with ``reduction="pairs"``: for the
same subsample, ``"nodes"`` is exactly n times and ``"sum"`` n² times that value and gradient, so their ratios
follow. The graph head in the checkpoint was trained with the reduction the run used; the ratios of the other
reductions say how large the term would be at that point, not how a run with them would go.

Results: a table printed and written to ``docs/results/graph_loss_scale.{json,md}`` (``--results`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ssmis.utils import atomic_write_text  # noqa: E402


def _grad_norm(loss, params) -> float:
    import torch

    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads if g is not None)))


def _cycle(loader):
    """Batches of ``loader``, epoch after epoch (a small dataset can have fewer batches than ``--steps``)."""
    while True:
        n = 0
        for batch in loader:
            n += 1
            yield batch
        if n == 0:
            raise ValueError(f"the data loader of {len(loader.dataset)} record(s) yields no batch")


def measure(bundle_dir: Path, dataset_dir: Path, checkpoint: str | None, steps: int, seed: int,
            extra_configs: list[str]) -> dict:
    import torch
    from monai.bundle import ConfigParser
    from monai.utils import set_determinism

    from ssmis.bundle.layout import config_files
    from ssmis.losses import GraphClusteringLoss

    set_determinism(seed=seed)
    parser = ConfigParser()
    parser.read_config(config_files(bundle_dir, "train", *extra_configs))
    parser["bundle_root"] = str(bundle_dir)
    parser["dataset_dir"] = str(dataset_dir)
    parser["device"] = "$torch.device('cpu')"
    parser["graph_reduction"] = "pairs"  # the others are exact multiples of it (see the module docstring)
    strategy = parser.get_parsed_content("train#strategy")
    if strategy.graph_loss is None:
        raise ValueError("the configs turn graph clustering off (use_graph: false); nothing to measure")
    network, kappa = strategy.network, strategy.graph_weight
    if checkpoint:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        for key, module in (("model", network), ("teacher", strategy.teacher), ("graph_loss", strategy.graph_loss),
                            ("tsa", strategy.tsa)):
            if module is not None and key in state:
                module.load_state_dict(state[key])
    else:
        strategy.teacher.load_state_dict(network.state_dict())
    network.train()
    params = [p for p in network.parameters() if p.requires_grad]
    labeled = _cycle(parser.get_parsed_content("train#dataloader"))
    unlabeled = _cycle(parser.get_parsed_content("train#unlabeled_dataloader"))
    engine = types.SimpleNamespace(state=types.SimpleNamespace(iteration=10**9))  # past pre-training
    rows = []
    for _ in range(steps):
        out = strategy(engine, next(labeled), next(unlabeled))
        feats = strategy.graph_tap.features
        n = min(strategy.graph_loss.max_nodes, feats.numel() // feats.shape[1])
        cc = out["loss/graph"]
        bcp_norm = _grad_norm(out["loss/bcp"], params)
        graph_norm = _grad_norm(kappa * cc, params)
        rows.append({"n": n, "bcp": float(out["loss/bcp"].detach()), "kappa_cc_pairs": float(kappa * cc.detach()),
                     "grad_bcp": bcp_norm, "grad_ratio_pairs": graph_norm / bcp_norm})
    n = rows[0]["n"]
    summary = {"checkpoint": checkpoint or "initial weights", "configs": ["train.yaml", *extra_configs],
               "dataset_dir": str(dataset_dir), "steps": steps, "kappa": kappa, "n": n, "per_step": rows}
    pairs_power = GraphClusteringLoss.reductions["pairs"]
    for red, power in GraphClusteringLoss.reductions.items():
        scale = n ** (pairs_power - power)  # value and gradient relative to the "pairs" ones measured
        v = [r["kappa_cc_pairs"] * scale for r in rows]
        g = [r["grad_ratio_pairs"] * scale for r in rows]
        summary[red] = {"kappa_cc_median": statistics.median(v), "grad_ratio_median": statistics.median(g),
                        "grad_ratio_min": min(g), "grad_ratio_max": max(g)}
    summary["bcp_median"] = statistics.median(r["bcp"] for r in rows)
    return summary


def report(results: list[dict]) -> str:
    lines = ["| weights | n | BCP loss | reduction | κ·L_CC "
             "| ‖∇κ·L_CC‖ / ‖∇L_BCP‖ median (min–max) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        for red in ("pairs", "nodes", "sum"):
            s = r[red]
            lines.append(f"| {r['checkpoint']} | {r['n']} | {r['bcp_median']:.3f} | {red} | {s['kappa_cc_median']:.4g} "
                         f"| {s['grad_ratio_median']:.3g} ({s['grad_ratio_min']:.3g}–{s['grad_ratio_max']:.3g}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", required=True,
                   help="checkpoint.pt files of transmedseg_la runs; 'none' measures the initial weights")
    p.add_argument("--bundle", default=str(ROOT / "bundles" / "transmedseg_la"))
    p.add_argument("--dataset-dir", default=str(ROOT / "data" / "la_1.25mm_l16"),
                   help="a prepared LA dataset (python -m ssmis.data prepare-la ...)")
    p.add_argument("--config", nargs="*", default=["cpu_protocol.yaml", "cpu_protocol_v1.yaml"],
                   help="configs merged on top of train.yaml (default: cpu_protocol.yaml cpu_protocol_v1.yaml, the v1 "
                        "protocol; cpu_protocol.yaml alone for v2's checkpoints)")
    p.add_argument("--steps", type=int, default=8, help="self-training steps measured per checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", default=str(ROOT / "docs" / "results" / "graph_loss_scale"),
                   help="output path without extension (.json and .md are written)")
    args = p.parse_args(argv)
    dataset = Path(args.dataset_dir)
    if not (dataset / "datalist.json").is_file():
        p.error(f"--dataset-dir {dataset}: no datalist.json; prepare it with python -m ssmis.data prepare-la")
    for c in args.checkpoint:
        if c != "none" and not Path(c).is_file():
            p.error(f"--checkpoint {c}: no such file")
    if args.steps < 1:
        p.error(f"--steps must be >= 1, got {args.steps}")
    results = [measure(Path(args.bundle), dataset, None if c == "none" else c, args.steps, args.seed, args.config)
               for c in args.checkpoint]
    table = report(results)
    print(table)
    out = Path(args.results)
    atomic_write_text(json.dumps(results, indent=1) + "\n", out.with_suffix(".json"))
    atomic_write_text("# Graph-clustering term against the copy-paste loss\n\n"
                      "`python benchmarks/graph_loss_scale.py` (see its docstring).\n\n" + table,
                      out.with_suffix(".md"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
