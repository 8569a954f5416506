"""Ignite handlers (``attach(engine)``) used by the ssmis bundles."""

from .checkpoint import ResumableCheckpoint
from .metrics_writer import SegmentationMetricsWriter
from .progress import TrainingProgressBar
from .rampup import RampUpWeight, linear_rampup, sigmoid_rampup

__all__ = [
    "RampUpWeight",
    "ResumableCheckpoint",
    "SegmentationMetricsWriter",
    "TrainingProgressBar",
    "linear_rampup",
    "sigmoid_rampup",
]
