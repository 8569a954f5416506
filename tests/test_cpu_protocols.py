"""The CPU protocol "LA-1.25mm v2" (``cpu_protocol.yaml``) settings do what their comments say, and
``cpu_protocol_v1.yaml`` restores "LA-1.25mm" (mechanics only, not accuracy)."""

from __future__ import annotations

import warnings

import pytest
from monai.bundle import ConfigParser

from conftest import BUNDLES, config_list

V2 = ("train", "cpu_protocol")
V1 = ("train", "cpu_protocol", "cpu_protocol_v1")


def parser_for(bundle: str, *names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(config_list(bundle, *names))
    parser["bundle_root"] = str(BUNDLES / bundle)
    return parser


def stage_settings(p: ConfigParser) -> tuple:
    """What ``train#pretraining`` (a ``PretrainingStage``) is built with; building it would build the evaluator."""
    stage = p["train#pretraining"]
    return tuple(p.get_parsed_content(stage[k][1:]) for k in ("iterations", "select", "reset_optimizer"))


def test_bcp_keeps_its_stages_and_batch():
    p = parser_for("transmedseg_la", *V2)
    assert p.get_parsed_content("val_interval") == 100
    assert p.get_parsed_content("batch_size") == 4 and p.get_parsed_content("unlabeled_batch_size") == 4  # 2 + 2 halves
    assert p.get_parsed_content("pretrain_iterations") == 500
    assert stage_settings(p) == (500, "best", True)
    assert ("@train#pretraining" in [h.replace("::", "#") for h in p["train#method_handlers"]]
            and p["checkpoint_dict"]["pretraining"])


def test_bcp_self_training_learning_rate_restarts_and_decays_to_zero():
    p = parser_for("transmedseg_la", *V2)
    opt, sched = p.get_parsed_content("optimizer"), p.get_parsed_content("lr_scheduler")
    lrs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SequentialLR's own deprecation notice
        for _ in range(1200):
            lrs.append(opt.param_groups[0]["lr"])
            sched.step()
    assert lrs[0] == lrs[499] == lrs[500] == pytest.approx(0.01)  # constant pre-training; self-training starts at 0.01
    assert lrs[500] > lrs[800] > lrs[1100] > lrs[1199] and lrs[1199] < 1e-4


def test_the_v1_protocol_keeps_its_recorded_settings():
    """The LA-1.25mm rows were made without a selected pre-trained state or an optimiser reset."""
    p = parser_for("transmedseg_la", *V1)
    assert stage_settings(p) == (150, "last", False)
    assert p.get_parsed_content("val_interval") == 200 and p.get_parsed_content("batch_size") == 2


def test_mean_teacher_ramp_ends_at_a_quarter_of_the_run():
    ramp = parser_for("mean_teacher_la", *V2).get_parsed_content("train#rampup")
    assert ramp.length == 300 and ramp.at(300) == pytest.approx(0.1) and ramp.at(150) > 0.02
    v1 = parser_for("mean_teacher_la", *V1).get_parsed_content("train#rampup")
    assert v1.length == 1200 and v1.at(600) < 0.03


@pytest.mark.parametrize("bundle", ["supervised_la", "fixed_dynamic_pl_la"])
def test_the_other_bundles_only_validate_more_often(bundle):
    v1, v2 = parser_for(bundle, *V1), parser_for(bundle, *V2)
    assert v2.get_parsed_content("val_interval") == 100
    for key in ("batch_size", "num_iterations", "learning_rate", "patch_size"):
        assert v1.get_parsed_content(key) == v2.get_parsed_content(key)


@pytest.mark.parametrize("bundle", ["supervised_la", "mean_teacher_la", "transmedseg_la", "fixed_dynamic_pl_la"])
def test_the_v2_layer_of_the_recorded_commands_changes_nothing(bundle):
    """The v2 rows' commands and records name ``cpu_protocol_v2`` after ``cpu_protocol``: it is now a no-op, so they
    build the configuration ``cpu_protocol`` alone builds."""
    alone, recorded = parser_for(bundle, *V2), parser_for(bundle, *V2, "cpu_protocol_v2")
    assert recorded.get() == alone.get()
    assert parser_for(bundle, *V1).get() != alone.get()
