"""The semi-supervised training engine and its per-method strategies."""

from .semi_supervised_trainer import SemiSupervisedTrainer, scalar_terms
from .strategy import MeanTeacherStrategy, Strategy, SupervisedStrategy

__all__ = ["MeanTeacherStrategy", "SemiSupervisedTrainer", "Strategy", "SupervisedStrategy", "scalar_terms"]
