"""Every ablation config of transmedseg_la builds the strategy it names."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLES, config_list

TMS = "transmedseg_la"


def strategy(*extra: str):
    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train", "cpu_protocol", *extra))
    parser["bundle_root"] = str(BUNDLES / "transmedseg_la")
    return parser.get_parsed_content("train#strategy"), parser


@pytest.mark.parametrize(
    "extra, graph, tsa",
    [((), True, True), (("ablation_no_tsa.yaml",), True, False), (("ablation_no_graph.yaml",), False, True),
     (("ablation_bcp_only.yaml",), False, False)],
)
def test_bcp_ablations(extra, graph, tsa):
    s, _ = strategy(*extra)
    assert type(s).__name__ == "BCPStrategy"
    assert (s.graph_loss is not None) == graph and (s.tsa is not None) == tsa


def test_graph_reduction_ablation():
    s, _ = strategy()
    assert s.graph_loss.reduction == "pairs"
    s, _ = strategy("ablation_graph_nodes.yaml")
    assert s.graph_loss.reduction == "nodes" and s.tsa is not None


def test_tsa_on_mean_teacher(synthetic_3d):
    s, parser = strategy("ablation_tsa_mean_teacher.yaml")
    assert type(s).__name__ == "MeanTeacherStrategy" and s.tsa is not None
    handlers = parser["train#method_handlers"]
    assert handlers[-1].replace("::", "#") == "@train#rampup" and len(handlers) == 3  # merged, not replacing them
    # no pre-training here: no PretrainingStage is built (nor checkpointed); with pre-training, one is
    parser["dataset_dir"] = str(synthetic_3d)
    assert parser.get_parsed_content("train#pretraining") is None
    assert parser.get_parsed_content("checkpoint_dict#pretraining") is None
    _, with_pretraining = strategy()
    with_pretraining["dataset_dir"] = str(synthetic_3d)
    assert type(with_pretraining.get_parsed_content("train#pretraining")).__name__ == "PretrainingStage"
    parser["use_tsa"] = False  # the switch is honoured here too (the plain mean teacher of this bundle's pieces)
    assert parser.get_parsed_content("train#strategy", lazy=False).tsa is None


@pytest.mark.parametrize("beta", ["0.1", "0.2", "0.4", "0.6", "0.8", "1.0"])
def test_beta_sweep(beta):
    s, _ = strategy(f"ablation_beta_{beta}.yaml")
    assert s.tsa.beta == float(beta)


FD = "fixed_dynamic_pl_la"


@pytest.mark.parametrize(
    "extra, fixed, dynamic, cut",
    [("ablation_fixed_only.yaml", True, False, True), ("ablation_dynamic_only.yaml", False, True, True),
     ("ablation_both_no_cut.yaml", True, True, False), ("ablation_both_cut.yaml", True, True, True)],
)
def test_co_training_ablations(extra, fixed, dynamic, cut):
    parser = ConfigParser()
    parser.read_config(config_list(FD, "train", "cpu_protocol", extra))
    parser["bundle_root"] = str(BUNDLES / "fixed_dynamic_pl_la")
    s = parser.get_parsed_content("train#strategy")
    assert (s.use_fixed, s.use_dynamic, s.use_cut) == (fixed, dynamic, cut)
    n1, n2 = s.networks
    assert type(n1) is type(n2) and n1 is not n2
    assert not torch.equal(next(n1.parameters()), next(n2.parameters()))  # different initialisations


def test_co_training_control_has_no_unlabeled_data(tmp_path):
    """``control_no_unlabeled.yaml`` keeps the method's strategy and gives it an empty unlabelled loader."""
    import json

    rec = {"image": "x.nii.gz", "label": "y.nii.gz"}
    (tmp_path / "datalist.json").write_text(json.dumps({"labeled": [rec], "unlabeled": [{"image": "u.nii.gz"}] * 3,
                                                        "validation": [rec]}))
    counts = {}
    for extra in ([], ["control_no_unlabeled.yaml"]):
        parser = ConfigParser()
        parser.read_config(config_list(FD, "train", "cpu_protocol", *extra))
        parser["bundle_root"] = str(BUNDLES / "fixed_dynamic_pl_la")
        parser["dataset_dir"] = str(tmp_path)
        counts[bool(extra)] = len(parser.get_parsed_content("train#unlabeled_dataset#data"))
        assert parser.get_parsed_content("train#strategy").use_dynamic
    assert counts == {False: 3, True: 0}


def _lr_changes(scheduler, iterations: int) -> list[tuple[int, float]]:
    """(iteration, new learning rate) wherever the rate used at an iteration differs from the one before."""
    opt = scheduler.optimizer
    opt.step()  # no gradients: a no-op that keeps the scheduler from warning about the call order
    lrs = []
    for _ in range(iterations):
        lrs.append(opt.param_groups[0]["lr"])
        scheduler.step()
    return [(i + 1, lrs[i]) for i in range(1, iterations) if lrs[i] != lrs[i - 1]]


