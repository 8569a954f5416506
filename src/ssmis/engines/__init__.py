"""The semi-supervised training engine and its per-method strategies."""

from .bcp import BCPStrategy
from .semi_supervised_trainer import SemiSupervisedTrainer, scalar_terms
from .strategy import MeanTeacherStrategy, Strategy, SupervisedStrategy, mean_entropy

__all__ = [
    "BCPStrategy",
    "MeanTeacherStrategy",
    "SemiSupervisedTrainer",
    "Strategy",
    "SupervisedStrategy",
    "mean_entropy",
    "scalar_terms",
]
