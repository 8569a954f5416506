"""A bundle's network, pre-processing and sliding-window inferer, built from its own ``inference.yaml``.

Shared by the inference task and the active-learning scoring. The weights are reloaded whenever the published
``model.pt`` changes, so a finished training is served without a restart. Thread-safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import nibabel as nib
import numpy as np
import torch

from lib.volumes import VolumeError, VolumeLimits, VolumeTooLarge, read_volume
from ssmis.bundle.layout import config_files
from ssmis.bundle.weights import read_state_dict

logger = logging.getLogger(__name__)


class ModelNotTrainedError(RuntimeError):
    """The model has no usable published weights: none yet, or a ``model.pt`` that cannot be read or does not fit."""


class ImageError(ValueError):
    """An image that cannot be read, or does not suit the model (message names the file). ``status`` is the HTTP
    status to answer: 413 for a volume above the server's limits, else 400."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Prediction:
    """``probs`` ``[K, *S]`` (the served prediction), ``per_network`` one ``[K, *S]`` per sub-network (one entry
    for a single network), ``image`` the nibabel image read, ``weights_mtime`` of the weights used."""

    probs: torch.Tensor
    per_network: list[torch.Tensor]
    image: nib.Nifti1Image
    weights_mtime: float
    seconds: float


class BundlePredictor:
    """Args:
        bundle_root: the bundle folder (its inference configs, the shared ones first, are read from it).
        model_path: the published ``model.pt`` (a plain state dict, or ``{"model": state_dict}`` as before 0.2.0).
        extra_configs: config files merged on top of ``inference.yaml`` (the same ones training used, so the
            network definitions agree).
        device: ``cpu`` or ``cuda`` (default: cuda when available).
        limits: what one image may declare (voxels); checked on its header before the voxels are read.
    """

    def __init__(self, bundle_root: str | Path, model_path: str | Path, extra_configs: Sequence[str] = (),
                 device: str | None = None, limits: VolumeLimits | None = None) -> None:
        self.bundle_root = Path(bundle_root)
        self.limits = limits or VolumeLimits()
        self.model_path = Path(model_path)
        self.extra_configs = [str(c) for c in extra_configs]
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._lock = threading.Lock()
        self._loaded: tuple | None = None  # (mtime, network, transforms, inferer)
        parser = self._parser()
        self.num_classes = int(parser.get_parsed_content("num_classes"))
        # the network's input axes, and the images' (more for a 2D network run slice by slice on volumes: ACDC)
        self.network_dims = int(parser.get_parsed_content("backbone_def#spatial_dims")
                                if "backbone_def#spatial_dims" in parser else 3)
        self.spatial_dims = int(parser.get_parsed_content("image_dims")) if "image_dims" in parser else self.network_dims
        self.lcc = bool(parser.get_parsed_content("lcc")) if "lcc" in parser else False
        spacing = parser.get_parsed_content("target_spacing") if "target_spacing" in parser else None
        self.target_spacing = None if spacing is None else tuple(float(v) for v in spacing)
        if self.target_spacing is not None and (len(self.target_spacing) != self.spatial_dims
                                                or not all(v > 0 for v in self.target_spacing)):
            raise ValueError(f"{self.bundle_root.name}: target_spacing {spacing} is not {self.spatial_dims} "
                             "positive voxel sizes")

    def _parser(self):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config([*config_files(self.bundle_root, "inference"), *self.extra_configs])
        parser["bundle_root"] = str(self.bundle_root)
        parser["device"] = f"$torch.device('{self.device}')"
        return parser

    def is_trained(self) -> bool:
        return self.model_path.is_file()

    def prediction_key(self) -> str:
        """What a prediction depends on besides the image: the weights (their mtime), the bundle version and the
        content of the inference configs (sliding-window blending, overlap, post-processing). Cached scores made
        under another key are stale."""
        configs = self.bundle_root / "configs"
        digest = hashlib.sha1()
        for path in map(Path, [*config_files(self.bundle_root, "inference"), *self.extra_configs]):
            digest.update(path.read_bytes() if path.is_file() else str(path).encode())
        meta = configs / "metadata.json"
        version = json.loads(meta.read_text()).get("version") if meta.is_file() else None
        return f"{self.model_path.stat().st_mtime}|{version}|{digest.hexdigest()[:12]}"

    def _load(self) -> tuple:
        if not self.model_path.is_file():
            raise ModelNotTrainedError(f"model {self.bundle_root.name!r} has no trained weights yet "
                                       f"({self.model_path} does not exist): train it first (POST /train/"
                                       f"{self.bundle_root.name}) or copy a trained model.pt there")
        mtime = self.model_path.stat().st_mtime
        with self._lock:
            if self._loaded is None or self._loaded[0] != mtime:
                from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Spacingd

                parser = self._parser()
                network = parser.get_parsed_content("network")
                weights = load_weights(self.model_path, self.device)  # names an unreadable file itself
                try:
                    network.load_state_dict(weights, strict=True)
                except RuntimeError as e:  # missing/unexpected keys or shapes: other network settings
                    raise ModelNotTrainedError(f"{self.model_path}: these weights do not fit model "
                                               f"{self.bundle_root.name!r} as configured ({str(e)[:300]}); retrain "
                                               "it or replace the file") from e
                network.eval()
                pre = parser.get_parsed_content("preprocessing")
                # the image is read here with nibabel (exact geometry, clear errors) and resampled to target_spacing
                # by predict(); the rest of the chain applies
                steps = [t for t in pre.transforms if not isinstance(t, (LoadImaged, EnsureChannelFirstd, Spacingd))]
                self._loaded = (mtime, network, Compose(steps), parser.get_parsed_content("inferer"))
                logger.info(f"loaded {self.model_path} (mtime {mtime})")
            return self._loaded

    def read(self, path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
        """The image and its ``[*S]`` float32 array, with a clear error for unreadable, too large, wrong-dimension or
        non-finite files."""
        try:
            img, arr = read_volume(path, Path(path).name, self.limits, self.spatial_dims)
        except VolumeError as e:
            raise ImageError(str(e), 413 if isinstance(e, VolumeTooLarge) else 400) from e
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError(f"{Path(path).name}: the image holds NaN or infinite values")
        return img, arr

    def model_shape(self, img: nib.spatialimages.SpatialImage, shape: Sequence[int]) -> tuple[int, ...] | None:
        """The shape ``img`` (array ``shape``) takes at ``target_spacing``; ``None`` when its spacing already is
        that (within 1 %) or the bundle declares none."""
        if self.target_spacing is None:
            return None
        zooms = np.asarray(img.header.get_zooms()[: self.spatial_dims], dtype=float)
        target = np.asarray(self.target_spacing)
        if np.allclose(zooms, target, rtol=0.01):
            return None
        return tuple(max(1, int(round(n * z / t))) for n, z, t in zip(shape, zooms, target))

    @torch.no_grad()
    def predict(self, path: str | Path) -> Prediction:
        """The softmax of the served network(s) for the image at ``path``, on the image's own grid. An image whose
        voxel size differs from the bundle's ``target_spacing`` is resampled to it (trilinear) for the network, and
        the probabilities are resampled back to the image's shape."""
        from monai.transforms import Resize

        t0 = time.perf_counter()
        img, arr = self.read(path)
        mtime, network, transforms, inferer = self._load()
        x = torch.from_numpy(arr)[None]
        resized = self.model_shape(img, arr.shape)
        if resized is not None:
            x = Resize(spatial_size=resized, mode="trilinear" if self.spatial_dims == 3 else "bilinear")(x)
        x = transforms({"image": x})["image"]
        x = torch.as_tensor(x, dtype=torch.float32, device=self.device)[None]
        nets = list(network.nets) if hasattr(network, "nets") else [network]
        per = [torch.softmax(inferer(inputs=x, network=n), 1)[0].float().cpu() for n in nets]
        if tuple(per[0].shape[1:]) != tuple(arr.shape):  # resampled here, or resized by the bundle's own chain
            back = Resize(spatial_size=arr.shape, mode="trilinear" if self.spatial_dims == 3 else "bilinear")
            per = [torch.as_tensor(back(p)) for p in per]
        index = getattr(network, "index", -1)
        probs = per[index] if len(per) > 1 and index >= 0 else torch.stack(per).mean(0)
        return Prediction(probs, per, img, mtime, time.perf_counter() - t0)

    def segment(self, prediction: Prediction) -> np.ndarray:
        """``[*S]`` uint8 label map (argmax, then the bundle's largest-connected-component cleaning if it has it)."""
        seg = prediction.probs.argmax(0)
        if self.lcc and self.num_classes > 1:
            from monai.transforms import KeepLargestConnectedComponent

            seg = KeepLargestConnectedComponent(applied_labels=list(range(1, self.num_classes)), is_onehot=False,
                                                independent=True)(seg[None])[0]
        return np.asarray(seg, dtype=np.uint8)


def load_weights(path: str | Path, device: Any = "cpu") -> dict:
    """The network state dict of a ``model.pt`` (``{"model": state}`` as the bundles write it, or a bare state dict),
    with ``ModelNotTrainedError`` naming the file when it cannot be read."""
    try:
        return read_state_dict(path, map_location=device)
    except ValueError as e:
        raise ModelNotTrainedError(f"{e}; retrain the model or replace the file") from e


def write_label(seg: np.ndarray, like: nib.Nifti1Image, path: str | Path) -> Path:
    """Write ``seg`` as NIfTI with ``like``'s grid (affine, qform and sform), reshaped to its spatial shape."""
    seg = seg.reshape(like.shape[: seg.ndim] + (1,) * (len(like.shape) - seg.ndim))
    out = nib.Nifti1Image(seg.astype(np.uint8), like.affine)
    out.set_qform(like.get_qform(), int(like.header["qform_code"]) or 1)
    out.set_sform(like.get_sform(), int(like.header["sform_code"]) or 1)
    nib.save(out, str(path))
    return Path(path)
