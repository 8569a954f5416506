"""The MONAI model zoo's bundle checks, offline: what the zoo's review and CI ask of a bundle folder.

:func:`run_checks` runs each check of :data:`CHECKS` on an exported bundle (``python -m ssmis.bundle export``) and
returns ``{check: "pass" | "FAIL: <why>"}``; ``benchmarks/zoo_checks.py`` tabulates them for every bundle, and the
test suite asserts them.

- ``schema``: ``verify_metadata`` against a schema file (the zoo's, kept offline; nothing is downloaded);
- ``metadata values``: ``eval_metrics`` numbers, non-empty ``value_range``, ``supported_apps``, a data URL;
- ``train properties`` / ``infer properties``: ``ConfigWorkflow(...).check_properties()`` after ``initialize`` on a
  tiny synthetic dataset;
- ``net in/out``: ``verify_net_in_out`` on ``inference.yaml``'s ``network_def``;
- ``export``: ``ckpt_export`` (TorchScript) of a ``model.pt`` written the way training writes it, read as a plain
  state dict (no ``--key_in_ckpt``), whose forward matches the eager network;
- ``weights``: ``models/model.pt`` named in ``large_files.yml``;
- ``LOCAL_RANK``: ``multi_gpu_train.yaml`` picks the GPU by the local rank;
- ``literal bundle_root``: the configs' ``bundle_root`` is a plain string;
- ``data licence``: ``docs/data_license.txt``;
- ``README sections``: the sections of a zoo README.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from functools import partial
from pathlib import Path
from typing import Callable

__all__ = ["CHECKS", "README_SECTIONS", "run_checks"]

# the sections of a model-zoo README, matched case-insensitively against its headings
README_SECTIONS = ("overview", "data", "training configuration", "input", "output", "performance",
                   "commands", "references", "license")


def _configs(bundle: Path) -> Path:
    return bundle / "configs"


def check_schema(bundle: Path, schema: Path | None = None) -> None:
    """metadata.json against the model zoo's schema (``monai.bundle.verify_metadata``)."""
    from monai.bundle import verify_metadata

    if schema is None or not Path(schema).is_file():
        raise FileNotFoundError(f"{schema} (the offline copy of the zoo's metadata schema) is missing")
    verify_metadata(meta_file=str(_configs(bundle) / "metadata.json"), filepath=str(schema))


def check_metadata_values(bundle: Path) -> None:
    """What the zoo's CI expects of metadata.json beyond the schema: numeric eval_metrics, a value range for every
    input and output, supported_apps, and a URL in data_source."""
    meta = json.loads((_configs(bundle) / "metadata.json").read_text())
    problems = []
    for name, value in meta.get("eval_metrics", {}).items():
        if not isinstance(value, (int, float)):
            problems.append(f"eval_metrics.{name} is {type(value).__name__}")
    for side in ("inputs", "outputs"):
        for name, spec in meta["network_data_format"][side].items():
            if not spec.get("value_range"):
                problems.append(f"{side}.{name}.value_range empty")
    if not meta.get("supported_apps"):
        problems.append("supported_apps empty")
    if not re.search(r"https?://", str(meta.get("data_source", ""))):
        problems.append("data_source has no URL")
    if problems:
        raise ValueError("; ".join(problems))


def _check_properties(bundle: Path, config: str, workflow_type: str) -> None:
    """MONAI's property check needs an initialised workflow, which reads its data: a tiny synthetic dataset."""
    from monai.bundle import ConfigWorkflow

    from ssmis.data.synthetic import make_synthetic_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = make_synthetic_dataset(Path(tmp) / "data", dims=3, classes=2, cases=8, labeled=4, val=2, size=32)
        (data / "imagesTs").mkdir(exist_ok=True)  # what inference.yaml segments by default
        first = sorted((data / "imagesTr").glob("*.nii.gz"))[0]
        shutil.copy(first, data / "imagesTs" / first.name)
        workflow = ConfigWorkflow(config_file=str(_configs(bundle) / config), meta_file=str(_configs(bundle) /
                                  "metadata.json"), workflow_type=workflow_type, logging_file=None,
                                  dataset_dir=str(data), output_dir=str(Path(tmp) / "out"), device="cpu")
        workflow.initialize()
        missing = workflow.check_properties()
    if missing:
        raise ValueError(f"missing or wrong: {missing}")


def check_train_properties(bundle: Path) -> None:
    """train.yaml defines every property MONAI requires of a training workflow."""
    _check_properties(bundle, "train.yaml", "train")


def check_infer_properties(bundle: Path) -> None:
    """inference.yaml defines every property MONAI requires of an inference workflow."""
    _check_properties(bundle, "inference.yaml", "infer")


def check_net_in_out(bundle: Path) -> None:
    """The network takes and gives the shapes metadata.json declares (``monai.bundle.verify_net_in_out``)."""
    from monai.bundle import verify_net_in_out

    verify_net_in_out(net_id="network_def", meta_file=str(_configs(bundle) / "metadata.json"),
                      config_file=str(_configs(bundle) / "inference.yaml"), device="cpu", n=1)


