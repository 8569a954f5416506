"""``python -m ssmis.data prepare-acdc``: patient-level splits, geometry, and bad input named with nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


def make_acdc(root: Path, patients: int = 8, frames: tuple[str, ...] = ("frame01", "frame12")) -> Path:
    """A tiny ACDC in the SSL4MIS layout: ``patients.list`` and two frame files per patient."""
    import h5py

    rng = np.random.default_rng(0)
    (root / "volumes").mkdir(parents=True)
    ids = [f"patient{n:03d}" for n in range(1, patients + 1)]
    (root / "patients.list").write_text("\n".join(ids) + "\n")
    for pid in ids:
        for frame in frames:
            with h5py.File(root / "volumes" / f"{pid}_{frame}.h5", "w") as f:
                f["image"] = rng.random((3, 20, 16), dtype=np.float32)
                f["label"] = rng.integers(0, 4, (3, 20, 16), dtype=np.uint8)
                f["scribble"] = np.zeros((3, 20, 16), np.uint16)
    return root


def run(*argv: str) -> int:
    from ssmis.data.__main__ import main

    return main(list(argv))


def test_split_is_by_patient(tmp_path):
    src = make_acdc(tmp_path / "ACDC")
    assert run("prepare-acdc", "--source", str(src), "--output", str(tmp_path / "out"), "--labeled-patients", "2",
               "--val-patients", "3", "--seed", "5") == 0
    d = json.loads((tmp_path / "out" / "datalist.json").read_text())
    sides = {k: {r["patient"] for r in d[k]} for k in ("labeled", "unlabeled", "validation")}
    assert [len(sides[k]) for k in ("labeled", "unlabeled", "validation")] == [2, 3, 3]
    assert not (sides["labeled"] & sides["validation"] or sides["labeled"] & sides["unlabeled"]
                or sides["unlabeled"] & sides["validation"])
    for key in ("labeled", "unlabeled", "validation"):  # both frames of each patient, on the same side
        assert len(d[key]) == 2 * len(sides[key])
    assert all("label" not in r for r in d["unlabeled"]) and all("label" in r for r in d["labeled"])
    assert d["classes"] == 4 and d["label_names"] == {"right ventricle": 1, "myocardium": 2, "left ventricle": 3}
    # the same seed gives the same split; explicit ids override the labelled count
    assert run("prepare-acdc", "--source", str(src), "--output", str(tmp_path / "again"), "--labeled-patients", "2",
               "--val-patients", "3", "--seed", "5") == 0
    assert json.loads((tmp_path / "again" / "datalist.json").read_text())["patients"] == d["patients"]
    assert run("prepare-acdc", "--source", str(src), "--output", str(tmp_path / "ids"), "--labeled-ids",
               "patient003,patient007", "--val-patients", "2") == 0
    p = json.loads((tmp_path / "ids" / "datalist.json").read_text())["patients"]
    assert p["labeled"] == ["patient003", "patient007"] and p["validation"] == ["patient006", "patient008"]


def test_volumes_keep_the_source_arrays(tmp_path):
    import h5py

    src = make_acdc(tmp_path / "ACDC", patients=2)
    assert run("prepare-acdc", "--source", str(src), "--output", str(tmp_path / "out"), "--labeled-patients", "1",
               "--val-patients", "1") == 0
    with h5py.File(src / "volumes" / "patient002_frame12.h5") as f:
        image, label = f["image"][()], f["label"][()]
    img = nib.load(tmp_path / "out" / "imagesTr" / "patient002_frame12.nii.gz")
    lab = nib.load(tmp_path / "out" / "labelsTr" / "patient002_frame12.nii.gz")
    assert img.shape == (20, 16, 3)  # H x W x slices
    np.testing.assert_allclose(img.get_fdata(), image.transpose(1, 2, 0), atol=1e-6)
    np.testing.assert_array_equal(lab.get_fdata().astype(np.uint8), label.transpose(1, 2, 0))


@pytest.mark.parametrize("damage, words", [
    ("corrupt", "patient004_frame12.h5: cannot read as HDF5"),
    ("bad_label", "patient004_frame12.h5"),
    ("missing", "no frame files for ['patient004']"),
    ("unknown_id", "--labeled-ids: ['patient099'] are not among the 8 patients"),
    ("one_frame", "patient004 has 1 frame file(s) ['patient004_frame01.h5'], not 2"),
    ("repeated_id", "--labeled-ids: names ['patient001'] more than once"),
    ("empty_ids", "--val-ids: names no patient"),
    ("too_many", "--labeled-patients 3 exceeds the 2 patients left after --val-ids"),
])
def test_bad_input_is_named_and_nothing_is_lost(tmp_path, capsys, damage, words):
    import h5py

    src = make_acdc(tmp_path / "ACDC")
    out = tmp_path / "out"
    assert run("prepare-acdc", "--source", str(src), "--output", str(out)) == 0
    before = (out / "datalist.json").read_text()
    frame = src / "volumes" / "patient004_frame12.h5"
    extra = []
    if damage == "corrupt":
        frame.write_bytes(b"not hdf5")
    elif damage == "bad_label":
        with h5py.File(frame, "r+") as f:
            f["label"][0, 0, 0] = 7
    elif damage == "missing":
        for f in src.glob("volumes/patient004_*.h5"):
            f.unlink()
    elif damage == "one_frame":
        frame.unlink()
    else:
        extra = {"unknown_id": ["--labeled-ids", "patient001,patient099"],
                 "repeated_id": ["--labeled-ids", "patient001,patient001"],
                 "empty_ids": ["--val-ids", ","],
                 "too_many": ["--val-ids", ",".join(f"patient00{i}" for i in range(1, 7))]}[damage]
    assert run("prepare-acdc", "--source", str(src), "--output", str(out), *extra) == 2
    assert words in capsys.readouterr().err
    assert (out / "datalist.json").read_text() == before  # the earlier output is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ACDC", "out"], "a temporary folder was left behind"
