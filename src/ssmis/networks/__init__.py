"""Networks: the V-Net of the semi-supervised literature, and classifier-feature access for any network."""

from .features import ClassifierFeatures, LayerFeatures, find_classifier
from .ensemble import SoftmaxAverage
from .memory_format import channels_last
from .unwrap import unwrap_module
from .vnet import VNet

__all__ = ["ClassifierFeatures", "LayerFeatures", "SoftmaxAverage", "VNet", "channels_last", "find_classifier",
           "unwrap_module"]