def _training_model_file(network, folder: Path) -> Path:
    """``model.pt`` as a training run writes it: the trainers' checkpoint handler saving ``model: '@network'``."""
    from ignite.engine import Engine

    from ssmis.handlers import ResumableCheckpoint

    handler, engine = ResumableCheckpoint(save_dir=folder, save_dict={"model": network}), Engine(lambda e, b: None)
    handler.attach(engine)
    handler.save(engine)
    return handler.model_path


def check_export(bundle: Path) -> None:
    """The network exports to TorchScript (``monai.bundle.ckpt_export``) from a model.pt as training writes it, and
    the export's output is within 1e-4 of the network's."""
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    parser = ConfigParser()
    parser.read_config(str(_configs(bundle) / "inference.yaml"))
    torch.manual_seed(0)
    net = parser.get_parsed_content("network_def").eval()
    with tempfile.TemporaryDirectory() as tmp:
        model = _training_model_file(net, Path(tmp))
        ts = Path(tmp) / "model.ts"
        ckpt_export(net_id="network_def", filepath=str(ts), ckpt_file=str(model),
                    meta_file=str(_configs(bundle) / "metadata.json"),
                    config_file=str(_configs(bundle) / "inference.yaml"))
        x = torch.randn(1, 1, *parser.get_parsed_content("patch_size"))
        with torch.no_grad():
            diff = (torch.jit.load(str(ts))(x) - net(x)).abs().max().item()
        if diff > 1e-4:
            raise ValueError(f"TorchScript and eager outputs differ by {diff:.2e}")


def check_weights(bundle: Path) -> None:
    """The bundle ships models/model.pt, and large_files.yml names it."""
    model = bundle / "models" / "model.pt"
    large = bundle / "large_files.yml"
    if not model.is_file():
        raise FileNotFoundError("no models/model.pt")
    if not large.is_file() or "model.pt" not in large.read_text():
        raise FileNotFoundError("large_files.yml does not name models/model.pt")


def check_local_rank(bundle: Path) -> None:
    """multi_gpu_train.yaml puts each process on the GPU of its LOCAL_RANK."""
    text = (_configs(bundle) / "multi_gpu_train.yaml").read_text()
    device = next((line for line in text.splitlines() if line.startswith("device:")), "")
    if "LOCAL_RANK" not in device:
        raise ValueError(f"device is {device.split(':', 1)[-1].strip()}")


def check_literal_bundle_root(bundle: Path) -> None:
    """bundle_root is a literal path in every config (the zoo runs them from the bundle folder)."""
    import yaml

    for config in sorted(_configs(bundle).glob("*.yaml")):
        value = (yaml.safe_load(config.read_text()) or {}).get("bundle_root")
        if isinstance(value, str) and value.startswith("$"):
            raise ValueError(f"{config.name}: bundle_root is the expression {value}")


def check_data_licence(bundle: Path) -> None:
    """The bundle carries the data licence (docs/data_license.txt)."""
    if not (bundle / "docs" / "data_license.txt").is_file():
        raise FileNotFoundError("no docs/data_license.txt")


def check_readme_sections(bundle: Path) -> None:
    """The README has every section the zoo asks for (``README_SECTIONS``)."""
    headings = [h.lower() for h in re.findall(r"^#+\s*(.+)$", (bundle / "docs" / "README.md").read_text(), re.M)]
    missing = [s for s in README_SECTIONS if not any(s in h for h in headings)]
    if missing:
        raise ValueError(f"missing {', '.join(missing)}")


CHECKS: dict[str, Callable[[Path], None]] = {
    "schema": check_schema,
    "metadata values": check_metadata_values,
    "train properties": check_train_properties,
    "infer properties": check_infer_properties,
    "net in/out": check_net_in_out,
    "export": check_export,
    "weights": check_weights,
    "LOCAL_RANK": check_local_rank,
    "literal bundle_root": check_literal_bundle_root,
    "data licence": check_data_licence,
    "README sections": check_readme_sections,
}


def run_checks(bundle: str | Path, schema: str | Path | None = None,
               only: tuple[str, ...] | None = None) -> dict[str, str]:
    """``{check: "pass" | "FAIL: <type>: <why>"}`` for one (exported) bundle folder; ``schema``: the metadata
    schema file for ``schema``; ``only``: a subset of :data:`CHECKS`."""
    results = {}
    for name, check in CHECKS.items():
        if only is not None and name not in only:
            continue
        if name == "schema":
            check = partial(check, schema=Path(schema) if schema else None)
        try:
            check(Path(bundle))
            results[name] = "pass"
        except Exception as e:  # noqa: BLE001 - every failure is a cell of the table
            why = str(e).strip().splitlines()[-1] if str(e).strip() else ""
            results[name] = f"FAIL: {type(e).__name__}: {why[:160]}"
    return results
