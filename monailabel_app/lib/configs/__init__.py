"""One module per served bundle; ``main.py`` finds every ``BundleTaskConfig`` subclass here."""

from .fixed_dynamic_pl_la import FixedDynamicPLLA
from .transmedseg_la import TransMedSegLA

CONFIGS = {c.bundle: c for c in (TransMedSegLA, FixedDynamicPLLA)}

__all__ = ["CONFIGS", "FixedDynamicPLLA", "TransMedSegLA"]
