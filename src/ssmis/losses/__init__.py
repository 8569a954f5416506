"""Losses that MONAI does not provide."""

from .tsa import TSALoss, tsa_logit_offsets

__all__ = ["TSALoss", "tsa_logit_offsets"]
