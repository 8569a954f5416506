"""Ignite handlers (``attach(engine)``) and the stateful pieces the ssmis bundles plug into their trainers."""

from .best_model import BestModelSaver
from .checkpoint import ResumableCheckpoint
from .metrics_writer import SegmentationMetricsWriter
from .pretraining_stage import PretrainingStage
from .progress import TrainingProgressBar
from .pseudo_label_quality import PseudoLabelQuality, pseudo_label_scores
from .rampup import RampUpWeight, linear_rampup, sigmoid_rampup

__all__ = [
    "BestModelSaver",
    "PretrainingStage",
    "PseudoLabelQuality",
    "RampUpWeight",
    "ResumableCheckpoint",
    "SegmentationMetricsWriter",
    "TrainingProgressBar",
    "linear_rampup",
    "pseudo_label_scores",
    "sigmoid_rampup",
]