@pytest.mark.parametrize("origin, changes", [("self_training", [4501, 7001, 9501, 12001, 14501]),
                                             ("run", [2501, 5001, 7501, 10001, 12501, 15001])])
def test_bcp_step_schedule_counts_from_self_training(origin, changes):
    """BCP restarts its iteration counter after the 2,000 pre-training iterations: x0.1 every 2,500 of the 15,000
    self-training iterations. ``lr_step_origin: run`` counts from the first iteration instead."""
    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train"))
    parser["lr_step_origin"] = origin
    parser["network_def"] = {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}
    parser["use_graph"] = False
    got = _lr_changes(parser.get_parsed_content("lr_scheduler"), 17000)
    assert [i for i, _ in got] == changes
    assert [lr for _, lr in got] == pytest.approx([0.01 * 0.1**k for k in range(1, len(changes) + 1)])


def test_schedule_switch():
    """CPU protocol v1: BCP's steps scaled to 7/24, 14/24 and 21/24 of the run; ``schedule_poly.yaml``: poly decay over
    the whole run, as the other bundles."""
    _, parser = strategy("cpu_protocol_v1")
    assert [i for i, _ in _lr_changes(parser.get_parsed_content("lr_scheduler"), 1200)] == [351, 701, 1051]
    _, parser = strategy("cpu_protocol_v1", "schedule_poly.yaml")
    poly = parser.get_parsed_content("lr_scheduler")
    assert isinstance(poly, torch.optim.lr_scheduler.PolynomialLR) and poly.total_iters == 1200
    opt = poly.optimizer
    opt.step()  # no gradients: a no-op that keeps the scheduler from warning about the call order
    for _ in range(600):
        poly.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9, rel=1e-6)


def _lambdas(tsa, iterations: int) -> list[float]:
    """λ at iterations 1..``iterations`` as the attached handler sets it (ignite counts from 1)."""
    from types import SimpleNamespace

    out = []
    for i in range(1, iterations + 1):
        tsa.ramp(SimpleNamespace(state=SimpleNamespace(iteration=i)))  # its ignite scheduler, as attached
        out.append(tsa.lam)
    return out


@pytest.mark.parametrize("origin", ["self_training", "run"])
def test_tsa_lambda_ramp_origin(origin):
    """Full protocol: λ is 0 through the 2,000 pre-training iterations and at the first self-training one, then
    grows by λ0 / 15,000 per iteration (one step short of λ0 = 0.25 at iteration 17,000, as before this switch);
    ``tsa_ramp_origin: run`` ramps from iteration 1."""
    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train"))
    parser["tsa_ramp_origin"] = origin
    parser["network_def"] = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    lam = _lambdas(parser.get_parsed_content("tsa"), 17001)
    start = 2000 if origin == "self_training" else 0
    assert lam[start] == 0.0 and max(lam[:start + 1]) == 0.0  # iteration start+1: the first TSA iteration
    assert lam[start + 1] == pytest.approx(0.25 / (17000 - start))
    assert lam[9999] == pytest.approx(0.25 * (9999 - start) / (17000 - start))
    assert lam[16999] == pytest.approx(0.25 * (16999 - start) / (17000 - start))  # iteration 17,000: the last


def test_cpu_protocol_v1_keeps_the_run_ramp():
    """The LA-1.25mm (v1) rows were made with λ ramping from the first iteration: cpu_protocol_v1.yaml keeps that;
    v2 (cpu_protocol.yaml) ramps from the start of self-training."""
    _, parser = strategy("cpu_protocol_v1")
    assert parser.get_parsed_content("tsa").ramp_start == 0
    _, parser = strategy()
    assert parser.get_parsed_content("tsa").ramp_start == 500


def test_run_shorter_than_pre_training_keeps_lambda_at_zero():
    """``--num_iterations`` below ``pretrain_iterations`` (a short test run, a small MONAI Label retrain) builds, and
    TSA's λ stays 0 through it; a negative start is refused."""
    from ssmis.tsa import TransferableSemanticAugmentation

    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train"))
    parser["network_def"] = {"_target_": "torch.nn.Conv3d", "in_channels": 1, "out_channels": 2, "kernel_size": 1}
    parser["num_iterations"], parser["val_interval"] = 50, 10
    tsa = parser.get_parsed_content("tsa")
    assert tsa.ramp_iterations == 50 and tsa.ramp_start == 50
    assert max(_lambdas(tsa, 50)) == 0.0
    with pytest.raises(ValueError, match="ramp_start"):
        TransferableSemanticAugmentation(torch.nn.Conv3d(1, 2, 1), num_classes=2, ramp_start=-1)


def test_graph_head_lives_on_the_training_device():
    # the GCN/MLP head is trained with the network, so it must be on @device (on a GPU run, CPU weights would crash)
    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train", "cpu_protocol"))
    parser["bundle_root"] = str(BUNDLES / "transmedseg_la")
    parser["device"] = "$torch.device('meta')"
    head = parser.get_parsed_content("graph_loss")
    assert {p.device.type for p in head.parameters()} == {"meta"}


