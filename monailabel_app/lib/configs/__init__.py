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

__all__ = ["CONFIGS", "FixedDynamicPLACDC", "FixedDynamicPLLA", "MeanTeacherACDC", "MeanTeacherLA", "SupervisedACDC",
           "SupervisedLA", "TransMedSegACDC", "TransMedSegLA"]
