"""Segmentation metrics reported by the benchmarks and ``evaluate.yaml``; uncertainty scores for active learning."""

from .segmentation import METRIC_NAMES, case_metrics, mean_metrics, metric_names
from .uncertainty import mean_entropy, prediction_disagreement, prediction_entropy

__all__ = ["METRIC_NAMES", "case_metrics", "mean_entropy", "mean_metrics", "metric_names", "prediction_disagreement",
           "prediction_entropy"]
