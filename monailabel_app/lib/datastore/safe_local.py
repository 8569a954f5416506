"""The local datastore, with validated uploads and labels and atomic writes.

MONAI Label's ``LocalDatastore`` copies files in place (a crash leaves half a label), accepts any bytes as an
image, any label shape and value, and joins ids and tags into paths unchecked (``../`` escapes the datastore).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Dict

import nibabel as nib
import numpy as np
from filelock import FileLock
from monailabel.datastore.local import DataModel, ImageLabelModel, LocalDatastore

from lib.errors import bad_request, check_id, conflict, not_found
from ssmis.utils.atomic import atomic_replace, atomic_write_text

logger = logging.getLogger(__name__)

EXTENSIONS = (".nii.gz", ".nii")


def _ext(filename: str) -> str:
    for e in EXTENSIONS:
        if filename.endswith(e):
            return e
    raise bad_request(f"{os.path.basename(filename)}: only NIfTI files (.nii.gz, .nii) are accepted")


def _read(path: str, what: str) -> np.ndarray:
    try:
        return np.asanyarray(nib.load(path).dataobj)
    except Exception as e:
        raise bad_request(f"the uploaded {what} is not a readable NIfTI volume ({e})") from e


def _params(info: Any, field: str = "params") -> Dict[str, Any]:
    """The request's ``params`` (or ``info``) as a new dict; anything but a JSON object (or nothing) is a 400,
    before any write."""
    if info is None:
        return {}
    if not isinstance(info, dict):
        raise bad_request(f"the {field} field must be a JSON object, got {type(info).__name__}: {info!r:.80}")
    return dict(info)


class SafeLocalDatastore(LocalDatastore):
    """Args (beyond ``LocalDatastore``'s): ``num_classes``: labels may hold the values ``0 … num_classes − 1``."""

    def __init__(self, datastore_path: str, num_classes: int, **kwargs: Any) -> None:
        self.num_classes = int(num_classes)
        super().__init__(datastore_path, **kwargs)
        handler = getattr(self, "_handler", None)  # set by LocalDatastore with auto_reload
        if handler is not None:
            # the index is now replaced by a rename (see _update_datastore_file), which watchdog reports as "moved",
            # an event LocalDatastore does not listen to; reload on it as it reloads on "modified"
            handler.on_moved = self._on_index_moved

    def _on_index_moved(self, event: Any) -> None:
        if os.path.abspath(getattr(event, "dest_path", "")) == os.path.abspath(self._datastore_config_path):
            self._init_from_datastore_file()  # a no-op for this process's own writes: _config_ts already matches

    def _copy_in(self, src: str, dest: str) -> None:
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
        info = _params(image_info)
        arr = _read(image_filename, "image")
        if arr.ndim < 2 or min(arr.shape) < 1:
            raise bad_request(f"the uploaded image {image_id!r} has shape {arr.shape}: not a 2D or 3D volume")
        name = image_id + ext
        dest = os.path.join(self._datastore.image_path(), name)
        with FileLock(self._lock_file):
            old = self._datastore.objects.get(image_id)
            labels = dict(old.labels) if old else {}
            if labels and old.image.ext != ext:
                raise conflict(f"image {image_id!r} is stored as {old.image.ext} with labels; re-upload it as "
                               f"{old.image.ext}, or delete it first")
            if labels:
                previous = tuple(nib.load(self.get_image_uri(image_id)).shape)
                if previous != tuple(arr.shape):
                    raise conflict(f"image {image_id!r} already has labels {sorted(labels)} of shape {previous}, and "
                                   f"the new upload has shape {tuple(arr.shape)}; delete the image first to replace it")
            self._copy_in(image_filename, dest)
            info.update(ts=int(time.time()), name=name)
            # a same-shape re-upload keeps its labels (they still fit); before, the entry was rebuilt without them
            self._datastore.objects[image_id] = ImageLabelModel(image=DataModel(info=info, ext=ext), labels=labels)
            self._update_datastore_file(lock=False)
        return image_id

    def save_label(self, image_id: str, label_filename: str, label_tag: str, label_info: Dict[str, Any]) -> str:
        check_id(image_id, "image id")
        check_id(label_tag, "label tag")
        info = _params(label_info)
        obj = self._datastore.objects.get(image_id)
        if not obj:
            raise not_found(f"image {image_id!r} is not in the datastore")
        ext = _ext(label_filename)
        label = _read(label_filename, "label")
        image_shape = nib.load(self.get_image_uri(image_id)).shape
        if tuple(label.shape) != tuple(image_shape):
            raise bad_request(f"the label for {image_id!r} has shape {tuple(label.shape)} but the image has shape "
                              f"{tuple(image_shape)}")
        values = np.unique(np.asarray(label))
        bad = [v for v in values.tolist() if not float(v).is_integer() or not 0 <= v < self.num_classes]
        if bad:
            raise bad_request(f"the label for {image_id!r} holds values {bad[:10]} outside the classes "
                              f"0..{self.num_classes - 1}")
        label_path = self._datastore.label_path(label_tag)
        name = image_id + ext
        with FileLock(self._lock_file):
            os.makedirs(label_path, exist_ok=True)
            self._copy_in(label_filename, os.path.join(label_path, name))
            info.update(ts=int(time.time()), name=name)
            obj.labels[label_tag] = DataModel(info=info, ext=ext)
            self._update_datastore_file(lock=False)
        return image_id

    def update_image_info(self, image_id: str, info: Dict[str, Any]) -> None:
        info = _params(info, "info")  # not an object: a 400 (the base class fails with a TypeError, a 500)
        if image_id not in self._datastore.objects:
            raise not_found(f"image {image_id!r} is not in the datastore")
        super().update_image_info(image_id, info)

    def update_label_info(self, label_id: str, label_tag: str, info: Dict[str, Any]) -> None:
        info = _params(info, "info")
        if not self._datastore.label(label_id, label_tag):  # the base class raises LabelNotFoundException: a 500
            raise not_found(f"no label {label_tag!r} for image {label_id!r} in the datastore")
        super().update_label_info(label_id, label_tag, info)

    def get_image_uri(self, image_id: str) -> str:
        if not isinstance(image_id, str) or image_id not in self._datastore.objects:
            return ""
        return super().get_image_uri(image_id)

    def image_exists(self, image_id: str) -> bool:
        return bool(self.get_image_uri(image_id)) and Path(self.get_image_uri(image_id)).is_file()
