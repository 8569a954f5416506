"""Shipped weights: ``python -m ssmis.bundle ship`` writes them checked and hashed, inference and the export find
them, and the MONAI Label app starts from them when it has no model of its own."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from conftest import BUNDLES, ROOT
from ssmis.bundle.__main__ import main as bundle_main
from ssmis.bundle.layout import config_files
from ssmis.bundle.weights import read_state_dict, sha256, shipped_weights


def _bundle(tmp_path: Path, name: str = "supervised_la") -> Path:
    """A copy of the bundle's configs and the shared ones (and the shared LICENSE), as in the repository."""
    shutil.copytree(BUNDLES / name / "configs", tmp_path / name / "configs")
    shutil.copytree(BUNDLES / "common" / "configs", tmp_path / "common" / "configs")
    shutil.copyfile(BUNDLES / "common" / "LICENSE", tmp_path / "common" / "LICENSE")
    return tmp_path / name


def _cpu_protocol_weights(bundle: Path, path: Path, wrap: bool = False) -> dict:
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "inference", "cpu_protocol"))
    parser["bundle_root"] = str(bundle)
    state = parser.get_parsed_content("network_def").state_dict()
    torch.save({"model": state} if wrap else state, path)
    return state


def _ship(bundle: Path, source: Path, *extra: str) -> int:
    return bundle_main(["ship", str(bundle), "--source", str(source), "--configs", "cpu_protocol.yaml", "--val-dice",
                        "0.8", "--command", "python benchmarks/la_protocol.py --protocol cpu-v2", *extra])


