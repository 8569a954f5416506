"""The local datastore, with validated uploads and labels and atomic writes.

MONAI Label's ``LocalDatastore`` copies files in place (a crash leaves half a label), accepts any bytes as an
image, any label shape, grid and value, and joins ids and tags into paths unchecked (``../`` escapes the datastore).
Here every upload is read within :class:`~lib.volumes.VolumeLimits` and must suit the served models (their number
of spatial axes, finite values); a label must have its image's shape and grid; and an id is stored under one file
extension only, so deleting a label never brings back an older one saved under the other extension. No write takes
the datastore past :class:`~lib.datastore.storage_limits.StorageLimits`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict

import nibabel as nib
import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from lib.datastore.storage_limits import StorageLimits
from lib.errors import RequestError, bad_request, check_id, conflict, not_found
from lib.middleware.temp_files import current_request
from lib.volumes import VolumeError, VolumeLimits, VolumeTooLarge, read_header, read_volume
from ssmis.utils.atomic import atomic_replace, atomic_write_text

logger = logging.getLogger(__name__)

EXTENSIONS = (".nii.gz", ".nii")


def _ext(filename: str) -> str:
    for e in EXTENSIONS:
        if filename.endswith(e):
            return e
    raise bad_request(f"{os.path.basename(filename)}: only NIfTI files (.nii.gz, .nii) are accepted")


#: a label's affine may differ from its image's by this much (mm, per matrix entry): rounding in NIfTI writers
AFFINE_ATOL = 1e-3


def _read(path: str, what: str, limits: VolumeLimits, spatial_dims: int,
          check: Callable[[Any, str], None] | None = None) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Read an upload within ``limits`` (and ``check``, on its header): 413 above them, 400 if unreadable or not
    ``spatial_dims``-D."""
    try:
        return read_volume(path, what, limits, spatial_dims, check)
    except VolumeTooLarge as e:
        raise RequestError(413, str(e)) from e
    except VolumeError as e:
        raise bad_request(str(e)) from e


def _id_from_file_name() -> bool:
    """Whether the request being served uploads an image without naming its id (``?image=``): MONAI Label then takes
    the file name up to its first dot. False outside a request."""
    info = current_request()
    return info is not None and not info.query.get("image")


def _remove_other_extensions(folder: str, stem: str, keep: str) -> None:
    """Delete ``folder/stem<ext>`` for every NIfTI extension but ``keep``: one file per id."""
    for ext in EXTENSIONS:
        if ext != keep and os.path.isfile(os.path.join(folder, stem + ext)):
            os.remove(os.path.join(folder, stem + ext))


#: the most bytes of JSON one image's or label's info may hold, after an update is merged into it
MAX_INFO_BYTES = 256 * 1024
#: info keys the server writes itself (``strategy``: when each active-learning strategy proposed the image)
SERVER_KEYS = ("name", "ts", "ext")


def _params(info: Any, field: str = "params") -> Dict[str, Any]:
    """The request's ``params`` (or ``info``) as a new dict; anything but a JSON object (or nothing) is a 400,
    before any write. Keys the server writes are refused, and ``strategy`` must keep its shape (an object of
    objects), so a client cannot break what the server reads back."""
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise bad_request(f"the {field} field must be a JSON object, got {type(info).__name__}: {info!r:.80}")
    own = [k for k in SERVER_KEYS if k in info]
    if own:
        raise bad_request(f"the {field} field sets {own}, which the server writes itself")
    strategy = info.get("strategy", {})
    if not (isinstance(strategy, dict) and all(isinstance(v, dict) for v in strategy.values())):
        raise bad_request(f"the {field} field's 'strategy' must be an object of objects (strategy name -> record)")
    return dict(info)


def _merged(old: Dict[str, Any], update: Dict[str, Any], what: str) -> Dict[str, Any]:
    """``old`` updated by ``update``; a 413 naming ``what`` when the result passes :data:`MAX_INFO_BYTES`."""
    merged = {**old, **update}
    size = len(json.dumps(merged, default=str))
    if size > MAX_INFO_BYTES:
        raise RequestError(413, f"the info of {what} would hold {size:,} bytes of JSON, above the limit of "
                                f"{MAX_INFO_BYTES:,}")
    return merged


def _index_growth(info: Dict[str, Any]) -> int:
    """An upper bound of the bytes ``info`` adds to the index, which is written with ``indent=2`` and holds an
    entry's info about 6 levels deep, plus the entry's own keys."""
    text = json.dumps(info, indent=2, default=str)
    return len(text) + 12 * (text.count("\n") + 1) + 512


