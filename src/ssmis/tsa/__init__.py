"""Transferable Semantic Augmentation (TSA), in one place: the memory module of class-conditional feature statistics
(``memory``), the closed-form augmented cross-entropy (``loss``), and the handler that plugs both into any
teacher–student trainer (``handler``: ``TransferableSemanticAugmentation``, attached like any ignite handler and
called by the strategy after the student's forward pass)."""

from .handler import TransferableSemanticAugmentation
from .loss import TSALoss, tsa_logit_offsets
from .memory import ClassFeatureStatistics, OnlineClassStatistics

__all__ = ["ClassFeatureStatistics", "OnlineClassStatistics", "TSALoss", "TransferableSemanticAugmentation",
           "tsa_logit_offsets"]
