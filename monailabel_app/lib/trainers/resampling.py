"""Training images at the network's voxel size: resampled copies of the datastore images that are not.

The inference task resamples an image to the bundle's ``target_spacing`` and back; training must see the same
voxel size, so a datastore image (and its label) at another spacing is trained on through a resampled copy, kept in
a cache folder and remade when its source changes.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Dict, Sequence

import nibabel as nib
import numpy as np

from lib.volumes import VolumeLimits, grid_voxels, voxel_sizes

logger = logging.getLogger(__name__)

__all__ = ["resample_records"]


def _resampled(source: str, target: Sequence[float], cache: Path, label: bool, limits: VolumeLimits) -> str:
    """``source`` at ``target`` spacing: the file itself when it already is (within 1 %), else a cached copy
    (image linear, label nearest), remade when the source is newer; ``ValueError`` naming it when the copy would
    pass ``limits.max_voxels``."""
    img = nib.load(source)
    dims = len(target)
    zooms = voxel_sizes(img, dims)  # from the affine, as Spacing resamples
    if np.allclose(zooms, target, rtol=0.01):
        return source
    voxels = grid_voxels(img, dims, target)
    if voxels > limits.max_voxels:
        raise ValueError(f"{source}: shape {tuple(img.shape)} at {tuple(round(float(z), 4) for z in zooms)} mm would "
                         f"be {voxels:,} voxels at {tuple(target)} mm, above this server's limit of "
                         f"{limits.max_voxels:,} (--conf max_voxels)")
    key = hashlib.sha1(f"{os.path.abspath(source)}|{tuple(target)}".encode()).hexdigest()[:12]
    out = cache / f"{key}_{Path(source).name}"
    if out.is_file() and out.stat().st_mtime >= Path(source).stat().st_mtime:
        return str(out)
    from monai.data import MetaTensor
    from monai.transforms import Spacing

    from ssmis.utils.atomic import atomic_replace

    arr = np.asanyarray(img.dataobj)
    while arr.ndim > dims and arr.shape[-1] == 1:
        arr = arr[..., 0]
    data = MetaTensor(np.asarray(arr, dtype=np.float32)[None], affine=img.affine)
    mode = "nearest" if label else "bilinear"
    resampled = Spacing(pixdim=tuple(target), mode=mode, padding_mode="zeros" if label else "border")(data)
    values = resampled[0].numpy()
    values = values.round().astype(np.uint8) if label else values.astype(np.float32)
    cache.mkdir(parents=True, exist_ok=True)
    atomic_replace(lambda tmp: nib.save(nib.Nifti1Image(values, np.asarray(resampled.affine, dtype=float)), tmp),
                   out, keep_extension=True)
    return str(out)


def resample_records(datalist: Dict[str, list], target: Sequence[float] | None, cache: Path,
                     limits: VolumeLimits | None = None) -> Dict[str, list]:
    """``datalist`` with every image and label at ``target`` spacing (``None``: unchanged). Cached copies this
    datalist no longer uses (deleted images, replaced labels) are deleted, so the cache holds one copy per image at
    most."""
    if target is None:
        return datalist
    out: Dict[str, list] = {}
    changed = 0
    for part, records in datalist.items():
        out[part] = []
        for record in records:
            new = dict(record)
            for key in ("image", "label"):
                if key in record:
                    new[key] = _resampled(record[key], target, cache, key == "label", limits or VolumeLimits())
            changed += new != record
            out[part].append(new)
    if changed:
        logger.info(f"{changed} training record(s) resampled to {tuple(target)} mm (cached in {cache})")
    used = {Path(r[k]).name for records in out.values() for r in records for k in ("image", "label") if k in r}
    for stale in (cache.iterdir() if cache.is_dir() else ()):
        if stale.is_file() and stale.name not in used:
            stale.unlink(missing_ok=True)
    return out
