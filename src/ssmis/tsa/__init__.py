"""Transferable Semantic Augmentation (TSA), in one place: the memory module of class-conditional feature statistics
(``memory``), the closed-form augmented cross-entropy (``loss``), and the module that plugs both into any
teacher–student strategy (``transferable_semantic_augmentation``: ``TransferableSemanticAugmentation``, held by the
strategy as its ``tsa``, which attaches its λ ramp and calls it after the student's forward pass)."""

from .loss import TSALoss, tsa_logit_offsets
from .memory import ClassFeatureStatistics, OnlineClassStatistics
from .transferable_semantic_augmentation import TransferableSemanticAugmentation

__all__ = ["ClassFeatureStatistics", "OnlineClassStatistics", "TSALoss", "TransferableSemanticAugmentation",
           "tsa_logit_offsets"]
