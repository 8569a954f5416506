"""The checks every bundle runs first: overrides that name no config key, and settings outside their range."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import BUNDLES, ROOT, configs
from ssmis.bundle import SETTING_RULES, check_overrides, check_settings

TRAIN = str(BUNDLES / "transmedseg_la" / "configs" / "train.yaml")


def argv(*options: str, files: str = TRAIN) -> list[str]:
    return ["monai.bundle", "run", "--config_file", files, *options]


def test_known_overrides_pass():
    check_overrides(argv("--num_iterations", "5", "--train#trainer#max_epochs", "2", "--run_id", "run",
                         "--logging_file=x.conf", "--_meta_#version", "9"))
    # MONAI's "::" separator, python-fire's spellings, run's workflow arguments and flags after a bare "--"
    check_overrides(argv("--network_def::features", "[4]", "--num-iterations", "5", "--noamp", "--workflow_type",
                         "train", "--local-rank=0", "--", "--trace"))
    # a key that only an extra config file defines is known once that file is merged
    merged = configs("transmedseg_la", "train.yaml", "cpu_protocol.yaml")
    check_overrides(argv("--eval_sw_stride", "0", files=merged))
    cpu = str(BUNDLES / "transmedseg_la" / "configs" / "cpu_protocol.yaml")
    check_overrides(argv("--eval_sw_stride", "0", files=f"{TRAIN},{cpu}"))  # MONAI's comma-separated form


def test_misspelt_override_is_named_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match=r"--num_iteration: not a key of .*train.yaml; did you mean --num_iterations"):
        check_overrides(argv("--num_iteration", "1000"))
    with pytest.raises(ValueError, match="--trian#trainer: not a key"):
        check_overrides(argv("--trian#trainer", "x"))
    with pytest.raises(ValueError, match="--trian::trainer: not a key"):
        check_overrides(argv("--trian::trainer", "x"))
    args = tmp_path / "args.json"
    args.write_text('{"config_file": "%s", "batchsize": 2}' % TRAIN)
    with pytest.raises(ValueError, match="--batchsize: not a key"):
        check_overrides(argv("--args_file", str(args)))


def test_no_config_file_on_the_command_line_checks_nothing():
    check_overrides(["monailabel", "start_server", "--app", "x", "--unknown", "1"])


@pytest.mark.parametrize("key, value", [("num_iterations", 0), ("num_iterations", -500), ("batch_size", 2.5),
                                        ("pretrain_iterations", -1), ("lr_step_origin", "selftraining"),
                                        ("tsa_ramp_origin", None), ("teacher_mode", "Eval"), ("sw_average", "mean"),
                                        ("val_interval", True), ("amp", "false"), ("amp", 1)])
def test_bad_settings_are_named(key, value):
    with pytest.raises(ValueError, match=f"--{key}: must be"):
        check_settings(**{key: value})


def test_good_settings_pass_and_unknown_rules_are_caught():
    check_settings(num_iterations=1, val_interval=200, batch_size=4, unlabeled_batch_size=4, sw_batch_size=1,
                   pretrain_iterations=0, lr_step_origin="run", tsa_ramp_origin="self_training", teacher_mode="eval",
                   sw_average="logits", amp=False)
    assert len(SETTING_RULES) == 11
    with pytest.raises(KeyError, match="no rule for 'learning_rate'"):
        check_settings(learning_rate=0.01)


@pytest.mark.parametrize("override, words", [(["--num_iteration", "5"], "did you mean --num_iterations"),
                                             (["--num_iterations", "-500"], "--num_iterations: must be a positive"),
                                             (["--amp", "false"], "--amp: must be True or False")])
def test_bundle_command_refuses_before_reading_data(tmp_path, override, words):
    """Through ``monai.bundle run`` itself: the run stops at once with the key named, before touching data."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", TRAIN, "--dataset_dir",
           str(tmp_path / "absent"), "--output_dir", str(tmp_path / "out"), *override]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert p.returncode != 0 and words in p.stderr
    assert not (tmp_path / "out").exists()
