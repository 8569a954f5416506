"""Trained weights a bundle ships: ``bundles/<name>/weights/model.pt`` and its record ``weights.json``.

The record says which configs the weights fit (merged after ``inference``, e.g. ``["cpu_protocol"]`` for the
CPU protocol's network), their SHA-256, how they were trained (the command) and what they scored on the validation
split. ``inference`` with the shared ``shipped_weights.yaml`` merged last loads them; ``python -m ssmis.bundle
export`` ships them as the exported bundle's ``models/model.pt``; the MONAI Label app starts from them when it has
no model of its own. ``python -m ssmis.bundle ship`` writes both files from a training run's ``model.pt``.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from ..networks.unwrap import unwrap_module
from ..utils.atomic import atomic_torch_save, atomic_write_text
from .command_line import config_files_on_command_line
from .layout import config_files
from .run_error import refuse

__all__ = ["WEIGHTS_DIR", "check_weights_fit", "read_state_dict", "sha256", "ship_weights", "shipped_weights"]

#: the folder of a bundle that holds its shipped weights (``model.pt``) and their record (``weights.json``)
WEIGHTS_DIR = "weights"


def read_state_dict(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The network state dict in ``path``: a plain state dict, or ``{"model": state_dict}`` (what training wrote
    before bundle 0.2.0, and what ``model_best.pt`` holds beside its score). Read with ``weights_only``.

    Raises:
        ValueError: the file cannot be read or holds no state dict, naming it.
    """
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read the weights ({type(e).__name__}: {str(e)[:200]})") from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def _record_configs(path: Path) -> list[str] | None:
    """The configs the ``weights.json`` beside ``path`` says its weights fit (a bundle's ``weights/``, an export's
    ``models/``); None without a readable record, or when the record's SHA-256 is not the file's (training in an
    exported bundle writes its own ``models/model.pt`` over the shipped one)."""
    record = path.parent / "weights.json"
    try:
        data = json.loads(record.read_text()) if record.is_file() else None
    except ValueError:
        return None
    if not isinstance(data, dict) or data.get("sha256") != sha256(path):
        return None
    fits = data.get("configs")
    return [config_name(c) for c in fits] if isinstance(fits, list) else None


def config_name(config: object) -> str:
    """A config's name as records keep it: ``cpu_protocol`` for ``cpu_protocol``, ``cpu_protocol.yaml`` or a path."""
    name = Path(str(config)).name
    return name[:-5] if name.endswith(".yaml") else name


def check_weights_fit(network: torch.nn.Module, path: str | os.PathLike, argv: list[str] | None = None) -> None:
    """Stop a run whose weight file does not fit ``network`` or the run's configs, in one line that says which
    configs it fits, before ``CheckpointLoader`` would list every key of the state dict or, worse, load the weights
    into a network of the same shape set up otherwise (ACDC's U-Net is the same at 128 and 256 pixels). Called in the
    ``initialize`` of inference and evaluation.

    Weights with a ``weights.json`` beside them (shipped or exported) must run with every config it names: on a
    ``monai.bundle run`` command line (``argv``, default ``sys.argv``), a ``--config_file`` of that name. A missing
    ``path`` stops a command-line run (with the three ways to name weights) and only warns elsewhere: the zoo's
    checks initialise a bundle before its weights arrive.

    Raises:
        RunError: (``ValueError`` off a command line) a tensor is missing, unexpected or of another shape, or a
            config the record names is not on the command line.
    """
    path = Path(path)
    files = config_files_on_command_line(sys.argv if argv is None else argv)
    if not path.is_file():
        message = (f"{path}: no weight file; train the bundle first, pass --ckpt_path <run>/models/model.pt, or merge "
                   "shipped_weights last to use the weights the bundle ships")
        if files:
            refuse(message, FileNotFoundError, argv=argv)
        warnings.warn(message, stacklevel=2)  # the zoo's checks initialise a bundle before its weights arrive
        return
    fits = _record_configs(path)
    merge = " ".join(fits or [])
    hint = (f"They fit inference + {' + '.join(fits)}: merge {merge} (in the repository: ssmis.bundle configs "
            f"<bundle> inference {merge} shipped_weights; in an exported bundle: configs/inference.yaml, then "
            f"configs/{'.yaml, configs/'.join(fits)}.yaml)") if fits else (
        "Weights load into the network of the configs they were trained with: merge the same ones here (e.g. "
        "cpu_protocol after a CPU-protocol run)")
    absent = [c for c in fits or [] if c not in {Path(f).stem for f in files}]
    if files and absent:
        refuse(f"{path}: these weights were trained with {', '.join(absent)}, which this run leaves out, so they "
               f"would run in a network set up otherwise. {hint}", argv=argv)
    state = read_state_dict(path)
    own = unwrap_module(network).state_dict()  # DDP (multi_gpu_train.yaml): the wrapped network's
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    reshaped = [k for k in own if k in state and own[k].shape != state[k].shape]
    if not (missing or unexpected or reshaped):
        return
    found = []
    if reshaped:
        k = reshaped[0]
        found.append(f"{len(reshaped)} of other shapes (e.g. {k}: {list(state[k].shape)} in the file, "
                     f"{list(own[k].shape)} in the network)")
    for n, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            found.append(f"{len(keys)} {n} (e.g. {keys[0]})")
    refuse(f"{path}: these weights do not fit the network of these configs; tensors: {'; '.join(found)}. {hint}",
           argv=argv)


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _network_def(bundle: Path, configs: list[str]) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(config_files(bundle, "inference", *configs))
    parser["bundle_root"] = str(bundle)
    return parser.get_parsed_content("network_def")


