"""Where a bundle's configs come from: the shared ones in ``bundles/common/configs`` and the bundle's own.

Every LA bundle shares its workflow (data, transforms, validation, checkpoints, logging, inference, evaluation,
DDP, the CPU protocol) through ``bundles/common/configs/<name>.yaml``; a bundle's ``configs/<name>.yaml`` holds only
its method and is merged on top (MONAI merges ``--config_file`` lists left to right). :func:`config_files` builds
that list for a bundle, ``python -m ssmis.bundle configs <bundle> <names...>`` prints it for the command line, and
``python -m ssmis.bundle export`` merges it into a self-contained bundle for the model zoo.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .command_line import config_files_on_command_line
from .run_error import refuse

__all__ = ["LAYERS_FILE", "SHARED_BUNDLE", "config_files", "config_layers", "default_bundle_root", "layer_spec",
           "shared_configs"]

#: the folder beside the bundles that holds the shared configs
SHARED_BUNDLE = "common"
#: in a bundle's ``configs/``: the config layers merged between the shared configs and the bundle's own
LAYERS_FILE = "layers.json"


def shared_configs(bundle: str | os.PathLike) -> Path:
    """``<bundles>/common/configs`` for the bundle folder ``bundle``."""
    return Path(bundle).resolve().parent / SHARED_BUNDLE / "configs"


def layer_spec(bundle: str | os.PathLike) -> dict:
    """The bundle's ``configs/layers.json`` (``{}`` without one): ``layers``, and for the export ``dataset_dir``
    (the literal default of an exported bundle) and ``exclude`` (config names the export leaves out)."""
    spec = Path(bundle) / "configs" / LAYERS_FILE
    if not spec.is_file():
        return {}
    try:
        content = json.loads(spec.read_text())
    except ValueError as e:
        raise ValueError(f"{spec}: not valid JSON ({e})") from e
    if not isinstance(content, dict):
        raise ValueError(f"{spec}: expected an object with \"layers\", got {type(content).__name__}")
    return content


def config_layers(bundle: str | os.PathLike) -> list[Path]:
    """The config folders merged for every config name of a bundle, in order: the shared ``common/configs``, the
    layers its ``configs/layers.json`` names (``{"layers": ["transmedseg_la", "common/acdc"]}``: each a folder
    under ``bundles/`` holding ``configs/``; e.g. a method's configs, then a task's), then its own ``configs``.

    Raises:
        ValueError: a malformed ``layers.json`` or a layer without ``configs/``, naming the file.
    """
    bundle = Path(bundle)
    own = bundle / "configs"
    folders = [shared_configs(bundle)]
    spec = own / LAYERS_FILE
    if spec.is_file():
        try:
            layers = layer_spec(bundle)["layers"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{spec}: expected {{\"layers\": [folder, ...]}} ({e})") from e
        if not isinstance(layers, list) or not all(isinstance(layer, str) for layer in layers):
            raise ValueError(f"{spec}: \"layers\" must be a list of folder names, got {layers!r}")
        for layer in layers:
            folder = bundle.resolve().parent / layer / "configs"
            if not folder.is_dir():
                raise ValueError(f"{spec}: layer {layer!r} has no folder {folder}")
            folders.append(folder)
    return folders + [own]


def config_files(bundle: str | os.PathLike, *names: str) -> list[str]:
    """The ``--config_file`` list for ``names`` (e.g. ``"train"``, ``"evaluate"``, ``"cpu_protocol.yaml"``) of a
    bundle folder: for each name, ``<name>.yaml`` of each of its :func:`config_layers` where it exists (the shared
    one, any layers', then the bundle's own). An absolute or relative path to an existing file is taken as is.

    Raises:
        FileNotFoundError: a name that no layer of the bundle has, naming the folders.
    """
    folders = config_layers(bundle)
    files: list[str] = []
    for name in names:
        if Path(name).is_file() and (os.sep in str(name) or "/" in str(name)):
            files.append(str(Path(name).resolve()))
            continue
        file = name if name.endswith((".yaml", ".json")) else f"{name}.yaml"
        found = [str((f / file).resolve()) for f in folders if (f / file).is_file()]
        if not found:
            raise FileNotFoundError(f"config {name!r} does not exist: no {file} in {', '.join(map(str, folders))}")
        files += found
    return files


def default_bundle_root(argv: list[str] | None = None) -> str:
    """The bundle folder of the last ``--config_file`` that lies in a bundle (a ``configs/`` with
    ``metadata.json``), so ``--config_file "['bundles/common/configs/train.yaml','bundles/x/configs/train.yaml']"``
    works from any folder, as does the model-zoo habit of running ``--config_file configs/train.yaml`` inside an
    exported bundle. Falls back to ``"."`` when the working folder is a bundle. An explicit ``--bundle_root``
    always overrides this default.

    Raises:
        RunError: (``ValueError`` off a ``monai.bundle run`` command line) no config file lies in a bundle (they are all
            shared ones, e.g. ``configs bundles/supervised_la inference``) and the working folder is not a bundle
            either: the run would otherwise look for its weights and write its outputs under whatever folder it was
            started in.
    """
    argv = sys.argv if argv is None else argv
    files = config_files_on_command_line(argv)
    for file in reversed(files):
        configs = Path(file).absolute().parent
        if (configs / "metadata.json").is_file():
            return str(configs.parent if configs.name == "configs" else configs)
    if (Path("configs") / "metadata.json").is_file():
        return "."
    refuse(
        "cannot tell which bundle this run is for: no --config_file lies in a bundle's configs/ (beside a "
        f"metadata.json){' (' + ', '.join(files) + ')' if files else ''}, and the working folder is not a bundle; "
        "pass --bundle_root bundles/<name>", argv=argv)
