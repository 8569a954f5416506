"""The semi-supervised training engine and its per-method strategies."""

from .bcp import BCPStrategy
from .co_training import CoTrainingStrategy, pseudo_label_loss
from .semi_supervised_trainer import REFERENCE_KEY, SemiSupervisedTrainer, scalar_terms
from .strategy import MeanTeacherStrategy, Strategy, SupervisedStrategy, mean_entropy

__all__ = [
    "BCPStrategy",
    "REFERENCE_KEY",
    "CoTrainingStrategy",
    "MeanTeacherStrategy",
    "SemiSupervisedTrainer",
    "Strategy",
    "SupervisedStrategy",
    "mean_entropy",
    "pseudo_label_loss",
    "scalar_terms",
]
