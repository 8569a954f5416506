"""One module per served bundle; ``main.py`` finds every ``BundleTaskConfig`` subclass here."""

from .fixed_dynamic_pl_la import FixedDynamicPLLA
from .supervised_la import SupervisedLA
from .transmedseg_acdc import TransMedSegACDC
from .transmedseg_la import TransMedSegLA

CONFIGS = {c.bundle: c for c in (TransMedSegLA, FixedDynamicPLLA, SupervisedLA, TransMedSegACDC)}

__all__ = ["CONFIGS", "FixedDynamicPLLA", "SupervisedLA", "TransMedSegACDC", "TransMedSegLA"]
