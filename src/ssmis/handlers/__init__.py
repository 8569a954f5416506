"""Ignite handlers (``attach(engine)``) and the stateful pieces the ssmis bundles plug into their trainers."""

from .best_model import BestModelSaver
from .checkpoint import ResumableCheckpoint
from .disk_saver import AtomicDiskSaver
from .metrics_writer import SegmentationMetricsWriter
from .pretraining_stage import PretrainingStage
from .progress import TrainingProgressBar
from .pseudo_label_quality import PseudoLabelQuality, pseudo_label_scores
from .rampup import RampUpWeight, linear_rampup, sigmoid_rampup

__all__ = [
    "AtomicDiskSaver",
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


def __getattr__(name: str):
    """``ssmis.handlers.TransferableSemanticAugmentation``, the path of bundles exported before TSA moved to
    ``ssmis.tsa``: still importable, with a deprecation warning."""
    if name == "TransferableSemanticAugmentation":
        import warnings

        from ..tsa import TransferableSemanticAugmentation

        warnings.warn("ssmis.handlers.TransferableSemanticAugmentation moved to ssmis.tsa", DeprecationWarning,
                      stacklevel=2)
        return TransferableSemanticAugmentation
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
