"""Every ablation config of transmedseg_la builds the strategy it names."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLES

CFG = BUNDLES / "transmedseg_la" / "configs"


def strategy(*extra: str):
    parser = ConfigParser()
    parser.read_config([str(CFG / "train.yaml"), str(CFG / "cpu_protocol.yaml"), *[str(CFG / e) for e in extra]])
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


def test_tsa_on_mean_teacher():
    s, parser = strategy("ablation_tsa_mean_teacher.yaml")
    assert type(s).__name__ == "MeanTeacherStrategy" and s.tsa is not None
    assert parser["train#handlers"][-1].replace("::", "#") == "@train#rampup"  # merged into the list, not replacing it
    assert len(parser["train#handlers"]) > 5


@pytest.mark.parametrize("beta", ["0.1", "0.2", "0.4", "0.6", "0.8", "1.0"])
def test_beta_sweep(beta):
    s, _ = strategy(f"ablation_beta_{beta}.yaml")
    assert s.tsa.beta == float(beta)


FD = BUNDLES / "fixed_dynamic_pl_la" / "configs"


@pytest.mark.parametrize(
    "extra, fixed, dynamic, cut",
    [("ablation_fixed_only.yaml", True, False, True), ("ablation_dynamic_only.yaml", False, True, True),
     ("ablation_both_no_cut.yaml", True, True, False), ("ablation_both_cut.yaml", True, True, True)],
)
def test_co_training_ablations(extra, fixed, dynamic, cut):
    parser = ConfigParser()
    parser.read_config([str(FD / "train.yaml"), str(FD / "cpu_protocol.yaml"), str(FD / extra)])
    parser["bundle_root"] = str(BUNDLES / "fixed_dynamic_pl_la")
    s = parser.get_parsed_content("train#strategy")
    assert (s.use_fixed, s.use_dynamic, s.use_cut) == (fixed, dynamic, cut)
    n1, n2 = s.networks
    assert type(n1) is type(n2) and n1 is not n2
    assert not torch.equal(next(n1.parameters()), next(n2.parameters()))  # different initialisations


def test_schedule_switch():
    """Default: BCP's step schedule; ``schedule_poly.yaml``: poly decay over the whole run, as the other bundles."""
    _, parser = strategy()
    step = parser.get_parsed_content("lr_scheduler")
    assert isinstance(step, torch.optim.lr_scheduler.StepLR) and step.step_size == 1200 * 7 // 24
    _, parser = strategy("schedule_poly.yaml")
    poly = parser.get_parsed_content("lr_scheduler")
    assert isinstance(poly, torch.optim.lr_scheduler.PolynomialLR) and poly.total_iters == 1200
    opt = poly.optimizer
    opt.step()  # no gradients: a no-op that keeps the scheduler from warning about the call order
    for _ in range(600):
        poly.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**0.9, rel=1e-6)
