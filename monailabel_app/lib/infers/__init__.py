from .bundle_predictor import BundlePredictor, ModelNotTrainedError
from .bundle_segmentation import BundleSegmentation

__all__ = ["BundlePredictor", "BundleSegmentation", "ModelNotTrainedError"]