def shipped_weights(bundle: str | os.PathLike) -> dict[str, Any] | None:
    """The record of the bundle's shipped weights, with ``path`` (the weight file) added; None when it ships none.

    Raises:
        ValueError: a record or weight file that is malformed, missing or does not match its hash, naming it.
    """
    folder = Path(bundle) / WEIGHTS_DIR
    record_file = folder / "weights.json"
    if not record_file.is_file():
        return None
    try:
        record = json.loads(record_file.read_text())
    except ValueError as e:
        raise ValueError(f"{record_file}: not valid JSON ({e})") from e
    missing = {"configs", "sha256", "val_dice", "command"} - set(record)
    if missing:
        raise ValueError(f"{record_file}: missing {sorted(missing)}")
    if not isinstance(record["val_dice"], (int, float)) or not isinstance(record["configs"], list):
        raise ValueError(f"{record_file}: val_dice must be a number and configs a list of config names")
    try:
        config_files(bundle, *record["configs"])
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"{record_file}: configs {record['configs']} ({e})") from e
    path = folder / "model.pt"
    if not path.is_file():
        raise ValueError(f"{record_file}: its weight file {path} is missing")
    if sha256(path) != record["sha256"]:
        raise ValueError(f"{path}: SHA-256 differs from {record_file}; the file was changed or damaged")
    return {**record, "path": str(path)}


def ship_weights(bundle: str | os.PathLike, source: str | os.PathLike, configs: list[str], record: dict[str, Any],
                 half: bool = True) -> Path:
    """Write ``source``'s network weights as the bundle's shipped ``weights/model.pt`` (float16 with ``half``: half
    the size; they load into a float32 network as usual) and ``weights/weights.json`` (``record`` plus ``configs``,
    the SHA-256 and the dtype). Both are replaced atomically, the record last; then ``configs/metadata.json``'s
    ``eval_metrics.mean_dice`` becomes the record's ``val_dice``, so the zoo shows the score of the weights shipped.

    Raises:
        ValueError: ``source`` does not load strictly into ``network_def`` of ``inference`` + ``configs``.
    """
    bundle = Path(bundle)
    state = read_state_dict(source)
    try:
        _network_def(bundle, configs).load_state_dict(state, strict=True)
    except RuntimeError as e:
        merged = " + ".join(["inference", *configs])
        raise ValueError(f"{source}: not the weights of {bundle.name}'s network_def in {merged} "
                         f"({str(e).strip().splitlines()[0][:200]})") from e
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        overflow = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if overflow:
            raise ValueError(f"{source}: {overflow[:3]} do not fit float16 (values beyond its range); ship them "
                             "with --float32")
    folder = bundle / WEIGHTS_DIR
    folder.mkdir(exist_ok=True)
    target = folder / "model.pt"
    atomic_torch_save(state, target)
    full = {**record, "configs": [config_name(c) for c in configs], "dtype": "float16" if half else "float32",
            "sha256": sha256(target)}
    atomic_write_text(json.dumps(full, indent=2) + "\n", folder / "weights.json")
    meta_file = bundle / "configs" / "metadata.json"
    if "val_dice" in record and meta_file.is_file():  # the zoo reads a bundle's score from eval_metrics
        meta = json.loads(meta_file.read_text())
        meta["eval_metrics"] = {**(meta.get("eval_metrics") or {}), "mean_dice": record["val_dice"]}
        atomic_write_text(json.dumps(meta, indent=4, ensure_ascii=False) + "\n", meta_file)
    return target
