"""One module per served bundle; ``main.py`` finds every ``BundleTaskConfig`` subclass here."""

from .fixed_dynamic_pl_acdc import FixedDynamicPLACDC
from .fixed_dynamic_pl_la import FixedDynamicPLLA
from .mean_teacher_acdc import MeanTeacherACDC
from .mean_teacher_la import MeanTeacherLA
from .supervised_acdc import SupervisedACDC
from .supervised_la import SupervisedLA
from .transmedseg_acdc import TransMedSegACDC
from .transmedseg_la import TransMedSegLA

CONFIGS = {c.bundle: c for c in (TransMedSegLA, FixedDynamicPLLA, SupervisedLA, MeanTeacherLA, TransMedSegACDC,
                                 SupervisedACDC, MeanTeacherACDC, FixedDynamicPLACDC)}



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


__all__ = ["CONFIGS", "served_models", "FixedDynamicPLACDC", "FixedDynamicPLLA", "MeanTeacherACDC", "MeanTeacherLA", "SupervisedACDC",
           "SupervisedLA", "TransMedSegACDC", "TransMedSegLA"]