def test_ship_writes_half_precision_weights_and_a_record(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    state = _cpu_protocol_weights(bundle, tmp_path / "run.pt", wrap=True)  # model_best.pt's form is unwrapped
    assert _ship(bundle, tmp_path / "run.pt") == 0
    record = shipped_weights(bundle)
    assert record["configs"] == ["cpu_protocol"] and record["val_dice"] == 0.8 and record["dtype"] == "float16"
    shipped = read_state_dict(record["path"])
    assert shipped.keys() == state.keys()
    assert all(torch.allclose(shipped[k].float(), state[k].float(), rtol=1e-3, atol=1e-3) for k in state)
    # inference with shipped_weights.yaml merged last reads that file into a float32 network
    parser = ConfigParser()
    parser.read_config(config_files(bundle, "inference", "cpu_protocol", "shipped_weights"))
    parser["bundle_root"] = str(bundle)
    assert Path(parser.get_parsed_content("ckpt_path")) == Path(record["path"])
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(shipped, strict=True)
    assert next(net.parameters()).dtype == torch.float32


def test_weights_of_another_network_or_a_changed_file_are_refused(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    torch.save({"conv.weight": torch.zeros(2, 2)}, tmp_path / "other.pt")
    with pytest.raises(SystemExit):
        _ship(bundle, tmp_path / "other.pt")
    assert ("other.pt: not the weights of supervised_la's network_def in inference + cpu_protocol"
            in capsys.readouterr().err)
    assert shipped_weights(bundle) is None  # nothing written
    _cpu_protocol_weights(bundle, tmp_path / "run.pt")
    _ship(bundle, tmp_path / "run.pt")
    weights = bundle / "weights" / "model.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"damaged!")
    with pytest.raises(ValueError, match="model.pt: SHA-256 differs"):
        shipped_weights(bundle)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt: holds a list"):
        read_state_dict(tmp_path / "list.pt")


def test_the_export_ships_them_as_models_model_pt(tmp_path):
    from ssmis.bundle.export import export_bundle

    bundle = _bundle(tmp_path)
    shutil.copytree(BUNDLES / "common" / "docs", tmp_path / "common" / "docs")
    _cpu_protocol_weights(bundle, tmp_path / "run.pt")
    _ship(bundle, tmp_path / "run.pt")
    export_bundle(bundle, tmp_path / "dist")
    out = tmp_path / "dist" / "supervised_la"
    assert (read_state_dict(out / "models" / "model.pt").keys()
            == read_state_dict(bundle / "weights" / "model.pt").keys())
    assert "inference.yaml + cpu_protocol.yaml" in (out / "large_files.yml").read_text()
    assert not (out / "configs" / "shipped_weights.yaml").exists()  # a repository-only switch
    exported = json.loads((out / "models" / "weights.json").read_text())  # the record travels, with the new hash
    assert exported["configs"] == ["cpu_protocol"] and exported["sha256"] == sha256(out / "models" / "model.pt")
    # a trial run left in the bundle's folder (training without --output_dir) is not exported in their place
    (bundle / "models").mkdir()
    trial = {k: torch.zeros_like(v) for k, v in read_state_dict(bundle / "weights" / "model.pt").items()}
    torch.save(trial, bundle / "models" / "model.pt")
    export_bundle(bundle, tmp_path / "dist")
    packed = read_state_dict(out / "models" / "model.pt")
    assert all(torch.equal(packed[k], v) for k, v in read_state_dict(bundle / "weights" / "model.pt").items())
    export_bundle(bundle, tmp_path / "dist", weights=bundle / "models" / "model.pt")  # named: that one
    assert all(not packed.any() for packed in read_state_dict(out / "models" / "model.pt").values())
    assert not (out / "models" / "weights.json").exists()  # no record: nothing said about a trial run's configs


def test_the_app_starts_from_the_shipped_weights_that_fit_its_configs(tmp_path):
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.configs.supervised_la import SupervisedLA

    bundle = _bundle(tmp_path)
    _cpu_protocol_weights(bundle, tmp_path / "run.pt")
    _ship(bundle, tmp_path / "run.pt")

    def model_file(extra: str, model_dir: Path | None = None, **conf) -> Path:
        nonlocal config
        config = SupervisedLA()
        model_dir = model_dir or tmp_path / f"model_{extra}_{len(conf)}"
        config.init("supervised_la", str(model_dir), {"extra_config": extra, "device": "cpu", **conf}, None,
                    bundles_dir=str(tmp_path))
        return model_dir / "supervised_la" / "model.pt"

    config = None
    served = model_file("cpu_protocol.yaml")
    assert (served.is_file()
            and read_state_dict(served).keys() == read_state_dict(bundle / "weights" / "model.pt").keys())
    # restarted on the same model_dir without the configs they fit: a 409 that says how to start, not wrong labels
    from lib.infers.bundle_predictor import ModelNotTrainedError

    model_file("", model_dir=served.parent.parent)
    with pytest.raises(ModelNotTrainedError, match="Start the server --conf extra_config cpu_protocol.yaml"):
        config.predictor._load()
    # weights copied in by hand afterwards are not what the record speaks of: judged by loading them alone
    from lib.served_weights import fit_mismatch

    shutil.copyfile(tmp_path / "run.pt", served)
    assert fit_mismatch(served, []) is None
    assert not model_file("cpu_protocol.yaml", shipped_weights="false").exists()  # switched off
    (tmp_path / "tiny.yaml").write_text("patch_size: [16, 16, 16]\n")
    assert not model_file(str(tmp_path / "tiny.yaml")).exists()  # other configs: the weights may not fit
    record = json.loads((bundle / "weights" / "weights.json").read_text())
    assert record["sha256"] and record["command"].startswith("python benchmarks/la_protocol.py")


@pytest.mark.slow
def test_an_unpacked_export_segments_with_the_shipped_weights(tmp_path):
    """The zip, unpacked outside the repository, runs inference.yaml + cpu_protocol.yaml on a NIfTI volume with
    the weights it ships (models/model.pt), from its own folder, as a zoo user would."""
    import subprocess
    import zipfile

    import nibabel as nib
    import numpy as np

    from ssmis.bundle.export import export_bundle

    bundle = _bundle(tmp_path / "repo")
    shutil.copytree(BUNDLES / "common" / "docs", tmp_path / "repo" / "common" / "docs")
    _cpu_protocol_weights(bundle, tmp_path / "run.pt")
    _ship(bundle, tmp_path / "run.pt")
    archive = export_bundle(bundle, tmp_path / "dist")
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "user")
    unpacked = tmp_path / "user" / "supervised_la"
    images = tmp_path / "images"
    (images / "imagesTs").mkdir(parents=True)
    volume = np.random.default_rng(0).normal(size=(40, 36, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([1.25, 1.25, 1.25, 1.0])), str(images / "imagesTs" / "la_001.nii.gz"))
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
           "['configs/inference.yaml','configs/cpu_protocol.yaml']", "--dataset_dir", str(images),
           "--output_dir", str(tmp_path / "pred"), "--device", "$torch.device('cpu')"]
    proc = subprocess.run(cmd, cwd=unpacked, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    outputs = list((tmp_path / "pred").rglob("*.nii.gz"))
    assert len(outputs) == 1 and nib.load(str(outputs[0])).shape[:3] == volume.shape


def test_weights_of_other_configs_stop_the_run_in_one_line_that_names_them(tmp_path):
    from ssmis.bundle.weights import _network_def, check_weights_fit

    bundle = _bundle(tmp_path)
    _cpu_protocol_weights(bundle, tmp_path / "cpu.pt")
    assert _ship(bundle, tmp_path / "cpu.pt") == 0
    shipped = bundle / "weights" / "model.pt"
    check_weights_fit(_network_def(bundle, ["cpu_protocol"]), shipped)  # the configs they fit: no complaint
    full = _network_def(bundle, [])  # the full protocol's V-Net
    with pytest.raises(ValueError, match=r"They fit inference \+ cpu_protocol: merge cpu_protocol") as err:
        check_weights_fit(full, shipped)
    assert len(str(err.value)) < 800 and "missing" in str(err.value)
    # on a command line, the configs the record names must be there too: ACDC's CPU weights fit the full network
    from ssmis.bundle import RunError

    without = ["run", "--config_file", repr(config_files(bundle, "inference", "shipped_weights"))]
    with pytest.raises(RunError, match="trained with cpu_protocol, which this run leaves out"):
        check_weights_fit(_network_def(bundle, ["cpu_protocol"]), shipped, argv=without)
    check_weights_fit(_network_def(bundle, ["cpu_protocol"]), shipped, argv=[
        "run", "--config_file", repr(config_files(bundle, "inference", "cpu_protocol", "shipped_weights"))])
    with pytest.raises(RunError, match="leaves out"):  # python-fire's --config-file spelling is read too
        check_weights_fit(_network_def(bundle, ["cpu_protocol"]), shipped, argv=["run", "--config-file", without[2]])
    # a file trained over the shipped one (training inside an export) is not what the record speaks of
    copy = tmp_path / "export" / "models"
    copy.mkdir(parents=True)
    shutil.copyfile(bundle / "weights" / "weights.json", copy / "weights.json")
    _cpu_protocol_weights(bundle, copy / "model.pt")
    check_weights_fit(_network_def(bundle, ["cpu_protocol"]), copy / "model.pt", argv=without)
    with pytest.raises(ValueError, match="trained with: merge the same ones"):  # a run's weights: no record to read
        check_weights_fit(full, tmp_path / "cpu.pt")
    with pytest.warns(UserWarning, match="--ckpt_path"):
        check_weights_fit(full, tmp_path / "none.pt")
    with pytest.raises(RunError, match="none.pt: no weight file; train the bundle first, pass --ckpt_path"):
        check_weights_fit(full, tmp_path / "none.pt", argv=without)


def test_ship_and_export_refuse_bad_arguments_in_one_line(tmp_path, capsys):
    bundle = _bundle(tmp_path)
    _cpu_protocol_weights(bundle, tmp_path / "run.pt")
    for dice in ("nan", "7", "-1", "82.97"):  # NaN is not JSON; 82.97 is a percentage
        with pytest.raises(SystemExit):
            bundle_main(["ship", str(bundle), "--source", str(tmp_path / "run.pt"), "--val-dice", dice,
                         "--command", "c"])
        assert "a Dice score lies from 0 to 1" in capsys.readouterr().err
    assert shipped_weights(bundle) is None
    (tmp_path / "afile").write_text("")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    for extra, words in ((["--output", str(tmp_path / "afile")], "afile is a file, not a folder"),
                         (["--output", str(tmp_path / "dist"), "--weights", str(tmp_path / "junk.pt")],
                          "junk.pt: cannot read the weights")):
        with pytest.raises(SystemExit) as e:
            bundle_main(["export", str(bundle), *extra])
        err = capsys.readouterr().err
        assert e.value.code == 2 and words in err and "Traceback" not in err


def test_ship_sets_the_metadata_score_and_every_bundle_shows_its_weights_score(tmp_path):
    bundle = _bundle(tmp_path)
    meta_file = bundle / "configs" / "metadata.json"
    before = json.loads(meta_file.read_text())
    _cpu_protocol_weights(bundle, tmp_path / "model.pt")
    assert _ship(bundle, tmp_path / "model.pt") == 0
    after = json.loads(meta_file.read_text())
    assert after["eval_metrics"] == {**before.get("eval_metrics", {}), "mean_dice": 0.8}
    after.pop("eval_metrics"), before.pop("eval_metrics", None)
    assert after == before  # nothing else changed
    for folder in sorted(BUNDLES.iterdir()):  # the repository's bundles: metadata and weights.json agree
        record = folder / "weights" / "weights.json"
        if record.is_file():
            meta = json.loads((folder / "configs" / "metadata.json").read_text())
            assert meta.get("eval_metrics", {}).get("mean_dice") == json.loads(record.read_text())["val_dice"], \
                folder.name
