"""Speed and memory: engine overhead, per-method step time, sliding-window inference of a full LA volume.

    python benchmarks/speed.py                # all cases, CPU protocol network, results in docs/results/speed.*
    python benchmarks/speed.py --device cuda --network vnet --patch 112 112 80

Each case runs in its own subprocess so its peak resident memory (ru_maxrss) is its own; on CUDA the peak GPU
memory is reported too. Step times are medians over timed steps after warm-up.

Cases:
- ``peak``: the machine's fp32 and bf16 matmul throughput, measured in the same run; each method's step reports
  its FLOPs (``torch.utils.flop_counter.FlopCounterMode`` over one extra step), its CPU time and its efficiency,
  FLOP/s over the fp32 peak.
- ``engine``: SemiSupervisedTrainer + SupervisedStrategy against a bare PyTorch loop doing identical math on the
  same batches; the ratio is taken per repeat (interleaved) and reported as min / median / max.
- ``supervised``, ``mean_teacher``, ``bcp``, ``graphcl`` (BCP + graph clustering), ``transmedseg`` (GraphCL + TSA):
  one self-training step of each method (batch 2 labelled, + 2 unlabelled); TSA's overhead is
  transmedseg / graphcl. ``cps`` (two networks, fixed pseudo-labels, no CutMix) and ``fixed_dynamic`` (plus four
  gradient-free shifted crops per network and CUT): the dynamic pseudo-label's overhead is fixed_dynamic / cps.
- ``inference``: sliding-window inference of one full LA volume (0.625 mm, 183x140x88, V-Net 112x112x80 patch)
  and of the same volume at 1.25 mm with the CPU-protocol network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.cpu_model import cpu_model  # noqa: E402
from benchmarks.cpu_steal import StealMeter, format_steal  # noqa: E402
from ssmis.utils import atomic_write_text  # noqa: E402

CASES = ["peak", "engine", "supervised", "mean_teacher", "bcp", "graphcl", "transmedseg", "cps", "fixed_dynamic",
         "inference"]
METHODS = ["supervised", "mean_teacher", "bcp", "graphcl", "transmedseg", "cps", "fixed_dynamic"]


def build_network(name: str, device, channels_last: bool = False):
    from monai.networks.nets import BasicUNet

    from ssmis.networks import VNet
    from ssmis.networks import channels_last as to_channels_last

    if name == "vnet":
        net = VNet(3, 1, 2, features=16).to(device)
    elif name == "basicunet8":
        net = BasicUNet(3, 1, 2, features=(8, 16, 32, 64, 128, 8)).to(device)
    else:
        raise ValueError(f"unknown network {name!r}")
    return to_channels_last(net) if channels_last else net


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def batches(n, batch, patch, device, labeled=True, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        item = {"image": torch.randn(batch, 1, *patch, generator=g).to(device)}
        if labeled:
            item["label"] = (torch.rand(batch, 1, *patch, generator=g) > 0.7).long().to(device)
        out.append(item)
    return out


def time_trainer(strategy_factory, args, device, steps, unlabeled=False, unlabeled_patch=None):
    """Median step time (s) of SemiSupervisedTrainer over ``steps`` timed iterations after 3 warm-up ones."""
    from ignite.engine import Events
    from torch.utils.flop_counter import FlopCounterMode

    from ssmis.engines import SemiSupervisedTrainer

    strategy, opts, handlers = strategy_factory()
    lab = batches(4, args.batch, args.patch, device)
    unl = (batches(4, args.batch, unlabeled_patch or args.patch, device, labeled=False, seed=1)
           if unlabeled else None)
    trainer = SemiSupervisedTrainer(device=device, max_epochs=1, epoch_length=steps + 4, train_data_loader=_Loop(lab),
                                    unlabeled_data_loader=_Loop(unl) if unl else None, strategy=strategy,
                                    optimizers=opts, train_handlers=handlers, amp=args.amp)
    times, cpu = [], []
    t = {}

    def start(e):
        _sync(device)
        t["s"], t["c"] = time.perf_counter(), time.process_time()

    def stop(e):
        _sync(device)
        times.append(time.perf_counter() - t["s"])
        cpu.append(time.process_time() - t["c"])

    trainer.add_event_handler(Events.ITERATION_STARTED, start)
    trainer.add_event_handler(Events.ITERATION_COMPLETED, stop)
    # one more step, untimed, under torch's FLOP counter: the FLOPs of one step (forward, backward and the
    # gradient-free passes; matmuls and convolutions, the ops that dominate)
    counter = FlopCounterMode(display=False)
    trainer.add_event_handler(Events.ITERATION_STARTED(once=steps + 4), lambda e: counter.__enter__())
    trainer.add_event_handler(Events.ITERATION_COMPLETED(once=steps + 4), lambda e: counter.__exit__(None, None, None))
    trainer.run()
    return {"step_s": statistics.median(times[3:-1]), "cpu_s": statistics.median(cpu[3:-1]),
            "gflop": counter.get_total_flops() / 1e9}


class _Loop:
    """A re-iterable over pre-made device batches (the same for engine and bare loop)."""

    def __init__(self, items):
        self.items = items

    def __iter__(self):
        return iter(self.items)

    def __len__(self):
        return len(self.items)


def case_engine(args, device):
    import torch
    from monai.losses import DiceCELoss

    from ssmis.engines import SupervisedStrategy

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.5, lambda_ce=0.5)
    lab = batches(4, args.batch, args.patch, device)

    def bare(steps):
        torch.manual_seed(0)
        net = build_network(args.network, device, args.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        times = []
        for i in range(steps + 3):
            b = lab[i % len(lab)]
            _sync(device)
            t0 = time.perf_counter()
            net.train()
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(net(b["image"]), b["label"])
            loss.backward()
            opt.step()
            float(loss.detach())  # the engine also materialises the loss for its output
            _sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times[3:])

    def factory():
        torch.manual_seed(0)
        net = build_network(args.network, device, args.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return SupervisedStrategy(net, loss_fn), opt, []

    ratios, engine_t, bare_t = [], [], []
    for r in range(args.repeats):
        order = [("bare", bare), ("engine", None)] if r % 2 == 0 else [("engine", None), ("bare", bare)]
        res = {}
        for name, fn in order:
            res[name] = fn(args.steps) if fn else time_trainer(factory, args, device, args.steps)["step_s"]
        ratios.append(res["engine"] / res["bare"])
        engine_t.append(res["engine"])
        bare_t.append(res["bare"])
    return {"ratio_min": min(ratios), "ratio_median": statistics.median(ratios), "ratio_max": max(ratios),
            "engine_step_s": statistics.median(engine_t), "bare_step_s": statistics.median(bare_t),
            "repeats": args.repeats, "steps": args.steps}


def case_supervised(args, device):
    import torch
    from monai.losses import DiceCELoss

    from ssmis.engines import SupervisedStrategy

    def factory():
        torch.manual_seed(0)
        net = build_network(args.network, device, args.channels_last)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        return SupervisedStrategy(net, DiceCELoss(to_onehot_y=True, softmax=True)), opt, []

    return time_trainer(factory, args, device, args.steps)


def case_mean_teacher(args, device):
    import torch
    from ignite.handlers import EMAHandler
    from monai.losses import DiceCELoss

    from ssmis.engines import MeanTeacherStrategy
    from ssmis.handlers import RampUpWeight

    def factory():
        torch.manual_seed(0)
        net = build_network(args.network, device, args.channels_last)
        ema = EMAHandler(net, momentum=0.01)
        ramp = RampUpWeight(0.1, 1000)
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        strat = MeanTeacherStrategy(net, ema.ema_model, DiceCELoss(to_onehot_y=True, softmax=True), ramp)
        return strat, opt, [ramp, ema]

    return time_trainer(factory, args, device, args.steps, unlabeled=True)


def _bcp_case(args, device, graph: bool, tsa: bool):
    import torch
    from ignite.handlers import EMAHandler

    from ssmis.engines import BCPStrategy
    from ssmis.tsa import TransferableSemanticAugmentation
    from ssmis.losses import GraphClusteringLoss

    layer, channels = ("down_4", 128) if args.network == "basicunet8" else ("block_five", 256)

    def factory():
        torch.manual_seed(0)
        net = build_network(args.network, device, args.channels_last)
        ema = EMAHandler(net, momentum=0.01)
        gl = GraphClusteringLoss(channels, clusters=2).to(device) if graph else None
        t = TransferableSemanticAugmentation(net, 2, ramp_iterations=10).to(device) if tsa else None
        params = list(net.parameters()) + (list(gl.parameters()) if gl is not None else [])
        opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
        strat = BCPStrategy(net, ema.ema_model, 2, pretrain_iterations=0, graph_loss=gl,
                            graph_layer=layer if graph else None, tsa=t)
        return strat, opt, [ema] + ([t] if t is not None else [])

    return time_trainer(factory, args, device, args.steps, unlabeled=True)


def case_bcp(args, device):
    return _bcp_case(args, device, graph=False, tsa=False)


def case_graphcl(args, device):
    return _bcp_case(args, device, graph=True, tsa=False)


def case_transmedseg(args, device):
    return _bcp_case(args, device, graph=True, tsa=True)


def _co_case(args, device, dynamic: bool, cut: bool):
    import torch
    from monai.losses import DiceCELoss

    from ssmis.engines import CoTrainingStrategy
    from ssmis.transforms import context_size

    max_shift = [p // 4 for p in args.patch]

    def factory():
        torch.manual_seed(0)
        nets = [build_network(args.network, device, args.channels_last) for _ in range(2)]
        opts = [torch.optim.SGD(n.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4) for n in nets]
        strat = CoTrainingStrategy(nets, DiceCELoss(to_onehot_y=True, softmax=True), args.patch, max_shift,
                                   unlabeled_weight=0.3, use_fixed=True, use_dynamic=dynamic, use_cut=cut,
                                   input_noise=0.2, teacher_precision=args.teacher_precision)
        return strat, opts, []

    return time_trainer(factory, args, device, args.steps, unlabeled=True,
                        unlabeled_patch=context_size(args.patch, max_shift))


def case_cps(args, device):
    """Plain two-network cross pseudo supervision: fixed pseudo-labels only, no CutMix."""
    return _co_case(args, device, dynamic=False, cut=False)


def case_fixed_dynamic(args, device):
    return _co_case(args, device, dynamic=True, cut=True)


def case_inference(args, device):
    import torch

    from ssmis.inferers import SoftmaxSlidingWindowInferer

    out = {}
    for label, net_name, shape, patch in (
        ("vnet_0.625mm", "vnet", (183, 140, 88), (112, 112, 80)),
        ("basicunet8_1.25mm", "basicunet8", (92, 70, 44), (56, 56, 40)),
    ):
        net = build_network(net_name, device).eval()
        inferer = SoftmaxSlidingWindowInferer(roi_size=patch, sw_batch_size=4, overlap=0.5)  # as the bundles
        x = torch.randn(1, 1, *shape, device=device)
        times = []
        with torch.no_grad():
            for _ in range(args.inference_repeats):
                _sync(device)
                t0 = time.perf_counter()
                inferer(x, net)
                _sync(device)
                times.append(time.perf_counter() - t0)
        out[label] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
                      "volume": list(shape), "patch": list(patch), "overlap": 0.5}
    return out


def case_peak(args, device, n: int = 2048):
    """The machine's matmul throughput (GFLOP/s), fp32 and bf16: the best of 5 timed runs of a square matmul,
    the denominator of each step's efficiency. bf16 only where it is native (``bf16_native``): a CPU without
    bfloat16 instructions emulates it some 50 times slower than fp32, minutes for this case, and no default uses it
    there."""
    import torch

    from ssmis.utils.precision import bfloat16_is_fast

    native = torch.device(device).type != "cpu" or bfloat16_is_fast()
    out: dict = {"bf16_native": native}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))[:2 if native else 1]:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        a @ b  # warm-up
        best = float("inf")
        for _ in range(5):
            _sync(device)
            t = time.perf_counter()
            for _ in range(4):
                a @ b
            _sync(device)
            best = min(best, (time.perf_counter() - t) / 4)
        out[f"{name}_gflops"] = 2 * n**3 / best / 1e9
    return out


def run_case(case: str, args) -> dict:
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    device = torch.device(args.device)
    result = globals()[f"case_{case}"](args, device)
    if device.type == "cuda":
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    p.add_argument("--device", default="cpu")
    p.add_argument("--network", default="basicunet8", choices=["basicunet8", "vnet"])
    p.add_argument("--patch", nargs=3, type=int, default=[56, 56, 40])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="engine-vs-bare repeats (default 5)")
    p.add_argument("--inference-repeats", type=int, default=3)
    p.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    p.add_argument("--channels-last", action="store_true",
                   help="channels-last weights (the bundles' default on the CPU)")
    p.add_argument("--teacher-precision", default="float32", choices=["float32", "bfloat16"],
                   help="co-training's gradient-free pseudo-label passes (cps, fixed_dynamic)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    p.add_argument("--output", type=Path, default=ROOT / "docs" / "results" / "speed.json")
    p.add_argument("--_case", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args._case:
        print(json.dumps(run_case(args._case, args)))
        return 0
    results = {"device": args.device, "network": args.network, "patch": args.patch, "batch": args.batch,
               "amp": args.amp, "channels_last": args.channels_last, "teacher_precision": args.teacher_precision,
               "cpu_count": os.cpu_count(), "cpu": cpu_model(), "cases": {}}
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:])]
    for case in args.cases:
        print(f"== {case}", flush=True)
        with StealMeter() as steal:
            proc = subprocess.Popen([sys.executable, __file__, *passthrough, "--_case", case], stdout=subprocess.PIPE,
                                    text=True, cwd=ROOT)
            stdout = proc.stdout.read()
            _, status, usage = os.wait4(proc.pid, 0)
        if status != 0:
            raise SystemExit(f"case {case} failed")
        res = json.loads(stdout.strip().splitlines()[-1])
        res["peak_rss_mib"] = usage.ru_maxrss / 1024
        res["host_steal"] = steal.fraction
        results["cases"][case] = res
        print(json.dumps(res), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=2) + "\n", args.output)
    atomic_write_text(report(results), args.output.with_suffix(".md"))
    print(report(results))
    return 0


def report(r: dict) -> str:
    c = r["cases"]
    lines = [f"Device `{r['device']}`, network `{r['network']}`, patch {r['patch']}, batch {r['batch']} labelled"
             f" (+ {r['batch']} unlabelled for the semi-supervised methods), amp {r['amp']}, channels-last "
             f"{r.get('channels_last', False)}, co-training pseudo-label passes in "
             f"{r.get('teacher_precision', 'float32')}."
             + (f" Processor: {r['cpu']}, {r['cpu_count']} cores." if r.get("cpu") else ""), ""]
    if "engine" in c:
        e = c["engine"]
        lines += ["| engine overhead | value |", "|---|---|",
                  f"| SemiSupervisedTrainer step | {e['engine_step_s']:.3f} s |",
                  f"| bare PyTorch loop step | {e['bare_step_s']:.3f} s |",
                  f"| ratio min / median / max over {e['repeats']} repeats | {e['ratio_min']:.3f} / "
                  f"{e['ratio_median']:.3f} / {e['ratio_max']:.3f} |", ""]
    methods = [m for m in METHODS if m in c]
    if methods:
        base = c.get("supervised", {}).get("step_s")
        peak = c.get("peak", {}).get("fp32_gflops")
        if peak:
            bf16 = c["peak"].get("bf16_gflops")
            bf16 = (f"bf16 {bf16:.1f} GFLOP/s" if bf16 is not None
                    else "bf16 not timed (no bfloat16 instructions: emulated)")
            lines += [f"Matmul peak of this machine in the same run: fp32 {peak:.1f} GFLOP/s, {bf16} "
                      f"(best of 5, 2048 x 2048). Efficiency: a step's FLOPs "
                      "(torch's FlopCounterMode: convolutions and matmuls, forward and backward) per second of "
                      "its wall time, over the fp32 peak.", ""]
        lines += ["| method | step | CPU per step | GFLOP per step | GFLOP/s | efficiency | vs supervised | peak RSS | "
                  "host steal |", "|---|---|---|---|---|---|---|---|---|"]
        for m in methods:
            r = c[m]
            rel = f"{r['step_s'] / base:.2f}x" if base else "-"
            gflop = r.get("gflop")
            rate = gflop / r["step_s"] if gflop else None
            eff = f"{100 * rate / peak:.1f} %" if rate and peak else "-"
            lines.append(f"| {m} | {r['step_s']:.3f} s | {r['cpu_s']:.2f} s | {gflop:.1f} | {rate:.1f} | {eff} | "
                         f"{rel} | {r['peak_rss_mib'] / 1024:.2f} GiB | {format_steal(r.get('host_steal'))} |"
                         if gflop else f"| {m} | {r['step_s']:.3f} s | - | - | - | - | {rel} | "
                         f"{r['peak_rss_mib'] / 1024:.2f} GiB | {format_steal(r.get('host_steal'))} |")
        lines.append("")
        if "fixed_dynamic" in c and "cps" in c:
            lines += [f"Fixed + dynamic pseudo-labels with CUT against plain cross pseudo supervision (same two "
                      f"networks): {c['fixed_dynamic']['step_s'] / c['cps']['step_s']:.3f}x", ""]
        if "transmedseg" in c and "graphcl" in c:
            lines += [f"TSA overhead (transmedseg step / graphcl step): "
                      f"{c['transmedseg']['step_s'] / c['graphcl']['step_s']:.3f}x", ""]
    if "inference" in c:
        lines += ["| sliding-window inference (overlap 0.5) | median | min / max | peak RSS |", "|---|---|---|---|"]
        for k, v in c["inference"].items():
            if isinstance(v, dict):
                lines.append(f"| {k}, volume {v['volume']}, patch {v['patch']} | {v['median_s']:.2f} s | "
                             f"{v['min_s']:.2f} / {v['max_s']:.2f} s | "
                             f"{c['inference']['peak_rss_mib'] / 1024:.2f} GiB |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
