"""Networks: the V-Net of the semi-supervised literature, and classifier-feature access for any network."""

from .features import ClassifierFeatures, find_classifier
from .vnet import VNet

__all__ = ["ClassifierFeatures", "VNet", "find_classifier"]
