"""The inference task of one bundle: sliding-window segmentation of a datastore image, on its own grid."""

from __future__ import annotations

import logging
import tempfile
from typing import Any, Dict, Tuple

from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from lib.errors import RequestError
from lib.infers.bundle_predictor import BundlePredictor, ImageError, ModelNotTrainedError
from lib.volumes import write_label

logger = logging.getLogger(__name__)


class BundleSegmentation(InferTask):
    """Segment an image with a bundle's own inference chain (:class:`BundlePredictor`; for co-training, the bundle's
    network averages both networks' softmax).

    Returns a NIfTI label map with the image's shape and affine, so 3D Slicer overlays it in place. Before the model
    has weights it answers 409 with a message that says so, instead of segmenting with random weights.
    """

    def __init__(self, predictor: BundlePredictor, labels: Dict[str, int], description: str) -> None:
        super().__init__(type=InferType.SEGMENTATION, labels=labels, dimension=predictor.spatial_dims,
                         description=description, config={"device": str(predictor.device)})
        self.predictor = predictor

    def is_valid(self) -> bool:
        return True  # listed before training, so Slicer shows it; __call__ explains that it needs weights

    def __call__(self, request: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
        image = request.get("image")
        if not image:
            raise RequestError(400, "no image given")
        try:
            prediction = self.predictor.predict(image)
        except ModelNotTrainedError as e:
            raise RequestError(409, str(e)) from e
        except ImageError as e:
            raise RequestError(e.status, str(e)) from e
        seg = prediction.label
        out = tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False).name
        write_label(seg, prediction.image, out)
        params = {
            "label_names": self.labels,
            "weights_mtime": prediction.weights_mtime,
            "latencies": {"infer": round(prediction.seconds, 4)},
            "foreground_voxels": int((seg > 0).sum()),
            "model_spacing": self.predictor.target_spacing,  # the image was resampled to it and back when needed
        }
        return out, params
