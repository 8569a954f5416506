"""Losses that MONAI does not provide."""

from .graph_clustering import GraphClusteringLoss
from .region import masked_dice_ce, region_weighted_dice_ce
from .tsa import TSALoss, tsa_logit_offsets

__all__ = ["GraphClusteringLoss", "TSALoss", "masked_dice_ce", "region_weighted_dice_ce", "tsa_logit_offsets"]
