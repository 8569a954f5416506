"""Ignite handlers (``attach(engine)``) used by the ssmis bundles."""

from .checkpoint import ResumableCheckpoint
from .metrics_writer import SegmentationMetricsWriter
from .progress import TrainingProgressBar

__all__ = ["ResumableCheckpoint", "SegmentationMetricsWriter", "TrainingProgressBar"]
