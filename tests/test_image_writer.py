"""The atomic NIfTI writer used by every bundle's SaveImaged."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import SaveImaged

from ssmis.data import AtomicNibabelWriter


def _save(out, value, writer=AtomicNibabelWriter, ext=".nii.gz", separate_folder=False):
    img = torch.full((1, 6, 5, 4), value, dtype=torch.float32)
    meta = {"filename_or_obj": "case_01" + ext, "affine": torch.eye(4), "spatial_shape": (6, 5, 4)}
    from monai.data import MetaTensor

    SaveImaged(keys="pred", output_dir=str(out), output_postfix="seg", output_dtype=np.uint8, resample=False,
               separate_folder=separate_folder, output_ext=ext, writer=writer)({"pred": MetaTensor(img, meta=meta)})
    return out / ("case_01" if separate_folder else "") / f"case_01_seg{ext}"


def test_writes_the_same_volume_as_monai_writer(tmp_path):
    path = _save(tmp_path, 3)
    arr = np.asarray(nib.load(path).dataobj)
    assert arr.shape == (6, 5, 4) and arr.dtype == np.uint8 and (arr == 3).all()
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"  # gzip: the temporary name kept ".nii.gz"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_01_seg.nii.gz"]


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = _save(tmp_path, 2)
    before = path.read_bytes()

    def truncated_then_killed(img, filename):
        with open(filename, "wb") as f:
            f.write(b"\x1f\x8b partial")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", truncated_then_killed)
    # SaveImaged reports a writer's failure as a RuntimeError that quotes the writer's traceback
    with pytest.raises(RuntimeError, match="OSError: disk full"):
        _save(tmp_path, 1)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case_01_seg.nii.gz"]


@pytest.mark.parametrize("ext, separate_folder", [(".nii", False), (".nii.gz", True)])
def test_same_file_and_permissions_as_monai_writer(tmp_path, ext, separate_folder):
    from monai.data import NibabelWriter

    ours = _save(tmp_path / "ours", 1, AtomicNibabelWriter, ext, separate_folder)
    theirs = _save(tmp_path / "theirs", 1, NibabelWriter, ext, separate_folder)
    assert ours.is_file() and ours.read_bytes() == theirs.read_bytes()
    assert (ours.stat().st_mode & 0o777) == (theirs.stat().st_mode & 0o777)  # not mkstemp's owner-only 0600
    assert [p.name for p in ours.parent.iterdir()] == [ours.name]


def test_log_names_the_final_file(tmp_path):
    """SaveImaged's ``print_log`` line names the segmentation, not the temporary file it is written through."""
    import logging

    from monai.data.image_writer import logger

    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger.addHandler(handler)
    try:
        path = _save(tmp_path, 1)
    finally:
        logger.removeHandler(handler)
    assert lines == [f"writing: {path}"]