def test_graph_loss_switches_are_reachable_by_override():
    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train", "cpu_protocol"))
    parser["bundle_root"] = str(BUNDLES / "transmedseg_la")
    parser["graph_loss_def#normalize"] = False
    parser["graph_reduction"] = "nodes"
    head = parser.get_parsed_content("graph_loss")
    assert head.normalize is False and head.reduction == "nodes"


def _tms_parser(**overrides) -> ConfigParser:
    """transmedseg_la's training config (+ cpu_protocol) with ``overrides``."""
    parser = ConfigParser()
    parser.read_config(config_list(TMS, "train", "cpu_protocol"))
    parser["bundle_root"] = str(BUNDLES / TMS)
    parser.update(overrides)
    return parser


def test_graph_term_switched_off_builds_nothing():
    """``use_graph: false``: no GCN/MLP head is built, optimised or checkpointed, and the strategy has no graph term."""
    for use_graph in (True, False):
        parser = _tms_parser(use_graph=use_graph)
        head = parser.get_parsed_content("graph_loss")
        params = sum(p.numel() for g in parser.get_parsed_content("optimizer").param_groups for p in g["params"])
        network = sum(p.numel() for p in parser.get_parsed_content("network").parameters())
        assert (parser.get_parsed_content("train#strategy").graph_loss is head) and (
            parser.get_parsed_content("checkpoint_dict#graph_loss") is head)
        if use_graph:
            assert head is not None and params == network + sum(p.numel() for p in head.parameters())
        else:
            assert head is None and params == network


def test_tsa_switched_off_builds_nothing():
    """``use_tsa: false``: no TSA object, so no hook on the network keeping its last feature map, no λ ramp and no
    checkpoint entry (ResumableCheckpoint leaves None entries out)."""
    for use_tsa in (True, False):
        parser = _tms_parser(use_tsa=use_tsa)
        strategy = parser.get_parsed_content("train#strategy")
        entry = parser.get_parsed_content("checkpoint_dict#tsa")
        hooks = sum(len(m._forward_hooks) for m in parser.get_parsed_content("network").modules())
        if use_tsa:  # the strategy attaches it (no handler list names it)
            assert strategy.tsa is entry and hooks == 2  # TSA's classifier tap and the graph term's
        else:
            assert strategy.tsa is None and entry is None
            assert hooks == 1  # the graph term's tap alone


def test_mean_teacher_consistency_weight_ablation():
    """``ablation_consistency_1.0.yaml`` raises w0 to 1.0 and keeps the v2 ramp (a quarter of the run)."""
    parser = ConfigParser()
    parser.read_config(config_list("mean_teacher_la", "train", "cpu_protocol", "ablation_consistency_1.0.yaml"))
    parser["bundle_root"] = str(BUNDLES / "mean_teacher_la")
    ramp = parser.get_parsed_content("train#rampup")
    assert ramp.w0 == 1.0 and ramp.length == 300
    assert parser.get_parsed_content("train#strategy").consistency_weight is ramp


def test_mean_teacher_ramp_quarter_ablation_on_acdc():
    """``ablation_ramp_quarter.yaml`` ends the ACDC mean teacher's ramp at 500 of 2,000 iterations (the default
    ramps over the whole run), w0 unchanged."""
    def ramp(*extra: str):
        parser = ConfigParser()
        parser.read_config(config_list("mean_teacher_acdc", "train", "cpu_protocol", *extra))
        parser["bundle_root"] = str(BUNDLES / "mean_teacher_acdc")
        return parser.get_parsed_content("train#rampup")

    default, quarter = ramp(), ramp("ablation_ramp_quarter.yaml")
    assert (default.length, quarter.length) == (2000, 500) and default.w0 == quarter.w0 == 0.1


def test_the_teacher_runs_as_bcp_runs_it_with_one_override():
    """``ema_buffers``: the EMA teacher in eval mode with the student's BatchNorm statistics (default), or in train
    mode (batch statistics, dropout on) as BCP's code runs it: ignite's ``EMAHandler(handle_buffers=...)``."""
    for value, training in (("copy", False), ("ema_train", True)):
        parser = _tms_parser()
        parser["ema_buffers"] = value
        teacher = parser.get_parsed_content("train#strategy").teacher
        assert teacher is parser.get_parsed_content("train#ema").ema_model and teacher.training is training


def test_pretraining_loss_follows_bcp_per_dataset():
    """The full protocol pre-trains as BCP's LA code (the whole image) on LA and as its ACDC code (per region) on
    ACDC; the LA CPU protocols keep the per-region loss their rows were made with."""
    def pretrain_loss(bundle, *names):
        parser = ConfigParser()
        parser.read_config(config_list(bundle, *names))
        parser["bundle_root"] = str(BUNDLES / bundle)
        return parser.get_parsed_content("train#strategy").pretrain_loss

    assert pretrain_loss(TMS, "train") == "whole"
    assert pretrain_loss(TMS, "train", "cpu_protocol") == "region"
    assert pretrain_loss(TMS, "train", "cpu_protocol", "cpu_protocol_v1") == "region"
    assert pretrain_loss("transmedseg_acdc", "train") == "region"
