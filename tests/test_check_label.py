"""CheckLabeld: a label that does not fit its image or the classes fails with its file named."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.bundle import ConfigParser
from monai.transforms import Compose

from conftest import BUNDLES, config_list
from ssmis.data import DataError
from ssmis.transforms import CheckLabeld


def _messages(e: BaseException) -> str:
    """The whole chain, as a traceback prints it (MONAI's Compose re-raises a transform's error as the cause)."""
    out = []
    while e is not None:
        out.append(f"{type(e).__name__}: {e}")
        e = e.__cause__
    return "\n".join(out)


def _save(path: Path, data: np.ndarray) -> str:
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return str(path)


@pytest.mark.parametrize("bad, words", [("value", "outside the 2 declared classes"), ("shape", "does not match"),
                                        ("fraction", "non-integer"), ("negative", "outside")])
def test_bad_label_is_named(tmp_path, bad, words):
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    image = _save(tmp_path / "img.nii.gz", np.random.rand(8, 8, 4).astype(np.float32))
    lab = np.zeros((8, 8, 4), np.float32)
    if bad == "shape":
        lab = np.zeros((8, 8, 5), np.float32)
    else:
        lab[1, 2, 3] = {"value": 2.0, "fraction": 0.5, "negative": -1.0}[bad]
    label = _save(tmp_path / "lab.nii.gz", lab)
    t = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                 CheckLabeld("label", num_classes=2)])
    with pytest.raises(Exception) as e:
        t({"image": image, "label": label})
    assert label in _messages(e.value) and words in _messages(e.value)
    assert isinstance(e.value, DataError) or isinstance(e.value.__cause__, DataError)


def test_good_label_passes_unchanged(tmp_path):
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    image = _save(tmp_path / "img.nii.gz", np.random.rand(8, 8, 4).astype(np.float32))
    lab = (np.random.rand(8, 8, 4) * 3).astype(np.uint8)
    label = _save(tmp_path / "lab.nii.gz", lab)
    t = Compose([LoadImaged(["image", "label"], image_only=True), EnsureChannelFirstd(["image", "label"]),
                 CheckLabeld("label", num_classes=3)])
    out = t({"image": image, "label": label})
    np.testing.assert_array_equal(out["label"][0].numpy(), lab)


@pytest.mark.parametrize("bundle", ["supervised_la", "mean_teacher_la", "transmedseg_la", "fixed_dynamic_pl_la"])
def test_bundles_check_labels_on_load(tmp_path, bundle):
    # the bundles' own labelled pipeline (training and, through it, validation) names an out-of-class label
    image = _save(tmp_path / "img.nii.gz", np.random.rand(16, 16, 8).astype(np.float32))
    lab = np.zeros((16, 16, 8), np.uint8)
    lab[4, 4, 4] = 5
    label = _save(tmp_path / "bad_label.nii.gz", lab)
    parser = ConfigParser()
    parser.read_config(config_list(bundle, "train"))
    parser["bundle_root"] = str(BUNDLES / bundle)
    for key in ("train#deterministic_transforms", "validate#preprocessing#transforms"):
        t = Compose(parser.get_parsed_content(key))
        with pytest.raises(Exception) as e:
            t({"image": image, "label": label})
        assert label in _messages(e.value) and "outside" in _messages(e.value), key


def test_unreadable_volume_is_named(tmp_path):
    """A truncated .nii.gz fails with its path in the error (MONAI's own loader names no file)."""
    import torch
    from monai.transforms import LoadImaged

    from ssmis.transforms import NamedLoadImaged

    good, bad = tmp_path / "good.nii.gz", tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.arange(64, dtype=np.float32).reshape(4, 4, 4), np.eye(4)), good)
    bad.write_bytes(good.read_bytes()[:40])
    out = NamedLoadImaged(keys=["image", "label"], ensure_channel_first=True)({"image": str(good), "label": str(good)})
    ref = LoadImaged(keys=["image", "label"], ensure_channel_first=True)({"image": str(good), "label": str(good)})
    assert out["image"].shape == ref["image"].shape == (1, 4, 4, 4)
    assert torch.equal(out["image"].as_tensor(), ref["image"].as_tensor())
    with pytest.raises(DataError, match=f"{bad}: cannot be read as an image"):
        NamedLoadImaged(keys=["image", "label"])({"image": str(good), "label": str(bad)})
    with pytest.raises(RuntimeError) as info:  # inside a Compose, as in the bundles: the cause names the file
        Compose([NamedLoadImaged(keys="image")])({"image": str(bad)})
    assert str(bad) in str(info.value.__cause__)
