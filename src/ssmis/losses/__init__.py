"""Losses that MONAI does not provide."""

from .graph_clustering import GraphClusteringLoss
from .pseudo_label import pseudo_label_loss
from .region import masked_dice_ce, region_weighted_dice_ce

# TSA's loss: ssmis.tsa
__all__ = ["GraphClusteringLoss", "masked_dice_ce", "pseudo_label_loss", "region_weighted_dice_ce"]
