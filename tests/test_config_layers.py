"""Config layers: an ACDC bundle merges the shared configs, its method's, the ACDC layer's, then its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import BUNDLES
from ssmis.bundle.layout import config_files, config_layers


def _rel(files: list[str]) -> list[str]:
    return [str(Path(f).relative_to(BUNDLES.resolve())) for f in files]


def test_an_acdc_bundle_merges_shared_method_task_and_own_configs_in_that_order():
    assert _rel(config_files(BUNDLES / "transmedseg_acdc", "train", "cpu_protocol")) == [
        "common/configs/train.yaml", "transmedseg_la/configs/train.yaml", "common/acdc/configs/train.yaml",
        "transmedseg_acdc/configs/train.yaml",
        "common/configs/cpu_protocol.yaml", "transmedseg_la/configs/cpu_protocol.yaml",
        "common/acdc/configs/cpu_protocol.yaml", "transmedseg_acdc/configs/cpu_protocol.yaml"]
    # a method's ablation reaches its ACDC bundle too; an LA bundle has no layers
    assert _rel(config_files(BUNDLES / "transmedseg_acdc", "ablation_no_tsa")) == [
        "transmedseg_la/configs/ablation_no_tsa.yaml"]
    assert [p.parent.name for p in config_layers(BUNDLES / "supervised_la")] == ["common", "supervised_la"]


def test_a_bad_layers_file_is_named(tmp_path):
    bundle = tmp_path / "x_acdc"
    shutil.copytree(BUNDLES / "common" / "configs", tmp_path / "common" / "configs")
    (bundle / "configs").mkdir(parents=True)
    spec = bundle / "configs" / "layers.json"
    spec.write_text("{not json")
    with pytest.raises(ValueError, match="layers.json: expected"):
        config_files(bundle, "train")
    spec.write_text(json.dumps({"layers": ["nowhere_la"]}))
    with pytest.raises(ValueError, match="layer 'nowhere_la' has no folder"):
        config_files(bundle, "train")
    spec.write_text(json.dumps({"layers": []}))
    with pytest.raises(FileNotFoundError, match="no nope.yaml in"):
        config_files(bundle, "nope")


def test_bundle_root_comes_from_the_last_own_config_or_is_asked_for(tmp_path, monkeypatch, capsys):
    from ssmis.bundle.__main__ import main as bundle_main
    from ssmis.bundle import RunError
    from ssmis.bundle.layout import default_bundle_root

    own = config_files(BUNDLES / "transmedseg_la", "train", "cpu_protocol")
    assert default_bundle_root(["run", "--config_file", repr(own)]) == str((BUNDLES / "transmedseg_la").resolve())
    shared = config_files(BUNDLES / "supervised_la", "inference", "shipped_weights")
    monkeypatch.chdir(tmp_path)  # not a bundle: "." would look for weights/ and write eval/ here
    with pytest.raises(RunError, match="--bundle_root"):
        default_bundle_root(["run", "--config_file", repr(shared)])
    (tmp_path / "configs").mkdir()  # an exported bundle's own folder
    (tmp_path / "configs" / "metadata.json").write_text("{}")
    assert default_bundle_root(["run", "--config_file", repr(shared)]) == "."
    assert bundle_main(["--bundles", str(BUNDLES), "configs", "supervised_la", "inference", "shipped_weights"]) == 0
    assert "add --bundle_root" in capsys.readouterr().err
    assert bundle_main(["--bundles", str(BUNDLES), "configs", "supervised_la", "train"]) == 0
    assert capsys.readouterr().err == ""


def test_the_config_files_are_read_in_every_spelling_monai_accepts(tmp_path):
    from ssmis.bundle import config_files_on_command_line

    a, b = str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")
    args = tmp_path / "args.json"
    args.write_text('{"config_file": ["%s", "%s"]}' % (a, b))
    for argv in (["run", "--config_file", repr([a, b])], ["run", "--config-file", repr([a, b])],
                 ["run", f"--config_file={a},{b}"], ["run", "--args_file", str(args)]):
        assert config_files_on_command_line(argv) == [a, b], argv
    assert config_files_on_command_line(["monailabel", "start_server", "--app", "x"]) == []
