"""Losses that MONAI does not provide."""

from .graph_clustering import GraphClusteringLoss
from .region import masked_dice_ce, region_weighted_dice_ce

__all__ = ["GraphClusteringLoss", "masked_dice_ce", "region_weighted_dice_ce"]  # TSA's loss: ssmis.tsa