class SafeLocalDatastore(LocalDatastore):
    """Args (beyond ``LocalDatastore``'s): ``num_classes``: labels may hold the values ``0 … num_classes − 1``;
    ``limits``: what one upload may cost; ``spatial_dims``: the served models' number of spatial axes;
    ``grid_check``: ``(header, name) -> None``, raising :class:`~lib.volumes.VolumeTooLarge` for an image too
    large on a served model's grid (an upload with large voxels, resampled); run on every uploaded image;
    ``storage``: how much disk images and labels may take."""

    def __init__(self, datastore_path: str, num_classes: int, limits: VolumeLimits | None = None,
                 spatial_dims: int = 3, grid_check: Callable[[Any, str], None] | None = None,
                 storage: StorageLimits | None = None, **kwargs: Any) -> None:
        self.grid_check = grid_check
        self.storage = storage or StorageLimits()
        self.num_classes = int(num_classes)
        self.limits = limits or VolumeLimits()
        self.spatial_dims = int(spatial_dims)
        super().__init__(datastore_path, **kwargs)
        handler = getattr(self, "_handler", None)  # set by LocalDatastore with auto_reload
        if handler is not None:
            # the index is now replaced by a rename (see _update_datastore_file), which watchdog reports as "moved",
            # an event LocalDatastore does not listen to; reload on it as it reloads on "modified"
            handler.on_moved = self._on_index_moved

    def _on_index_moved(self, event: Any) -> None:
        if os.path.abspath(getattr(event, "dest_path", "")) == os.path.abspath(self._datastore_config_path):
            self._init_from_datastore_file()  # a no-op for this process's own writes: _config_ts already matches

    def _check_index(self, info: Dict[str, Any], what: str) -> None:
        """507 when adding ``info`` (about to be written) could take the index past the storage limits."""
        self.storage.check_index(self._datastore_config_path, _index_growth(info), what)

    def _copy_in(self, src: str, dest: str, what: str) -> None:
        """Copy ``src`` to ``dest`` atomically, within the storage limits (counting out the file it replaces under
        either extension)."""
        stem = os.path.basename(dest)
        stem = stem[: -len(_ext(stem))]
        folder = os.path.dirname(dest)
        replaced = sum(os.path.getsize(p) for p in (os.path.join(folder, stem + e) for e in EXTENSIONS)
                       if os.path.isfile(p))
        self.storage.check(self._datastore_path, os.path.getsize(src), replaced, what)
        atomic_replace(lambda tmp: shutil.copyfile(src, tmp), dest)

    def _update_datastore_file(self, lock: bool = True) -> None:
        """Write the datastore's JSON index atomically.

        ``LocalDatastore`` rewrites it in place: a crash mid-write truncates the index, and on the next start every
        image's labels and info are gone from it. The rename raises no ``modified`` event on the index, so, unlike
        the base class, this does not arm ``_ignore_event_config`` (which would swallow the next outside edit).
        """

        def write() -> None:
            text = json.dumps(self._datastore.model_dump(exclude={"base_path"}), indent=2, default=str)
            atomic_write_text(text, self._datastore_config_path)
            self._config_ts = os.stat(self._datastore_config_path).st_mtime

        if lock:
            with FileLock(self._lock_file):
                write()
        else:
            write()

    def add_image(self, image_id: str, image_filename: str, image_info: Dict[str, Any]) -> str:
        ext = _ext(image_filename)
        image_id = check_id(image_id or os.path.basename(image_filename)[: -len(ext)], "image id")
        info = _merged({}, _params(image_info), f"image {image_id!r}")
        what = f"the uploaded image {image_id!r}"
        self._check_index(info, what)
        img, arr = _read(image_filename, what, self.limits, self.spatial_dims, self.grid_check)
        if not np.isfinite(arr).all():
            raise bad_request(f"{what} holds NaN or infinite values")
        name = image_id + ext
        dest = os.path.join(self._datastore.image_path(), name)
        with FileLock(self._lock_file):
            old = self._datastore.objects.get(image_id)
            labels = dict(old.labels) if old else {}
            if old and not self._same_image(image_id, img, arr):
                if labels:
                    raise conflict(f"image {image_id!r} already has labels {sorted(labels)}, and the new upload is a "
                                   "different image (other voxels, shape or grid); delete the image first to replace "
                                   "it")
                if _id_from_file_name():
                    raise conflict(f"an image {image_id!r} is in the datastore already and the upload is a different "
                                   f"image; its id comes from the file name up to the first dot: name it with "
                                   f"?image=<id> (?image={image_id} replaces the stored one)")
            self._copy_in(image_filename, dest, what)
            _remove_other_extensions(self._datastore.image_path(), image_id, ext)
            info.update(ts=int(time.time()), name=name)
            # re-uploading the same image keeps its labels; before, the entry was rebuilt without them
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext), labels=labels)
            self._update_datastore_file(lock=False)
        return image_id

    def _same_image(self, image_id: str, img: nib.Nifti1Image, arr: np.ndarray) -> bool:
        """Whether the stored image of ``image_id`` has the voxels and grid of ``img``/``arr``."""
        try:
            old_img, old_arr = read_volume(self.get_image_uri(image_id), image_id, self.limits, self.spatial_dims)
        except VolumeError:
            return False
        return (old_arr.shape == arr.shape and np.allclose(old_img.affine, img.affine, atol=AFFINE_ATOL)
                and np.array_equal(old_arr, arr))

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        info = _merged({}, _params(label_info), f"label {label_tag!r} of {image_id!r}")
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise not_found(f"image {image_id!r} is not in the datastore")
        ext = _ext(label_filename)
        what = f"the label for {image_id!r}"
        self._check_index(info, what)
        label_img, label = _read(label_filename, what, self.limits, self.spatial_dims)
        image = read_header(self.get_image_uri(image_id), f"image {image_id!r}", self.limits)
        image_shape = tuple(image.shape[: self.spatial_dims])
        if tuple(label.shape) != image_shape:
            raise bad_request(f"{what} has shape {tuple(label.shape)} but the image has shape {image_shape}")
        if not np.allclose(label_img.affine, image.affine, atol=AFFINE_ATOL):
            raise bad_request(f"{what} lies on another grid than its image (affine\n{np.round(label_img.affine, 4)}\n"
                              f"against\n{np.round(image.affine, 4)}): save it on the image's grid")
        values = np.unique(np.asarray(label))
        bad = [v for v in values.tolist() if not float(v).is_integer() or not 0 <= v < self.num_classes]
        if bad:
            raise bad_request(f"{what} holds values {bad[:10]} outside the classes 0..{self.num_classes - 1}")
        label_path = self._datastore.label_path(label_tag)
        name = image_id + ext
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            self._copy_in(label_filename, os.path.join(label_path, name), what)
            _remove_other_extensions(label_path, image_id, ext)
            info.update(ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        return image_id

    def remove_image(self, image_id: str) -> None:
        check_id(image_id, "image id")
        if image_id not in self._datastore.objects:
            raise not_found(f"image {image_id!r} is not in the datastore")
        super().remove_image(image_id)

    def remove_label(self, label_id: str, label_tag: str) -> None:
        check_id(label_id, "image id")
        check_id(label_tag, "label tag")
        if not self._datastore.label(label_id, label_tag):
            raise not_found(f"no label {label_tag!r} for image {label_id!r} in the datastore")
        super().remove_label(label_id, label_tag)

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        info = _params(info, "info")  # not an object: a 400 (the base class fails with a TypeError, a 500)
        if image_id not in self._datastore.objects:
            raise not_found(f"image {image_id!r} is not in the datastore")
        _merged(self._datastore.objects[image_id].image.info, info, f"image {image_id!r}")
        self._check_index(info, f"the info of image {image_id!r}")
        super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        info = _params(info, "info")
        label = self._datastore.label(label_id, label_tag)
        if not label:  # the base class raises LabelNotFoundException: a 500
            raise not_found(f"no label {label_tag!r} for image {label_id!r} in the datastore")
        _merged(getattr(label, "info", None) or {}, info, f"label {label_tag!r} of {label_id!r}")
        self._check_index(info, f"the info of label {label_tag!r} of {label_id!r}")
        super().update_label_info(label_id, label_tag, info)

    def get_image_uri(self, image_id: str) -> str:
        if not isinstance(image_id, str) or image_id not in self._datastore.objects:
            return ""
        return super().get_image_uri(image_id)

    def image_exists(self, image_id: str) -> bool:
        return bool(self.get_image_uri(image_id)) and Path(self.get_image_uri(image_id)).is_file()
