"""Reading a client's NIfTI volume with bounded memory (the header is checked before any voxel is read), and
writing a label map on an image's grid.

A NIfTI header states the array's shape and type, and ``nibabel`` allocates that much before reading the data. An
85-byte file can claim gigabytes, and a small gzip stream can decode to hundreds of megabytes. Every volume the app
reads on a client's behalf (uploads, labels, images to segment) therefore goes through :func:`read_volume`, which
refuses a volume whose header declares more voxels than :class:`VolumeLimits` allows, or more data than the file
holds, before reading it.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import nibabel as nib
import numpy as np

from lib.conf_values import positive_number

__all__ = ["VolumeError", "VolumeTooLarge", "VolumeLimits", "grid_voxels", "read_header", "read_volume",
           "voxel_sizes", "write_label"]

_CHUNK = 1 << 20
#: the most bytes of header and extensions before the voxels (NIfTI's ``vox_offset``); real files have 352 plus
#: a few kB of extensions. A forged offset would otherwise make the size check decode the whole stream
MAX_HEADER_BYTES = 16 << 20


class VolumeError(ValueError):
    """A volume that cannot be read or does not suit the app; the message names it."""


class VolumeTooLarge(VolumeError):
    """A volume above the server's limits (HTTP 413)."""


@dataclass(frozen=True)
class VolumeLimits:
    """What one uploaded volume may cost the server.

    Args:
        max_voxels: the most voxels one volume may declare (default 512³ = 134,217,728: a 512 × 512 CT of 512
            slices; an LA MRI at 0.625 mm has about 36 M). Conf key ``max_voxels``.
        max_upload_bytes: the most bytes one request body may carry (default 512 MiB; an uncompressed LA MRI is
            about 144 MB). Conf key ``max_upload_mb``.
    """

    max_voxels: int = 512 ** 3
    max_upload_bytes: int = 512 * 1024 * 1024

    @classmethod
    def from_conf(cls, conf: dict) -> "VolumeLimits":
        """The limits from ``--conf max_voxels N`` and ``--conf max_upload_mb M``; a bad value names its key."""
        values = {}
        for key, field, scale in (("max_voxels", "max_voxels", 1), ("max_upload_mb", "max_upload_bytes", 1 << 20)):
            value = positive_number(conf, key)
            if value is not None:
                values[field] = int(value * scale)
        return cls(**values)


def _data_bytes_available(path: str, needed: int) -> int:
    """How many bytes ``path`` holds, decoded if gzip, counting no further than ``needed`` (bounded memory)."""
    if not path.endswith(".gz"):
        return os.path.getsize(path)
    seen = 0
    try:
        with gzip.open(path, "rb") as f:
            while seen < needed:
                chunk = f.read(min(_CHUNK, needed - seen))
                if not chunk:
                    break
                seen += len(chunk)
    except (OSError, EOFError, zlib.error):
        pass  # a corrupt or truncated stream: what was decoded so far is what it holds
    return seen


def read_header(path: str | os.PathLike, name: str, limits: VolumeLimits, check_data: bool = True,
                check: Callable[[nib.spatialimages.SpatialImage, str], None] | None = None
                ) -> nib.spatialimages.SpatialImage:
    """The image object of ``path`` with only its header read, after checking what the header declares.

    Raises :class:`VolumeTooLarge` for more voxels than ``limits.max_voxels``, and :class:`VolumeError` for a
    file that is not NIfTI or (with ``check_data``, which decodes a gzip stream once) holds less data than its
    header declares. ``check(img, name)``, the caller's own test of the header (a model's grid), runs before any
    data is decoded and raises the same errors. ``name`` is what messages call the file.
    """
    path = str(path)
    try:
        img = nib.load(path)
        shape = tuple(int(s) for s in img.shape)
        dtype = np.dtype(img.header.get_data_dtype())
        affine = np.asarray(img.affine, dtype=float)
    except Exception as e:
        raise VolumeError(f"{name}: not a readable NIfTI volume ({type(e).__name__}: {str(e)[:200]})") from e
    if dtype.kind not in "biuf":  # RGB (a structured type) or complex: not an intensity image or a label map
        raise VolumeError(f"{name}: voxels of type {dtype} ({'RGB' if dtype.names else dtype.kind}); expected one "
                          "real-valued channel (integers or floats)")
    zooms = voxel_sizes(img, len(shape)) if np.isfinite(affine).all() else np.full(len(shape), np.nan)
    if not (np.isfinite(zooms).all() and (zooms > 0).all()):
        raise VolumeError(f"{name}: the voxel sizes of its affine (sform/qform), {tuple(zooms.tolist())}, must be "
                          "positive and finite")
    voxels = math.prod(shape)
    if voxels > limits.max_voxels:
        raise VolumeTooLarge(f"{name}: the header declares shape {shape}, {voxels:,} voxels, above this server's "
                             f"limit of {limits.max_voxels:,} (--conf max_voxels)")
    offset = int(getattr(img.dataobj, "offset", 0))
    if offset > MAX_HEADER_BYTES:
        raise VolumeError(f"{name}: the header puts the voxels {offset:,} bytes into the file (vox_offset); this "
                          f"server reads at most {MAX_HEADER_BYTES:,} bytes of header")
    if check is not None:
        check(img, name)
    needed = offset + voxels * dtype.itemsize
    held = _data_bytes_available(path, needed) if check_data else needed
    if held < needed:
        raise VolumeError(f"{name}: truncated: the header declares {needed:,} bytes of header and data, the file "
                          f"holds {held:,}")
    return img


