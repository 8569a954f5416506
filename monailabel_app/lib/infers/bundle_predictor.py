"""A bundle's own inference chain, served: its ``network``, its ``preprocessing``, its ``inferer`` and its
``postprocessing``, all built from the bundle's ``inference.yaml`` (the shared one, then the bundle's own).

As MONAI Label's ``BundleInferTask`` does, the bundle's loader steps (``LoadImaged``, ``EnsureChannelFirstd``) and
its writer (``SaveImaged``) are left out: the app reads the image itself, with bounded memory (``lib.volumes``),
and writes the label map into its datastore. Every other step is the bundle's, so the app and
``python -m monai.bundle run --config_file <inference configs>`` give the same labels.

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
from monai.data import MetaTensor

from lib.served_weights import fit_mismatch
from lib.volumes import VolumeError, VolumeLimits, VolumeTooLarge, grid_voxels, read_volume, voxel_sizes
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
    """``label`` ``[*S]`` uint8, the served label map on the image's own grid (the bundle's postprocessing);
    ``probs`` ``[K, *M]`` the served network's probabilities on the network's grid (after the bundle's
    resampling); ``image`` the nibabel image read; ``weights_mtime`` of the weights used."""

    label: np.ndarray
    probs: torch.Tensor
    image: nib.Nifti1Image
    weights_mtime: float
    seconds: float


@dataclass
class _Chain:
    """The bundle's inference pieces, built once per weights file."""

    mtime: float
    network: torch.nn.Module
    preprocessing: Any  # the bundle's steps after its loader
    inferer: Any
    postprocessing: Any  # the bundle's steps before its writer


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
        self._loaded: _Chain | None = None
        parser = self._parser()
        self.num_classes = int(parser.get_parsed_content("num_classes"))
        # the network's input axes, and the images' (more for a 2D network run slice by slice on volumes: ACDC)
        self.network_dims = int(parser.get_parsed_content("backbone_def#spatial_dims")
                                if "backbone_def#spatial_dims" in parser else 3)
        self.spatial_dims = (int(parser.get_parsed_content("image_dims")) if "image_dims" in parser
                             else self.network_dims)
        spacing = parser.get_parsed_content("target_spacing") if "target_spacing" in parser else None
        self.target_spacing = None if spacing is None else tuple(float(v) for v in spacing)
        if self.target_spacing is not None and (len(self.target_spacing) != self.spatial_dims
                                                or not all(v > 0 for v in self.target_spacing)):
            raise ValueError(f"{self.bundle_root.name}: target_spacing {spacing} is not {self.spatial_dims} "
                             "positive voxel sizes")
        # what the pre-processing resizes each volume to (ACDC: every slice to the patch size, -1 keeps an axis)
        size = parser.get_parsed_content("slice_size") if "slice_size" in parser else None
        self.spatial_size = None if size is None else tuple(int(v) for v in size)

    def check_grid(self, img: nib.spatialimages.SpatialImage, name: str) -> None:
        """:class:`~lib.volumes.VolumeTooLarge` when ``img`` (its header) would have more voxels on the network's
        grid than the server's ``max_voxels``: resampling a small upload with large voxels, or resizing many small
        slices, can make a volume far larger than the one uploaded."""
        voxels = grid_voxels(img, self.spatial_dims, self.target_spacing, self.spatial_size)
        if voxels > self.limits.max_voxels:
            grid = (f"resampled to {self.target_spacing} mm" if self.target_spacing is not None
                    else f"resized to {self.spatial_size}")
            raise VolumeTooLarge(f"{name}: shape {tuple(img.shape)} with voxel sizes "
                                 f"{tuple(round(float(z), 4) for z in voxel_sizes(img, self.spatial_dims))} would be "
                                 f"{voxels:,} voxels {grid} for {self.bundle_root.name}, above this server's limit "
                                 f"of {self.limits.max_voxels:,} (--conf max_voxels)")

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

    def _load(self) -> _Chain:
        if not self.model_path.is_file():
            shipped = (self.bundle_root / "weights" / "model.pt").is_file()
            hint = (" (its shipped weights are the CPU-protocol network: start the server with --conf extra_config "
                    "cpu_protocol.yaml to serve them)" if shipped and not self.extra_configs else "")
            raise ModelNotTrainedError(f"model {self.bundle_root.name!r} has no trained weights yet "
                                       f"({self.model_path} does not exist): train it first (POST /train/"
                                       f"{self.bundle_root.name}) or copy a trained model.pt there{hint}")
        mtime = self.model_path.stat().st_mtime
        with self._lock:
            if self._loaded is None or self._loaded.mtime != mtime:
                mismatch = fit_mismatch(self.model_path, self.extra_configs)  # once per file, not per request
                if mismatch:
                    raise ModelNotTrainedError(mismatch)
                from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, SaveImaged

                parser = self._parser()
                network = parser.get_parsed_content("network")
                try:
                    network.load_state_dict(read_state_dict(self.model_path, map_location=self.device), strict=True)
                except ValueError as e:  # unreadable: the message names the file
                    raise ModelNotTrainedError(f"{e}; retrain the model or replace the file") from e
                except RuntimeError as e:  # missing/unexpected keys or shapes: other network settings
                    raise ModelNotTrainedError(f"{self.model_path}: these weights do not fit model "
                                               f"{self.bundle_root.name!r} as configured ({str(e)[:300]}); retrain "
                                               "it or replace the file") from e
                network.eval()
                # the same parser resolves `@preprocessing` inside the postprocessing's Invertd, so the steps kept
                # here are the very objects it inverts
                pre = parser.get_parsed_content("preprocessing")
                post = parser.get_parsed_content("postprocessing")
                self._loaded = _Chain(
                    mtime, network,
                    Compose([t for t in pre.transforms if not isinstance(t, (LoadImaged, EnsureChannelFirstd))]),
                    parser.get_parsed_content("inferer"),
                    Compose([t for t in post.transforms if not isinstance(t, SaveImaged)]))
                logger.info(f"loaded {self.model_path} (mtime {mtime})")
            return self._loaded

    def read(self, path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
        """The image and its ``[*S]`` float32 array, with a clear error for unreadable, too large, wrong-dimension or
        non-finite files."""
        try:
            img, arr = read_volume(path, Path(path).name, self.limits, self.spatial_dims, check=self.check_grid)
        except VolumeError as e:
            raise ImageError(str(e), 413 if isinstance(e, VolumeTooLarge) else 400) from e
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ImageError(f"{Path(path).name}: the image holds NaN or infinite values")
        return img, arr

    def _network_input(self, path: str | Path, chain: _Chain) -> tuple[nib.Nifti1Image, dict]:
        """The image read by the app, in the form the bundle's loader gives (``[1, *S]`` with its affine), through
        the bundle's remaining pre-processing: ``{"image": MetaTensor [1, *M]}``."""
        img, arr = self.read(path)
        affine = torch.as_tensor(np.asarray(img.affine, dtype=np.float64))
        image = MetaTensor(torch.from_numpy(arr)[None], affine=affine,
                           meta={"filename_or_obj": str(path), "original_affine": affine.clone(),
                                 "spatial_shape": np.asarray(arr.shape), "original_channel_dim": "no_channel"})
        return img, chain.preprocessing({"image": image})

    def _logits(self, data: dict, chain: _Chain, network: torch.nn.Module) -> torch.Tensor:
        """``[K, *M]``: the bundle's inferer run with ``network`` on ``data["image"]``."""
        x = data["image"].to(device=self.device, dtype=torch.float32)[None]
        return chain.inferer(inputs=x, network=network)[0]

    @torch.no_grad()
    def predict(self, path: str | Path) -> Prediction:
        """The served label map of the image at ``path``: the bundle's pre-processing, network, inferer and
        post-processing (which resamples back to the image's own grid)."""
        t0 = time.perf_counter()
        chain = self._load()
        img, data = self._network_input(path, chain)
        logits = self._logits(data, chain, chain.network)
        pred = MetaTensor(logits.float().cpu(), meta=dict(data["image"].meta))  # its affine included
        out = chain.postprocessing({**data, "pred": pred})["pred"]
        label = np.asarray(torch.as_tensor(out)[0], dtype=np.uint8)
        return Prediction(label, torch.softmax(logits.float(), 0).cpu(), img, chain.mtime, time.perf_counter() - t0)

    @torch.no_grad()
    def network_probabilities(self, path: str | Path) -> list[torch.Tensor]:
        """``[K, *M]`` softmax of each network of a pair (co-training's ``nets``) through the bundle's inferer, on
        the network's grid; for a single network, its one entry. For scoring how much the networks disagree."""
        chain = self._load()
        _, data = self._network_input(path, chain)
        nets = list(chain.network.nets) if hasattr(chain.network, "nets") else [chain.network]
        return [torch.softmax(self._logits(data, chain, n).float(), 0).cpu() for n in nets]
