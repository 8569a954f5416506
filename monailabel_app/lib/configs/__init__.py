"""One module per served bundle; every class here whose base is ``BundleTaskConfig`` is found as the MONAI Label
radiology sample app finds its task configs (``get_class_names``: direct subclasses only), so serving another bundle
is one new module."""

from __future__ import annotations

import importlib
import sys

from monailabel.utils.others.class_utils import get_class_names

__all__ = ["CONFIGS", "served_models"]


def _discover() -> dict[str, type]:
    """``{bundle name: BundleTaskConfig subclass}`` of every module in this package."""
    found = {}
    for path in get_class_names(sys.modules[__name__], "BundleTaskConfig"):
        module, name = path.rsplit(".", 1)
        config = getattr(importlib.import_module(module), name)
        found[config.bundle] = config
    return dict(sorted(found.items()))


CONFIGS = _discover()


def served_models(models: str | None) -> list[str]:
    """The model names of ``--conf models`` (comma-separated; ``all`` or nothing: every LA model, as the default
    studies are LA volumes, and models of another task are named explicitly). Raises ``ValueError`` for an unknown
    name, or for models of more than one task (their images and labels differ)."""
    requested = [m.strip() for m in (models or "all").split(",") if m.strip()]
    names = sorted(n for n, c in CONFIGS.items() if c.task == "la") if requested in ([], ["all"]) else requested
    unknown = [m for m in names if m not in CONFIGS]
    if unknown:
        raise ValueError(f"--conf models: unknown model(s) {unknown}; available: {sorted(CONFIGS)} or 'all'")
    tasks = sorted({CONFIGS[m].task for m in names})
    if len(tasks) > 1:
        raise ValueError(f"--conf models: {names} mix the tasks {tasks} (other images and labels); serve the "
                         "models of one task")
    return names