def voxel_sizes(img: nib.spatialimages.SpatialImage, spatial_dims: int) -> np.ndarray:
    """The voxel size along each of the first ``spatial_dims`` axes from the image's affine: what resampling uses
    (the header's ``pixdim`` can say otherwise, and a forged one must not pass a size check)."""
    return np.asarray(nib.affines.voxel_sizes(np.asarray(img.affine, dtype=float)), dtype=float)[:spatial_dims]


def grid_voxels(img: nib.spatialimages.SpatialImage, spatial_dims: int,
                target_spacing: Sequence[float] | None = None, spatial_size: Sequence[int] | None = None) -> int:
    """How many voxels ``img`` (its header) has on a model's grid: resampled to ``target_spacing`` (one voxel size
    per axis), or resized to ``spatial_size`` (MONAI's ``Resized``: an entry of -1 keeps that axis; ACDC's slices),
    or as it is. What a model's pre-processing allocates grows with this, not with the upload's size."""
    shape = [int(s) for s in img.shape[:spatial_dims]]
    if target_spacing is not None:
        zooms = voxel_sizes(img, spatial_dims)
        shape = [max(1, math.ceil(s * z / t)) for s, z, t in zip(shape, zooms, target_spacing)]
    if spatial_size is not None:
        shape = [int(v) if int(v) > 0 else s for s, v in zip(shape, spatial_size)] + shape[len(spatial_size):]
    return math.prod(shape)


def read_volume(path: str | os.PathLike, name: str, limits: VolumeLimits, spatial_dims: int | None = None,
                check: Callable[[nib.spatialimages.SpatialImage, str], None] | None = None
                ) -> tuple[nib.spatialimages.SpatialImage, np.ndarray]:
    """The image and its array, read only after :func:`read_header` (with ``check``) passed.

    With ``spatial_dims``, trailing singleton axes beyond it are dropped and any other number of axes is a
    :class:`VolumeError` (a 2D or 4D upload to a 3D model). ``name`` is what messages call the file.
    """
    img = read_header(path, name, limits, check=check)
    try:
        arr = np.asanyarray(img.dataobj)
    except Exception as e:
        raise VolumeError(f"{name}: cannot read the voxels ({type(e).__name__}: {str(e)[:200]})") from e
    if spatial_dims is not None:
        while arr.ndim > spatial_dims and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != spatial_dims:
            raise VolumeError(f"{name}: a {arr.ndim}D image (shape {tuple(arr.shape)}) for a {spatial_dims}D model")
        if min(arr.shape) < 1:
            raise VolumeError(f"{name}: an empty volume (shape {tuple(arr.shape)})")
    return img, arr


def write_label(seg: np.ndarray, like: nib.Nifti1Image, path: str | os.PathLike) -> str:
    """Write ``seg`` as NIfTI with ``like``'s grid (affine, qform and sform), reshaped to its spatial shape."""
    seg = seg.reshape(like.shape[: seg.ndim] + (1,) * (len(like.shape) - seg.ndim))
    out = nib.Nifti1Image(seg.astype(np.uint8), like.affine)
    out.set_qform(like.get_qform(), int(like.header["qform_code"]) or 1)
    out.set_sform(like.get_sform(), int(like.header["sform_code"]) or 1)
    nib.save(out, str(path))
    return str(path)
