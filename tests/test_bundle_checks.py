"""The checks every bundle runs first: overrides that name no config key, and settings outside their range."""

from __future__ import annotations

import sys

import pytest

from conftest import config_list, configs
from ssmis.bundle import SETTING_RULES, RunError, check_overrides, check_settings

TRAIN = configs("transmedseg_la", "train")


def argv(*options: str, files: str = TRAIN) -> list[str]:
    return ["monai.bundle", "run", "--config_file", files, *options]


def test_known_overrides_pass():
    check_overrides(argv("--num_iterations", "5", "--train#trainer#max_epochs", "2", "--run_id", "run",
                         "--logging_file=x.conf", "--_meta_#version", "9"))
    # MONAI's "::" separator, python-fire's spellings, run's workflow arguments and flags after a bare "--"
    check_overrides(argv("--backbone_def::features", "[4]", "--num-iterations", "5", "--noamp", "--workflow_type",
                         "train", "--local-rank=0", "--", "--trace"))
    # a key that only an extra config file defines is known once that file is merged
    merged = configs("transmedseg_la", "train", "cpu_protocol")
    check_overrides(argv("--graph_layer", "down_4", files=merged))
    # MONAI's comma-separated form
    check_overrides(argv("--graph_layer", "down_4",
                         files=",".join(config_list("transmedseg_la", "train", "cpu_protocol"))))


def test_misspelt_override_is_named_with_a_suggestion(tmp_path):
    """On a command line the refusal is a ``SystemExit``: MONAI wraps any ``Exception`` of a config expression in a
    ``RuntimeError`` whose traceback buried the message; Python prints a ``SystemExit``'s message alone."""
    with pytest.raises(RunError, match=r"--num_iteration: not a key of .*train.yaml; did you mean --num_iterations"):
        check_overrides(argv("--num_iteration", "1000"))
    with pytest.raises(RunError, match="--trian#trainer: not a key"):
        check_overrides(argv("--trian#trainer", "x"))
    with pytest.raises(RunError, match="--trian::trainer: not a key"):
        check_overrides(argv("--trian::trainer", "x"))
    args = tmp_path / "args.json"
    args.write_text('{"config_file": "%s", "batchsize": 2}' % TRAIN)
    with pytest.raises(RunError, match="--batchsize: not a key"):
        check_overrides(argv("--args_file", str(args)))


def test_no_config_file_on_the_command_line_checks_nothing():
    check_overrides(["monailabel", "start_server", "--app", "x", "--unknown", "1"])


@pytest.mark.parametrize("key, value", [("num_iterations", 0), ("num_iterations", -500), ("batch_size", 2.5),
                                        ("pretrain_iterations", -1), ("lr_step_origin", "selftraining"),
                                        ("tsa_ramp_origin", None), ("teacher_mode", "Eval"), ("sw_average", "mean"),
                                        ("val_interval", True), ("amp", "false"), ("amp", 1),
                                        ("use_tsa", "false"), ("pretrain_reset_optimizer", "false"),
                                        ("pretrain_select", "first"), ("lcc", "false"), ("use_cut", "true"),
                                        ("use_fixed", 0), ("use_dynamic", "no"), ("pseudo_lcc", "false"),
                                        ("tsa_bidirectional", "true"), ("confidence_weighted", "false"),
                                        ("pretrain_restore_optimizer", "true"), ("ema_buffers", "train")])
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"--{key}: must be"):
        check_settings(**{key: value})


def test_good_settings_pass_and_unknown_rules_are_caught():
    check_settings(num_iterations=1, val_interval=200, batch_size=4, unlabeled_batch_size=4, sw_batch_size=1,
                   pretrain_iterations=0, lr_step_origin="run", tsa_ramp_origin="self_training", teacher_mode="eval",
                   sw_average="logits", amp=False, ema_buffers="ema_train", pretrain_restore_optimizer=True)
    assert {"num_iterations", "batch_size", "amp", "sw_average"} <= set(SETTING_RULES)
    with pytest.raises(KeyError, match="no rule for 'learning_rate'"):
        check_settings(learning_rate=0.01)


def test_every_switch_of_every_bundle_is_checked():
    """Each top-level true/false setting of a bundle's training config is in its ``checked`` list, so
    ``--<switch> false`` (a string to python-fire, and truthy) is refused instead of meaning true."""
    from monai.bundle import ConfigParser

    from conftest import BUNDLES
    from ssmis.bundle.layout import config_files

    bundles = sorted(p.parent.parent.name for p in BUNDLES.glob("*/configs/metadata.json"))
    assert len(bundles) >= 8
    for bundle in bundles:
        parser = ConfigParser()
        parser.read_config(config_files(BUNDLES / bundle, "train"))
        switches = {k for k, v in parser.get().items() if isinstance(v, bool)}
        assert switches, bundle
        assert switches <= set(parser["checked"]), (bundle, switches - set(parser["checked"]))


@pytest.mark.parametrize("bundle, override, words", [
    ("transmedseg_la", ["--num_iteration", "5"], "did you mean --num_iterations"),
    ("transmedseg_la", ["--num_iterations", "-500"], "--num_iterations: must be a positive"),
    ("transmedseg_la", ["--amp", "false"], "--amp: must be True or False"),
    # MONAI's SupervisedTrainer autocasts on CUDA only (this machine has none): amp would silently do nothing
    ("supervised_la", ["--amp", "True"], "--amp True: this bundle trains with MONAI's SupervisedTrainer"),
    ("supervised_acdc", ["--amp", "True"], "autocasts on CUDA only")])
def test_bundle_command_refuses_before_reading_data(tmp_path, monkeypatch, bundle, override, words):
    """Through ``monai.bundle run``'s own command line (python-fire, in this process): the run stops at once with the
    key named, before touching data, and the message is all that Python prints."""
    import fire
    import monai.bundle.__main__ as bundle_main
    import torch

    if bundle.startswith("supervised") and torch.cuda.is_available():
        pytest.skip("amp is refused on the CPU only")
    argv = ["run", "--config_file", configs(bundle, "train"), "--dataset_dir", str(tmp_path / "absent"), "--output_dir",
            str(tmp_path / "out"), *override]
    monkeypatch.setattr(sys, "argv", [bundle_main.__file__, *argv])
    with pytest.raises(RunError) as raised:  # not wrapped by MONAI: the message is what the user reads last
        fire.Fire(vars(bundle_main), command=argv)
    assert words in str(raised.value) and raised.value.code == str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_missing_or_malformed_datalist_stops_a_command_line_run_in_one_line(tmp_path):
    from ssmis.bundle import check_datalist

    run = ["run", "--config_file", str(TRAIN)]
    with pytest.raises(RunError, match=r"--dataset_dir: .*datalist.json not found"):
        check_datalist(str(tmp_path), argv=run)
    (tmp_path / "datalist.json").write_text('{"labeled": []}')
    with pytest.raises(RunError, match="has no key 'validation'"):
        check_datalist(str(tmp_path), argv=run)
    check_datalist(str(tmp_path / "absent"), argv=["pytest"])  # the zoo's checks initialise without data
    (tmp_path / "datalist.json").write_text('{"validation": []}')  # evaluation reads the validation list only
    check_datalist(str(tmp_path), ("validation",), argv=run)
