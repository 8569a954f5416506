"""The semi-supervised training engine and its per-method strategies."""

from .bcp import BCPStrategy
from .co_training import CoTrainingStrategy
from .mean_teacher import MeanTeacherStrategy
from .semi_supervised_trainer import REFERENCE_KEY, SemiSupervisedTrainer, scalar_terms
from .strategy import Strategy
from .supervised import SupervisedStrategy

__all__ = [
    "BCPStrategy",
    "REFERENCE_KEY",
    "CoTrainingStrategy",
    "MeanTeacherStrategy",
    "SemiSupervisedTrainer",
    "Strategy",
    "SupervisedStrategy",
    "scalar_terms",
]
