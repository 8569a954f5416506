"""Every ablation config of transmedseg_la builds the strategy it names."""

from __future__ import annotations

import pytest
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
