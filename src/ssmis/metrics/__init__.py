"""Segmentation metrics reported by the benchmarks and ``evaluate.yaml``."""

from .segmentation import METRIC_NAMES, case_metrics, mean_metrics

__all__ = ["METRIC_NAMES", "case_metrics", "mean_metrics"]
