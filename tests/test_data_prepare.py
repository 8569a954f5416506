"""``python -m ssmis.data``: LA conversion, user folders, synthetic data, and every bad input."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest

from ssmis.data.__main__ import main

SUBCOMMANDS = ["prepare-la", "prepare-images", "demo"]


def make_la_source(root: Path, n: int = 6, shape=(20, 16, 12), seed: int = 0) -> Path:
    """A fake LA source in the UA-MT layout: 8-bit data z-scored, as the real volumes are."""
    rng = np.random.default_rng(seed)
    ids = [f"CASE{i:02d}" for i in range(n)]
    for case in ids:
        raw = rng.integers(0, 256, shape).astype(np.float32)
        image = ((raw - raw.mean()) / raw.std()).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        label[5:15, 4:12, 3:9] = 1
        (root / "volumes" / case).mkdir(parents=True)
        with h5py.File(root / "volumes" / case / "mri_norm2.h5", "w") as f:
            f["image"] = image
            f["label"] = label
    (root / "train.list").write_text("\n".join(ids) + "\n")
    return root


def test_prepare_la_lossless_and_split(tmp_path):
    src = make_la_source(tmp_path / "LA")
    out = tmp_path / "out"
    assert main(["prepare-la", "--source", str(src), "--output", str(out), "--labeled", "2", "--val", "1"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert [Path(r["image"]).stem.split(".")[0] for r in dl["labeled"]] == ["CASE00", "CASE01"]
    assert [Path(r["image"]).name for r in dl["unlabeled"]] == [f"CASE0{i}.nii.gz" for i in (2, 3, 4)]
    assert all("label" not in r for r in dl["unlabeled"])
    assert [Path(r["label"]).name for r in dl["validation"]] == ["CASE05.nii.gz"]
    for case in ["CASE00", "CASE04"]:
        with h5py.File(src / "volumes" / case / "mri_norm2.h5") as f:
            image, label = f["image"][()], f["label"][()]
        img = nib.load(out / "imagesTr" / f"{case}.nii.gz")
        assert img.get_data_dtype() == np.uint8  # stored as 8-bit codes with slope/intercept
        np.testing.assert_allclose(img.get_fdata(), image, atol=1e-5, rtol=0)
        np.testing.assert_allclose(np.diag(img.affine)[:3], [0.625] * 3)
        np.testing.assert_array_equal(nib.load(out / "labelsTr" / f"{case}.nii.gz").get_fdata(), label)


def test_prepare_la_resample(tmp_path):
    src = make_la_source(tmp_path / "LA", n=3)
    out = tmp_path / "out"
    assert main(["prepare-la", "--source", str(src), "--output", str(out), "--spacing", "1.25",
                 "--labeled", "1", "--val", "1"]) == 0
    img = nib.load(out / "imagesTr" / "CASE00.nii.gz")
    lab = nib.load(out / "labelsTr" / "CASE00.nii.gz").get_fdata()
    assert img.shape == (10, 8, 6) and lab.shape == (10, 8, 6)
    np.testing.assert_allclose(np.diag(img.affine)[:3], [1.25] * 3)
    assert set(np.unique(lab)) == {0.0, 1.0}
    assert json.loads((out / "datalist.json").read_text())["spacing"] == [1.25] * 3


def _corrupt(src: Path) -> str:
    path = src / "volumes" / "CASE01" / "mri_norm2.h5"
    path.write_bytes(b"this is not an hdf5 file" * 10)
    return str(path)


def _truncate(src: Path) -> str:
    path = src / "volumes" / "CASE02" / "mri_norm2.h5"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return str(path)


def _missing_key(src: Path) -> str:
    path = src / "volumes" / "CASE03" / "mri_norm2.h5"
    with h5py.File(path, "a") as f:
        del f["label"]
    return str(path)


def _shape_mismatch(src: Path) -> str:
    path = src / "volumes" / "CASE00" / "mri_norm2.h5"
    with h5py.File(path, "a") as f:
        del f["label"]
        f["label"] = np.zeros((3, 3, 3), np.uint8)
    return str(path)


def _bad_label_value(src: Path) -> str:
    path = src / "volumes" / "CASE04" / "mri_norm2.h5"
    with h5py.File(path, "a") as f:
        lab = f["label"][()]
        lab[0, 0, 0] = 3
        f["label"][...] = lab
    return str(path)


def _empty(src: Path) -> str:
    (src / "train.list").write_text("\n")
    return str(src / "train.list")


def _missing_volume(src: Path) -> str:
    path = src / "volumes" / "CASE05" / "mri_norm2.h5"
    path.unlink()
    return str(path)


@pytest.mark.parametrize(
    "breaker, words",
    [(_corrupt, "HDF5"), (_truncate, "HDF5"), (_missing_key, "'label'"), (_shape_mismatch, "shape"),
     (_bad_label_value, "outside"), (_empty, "empty"), (_missing_volume, "not found")],
)
def test_prepare_la_bad_input(tmp_path, capsys, breaker, words):
    src = make_la_source(tmp_path / "LA")
    named = breaker(src)
    out = tmp_path / "out"
    # an earlier, good output must survive the failed run
    out.mkdir()
    (out / "datalist.json").write_text("{}")
    (out / "keep.txt").write_text("earlier result")
    assert main(["prepare-la", "--source", str(src), "--output", str(out), "--labeled", "2", "--val", "1"]) == 2
    err = capsys.readouterr().err
    assert named in err and words in err
    assert sorted(p.name for p in out.iterdir()) == ["datalist.json", "keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LA", "out"], "temporary output left behind"


def test_prepare_la_bad_input_leaves_no_output(tmp_path, capsys):
    src = make_la_source(tmp_path / "LA")
    _corrupt(src)
    assert main(["prepare-la", "--source", str(src), "--output", str(tmp_path / "new")]) == 2
    assert not (tmp_path / "new").exists()


def test_prepare_la_split_too_large(tmp_path, capsys):
    src = make_la_source(tmp_path / "LA", n=3)
    assert main(["prepare-la", "--source", str(src), "--output", str(tmp_path / "o"), "--labeled", "3",
                 "--val", "1"]) == 2
    assert "--labeled 3" in capsys.readouterr().err


def _nifti(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def test_prepare_images(tmp_path):
    for i in range(5):
        _nifti(tmp_path / "img" / f"p{i}.nii.gz", np.random.rand(8, 8, 4).astype(np.float32))
    for i in range(3):
        _nifti(tmp_path / "lab" / f"p{i}.nii.gz", (np.random.rand(8, 8, 4) > 0.5).astype(np.uint8))
    out = tmp_path / "out"
    assert main(["prepare-images", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
                 "--output", str(out), "--labeled", "2", "--val", "1", "--classes", "2"]) == 0
    dl = json.loads((out / "datalist.json").read_text())
    assert [Path(r["label"]).name for r in dl["labeled"]] == ["p0.nii.gz", "p1.nii.gz"]
    assert [Path(r["image"]).name for r in dl["validation"]] == ["p2.nii.gz"]
    assert [Path(r["image"]).name for r in dl["unlabeled"]] == ["p3.nii.gz", "p4.nii.gz"]


@pytest.mark.parametrize("what", ["shape", "value", "corrupt"])
def test_prepare_images_bad_input(tmp_path, capsys, what):
    _nifti(tmp_path / "img" / "a.nii.gz", np.zeros((8, 8, 4), np.float32))
    bad = tmp_path / "lab" / "a.nii.gz"
    if what == "shape":
        _nifti(bad, np.zeros((8, 8, 5), np.uint8))
    elif what == "value":
        _nifti(bad, np.full((8, 8, 4), 7, np.uint8))
    else:
        bad.parent.mkdir()
        bad.write_bytes(b"\x1f\x8b garbage")
    rc = main(["prepare-images", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
               "--output", str(tmp_path / "out"), "--labeled", "1", "--classes", "2"])
    assert rc == 2
    assert str(bad) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, words", [(["--labeled", "-1"], "must not be negative"),
                                           (["--labeled", "1", "--val", "-2"], "must not be negative"),
                                           (["--labeled", "1", "--classes", "0"], "--classes 0: must be at least 2"),
                                           (["--labeled", "1", "--classes", "1"], "--classes 1: must be at least 2")])
def test_prepare_images_bad_counts(tmp_path, capsys, option, words):
    for i in range(4):
        _nifti(tmp_path / "img" / f"p{i}.nii.gz", np.zeros((8, 8, 4), np.float32))
        _nifti(tmp_path / "lab" / f"p{i}.nii.gz", np.zeros((8, 8, 4), np.uint8))
    rc = main(["prepare-images", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
               "--output", str(tmp_path / "out")] + option)
    assert rc == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option, words", [(["--spacing", "0"], "--spacing 0.0: must be a voxel size from"),
                                           (["--spacing", "-1.25"], "--spacing -1.25: must be a voxel size"),
                                           (["--spacing", "inf"], "--spacing inf: must be a voxel size"),
                                           (["--spacing", "1000"], "--spacing 1000.0: must be a voxel size"),
                                           (["--spacing", "0.0125"], "--spacing 0.0125: must be a voxel size"),
                                           (["--classes", "1"], "--classes 1: must be at least 2"),
                                           ("repeat", "more than once: ['CASE01']")])
def test_prepare_la_bad_options(tmp_path, capsys, option, words):
    src = make_la_source(tmp_path / "LA", n=4)
    if option == "repeat":
        (src / "train.list").write_text("CASE00\nCASE01\nCASE02\nCASE01\n")
        option = []
    assert main(["prepare-la", "--source", str(src), "--output", str(tmp_path / "out"), "--labeled", "1",
                 "--val", "1"] + option) == 2
    assert words in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["truncated", "nan"])
def test_prepare_images_refuses_bad_images(tmp_path, capsys, what):
    # an unlabelled image is read in full too: a truncated file fails here, naming it, not later in training
    _nifti(tmp_path / "img" / "a.nii.gz", np.zeros((8, 8, 4), np.float32))
    _nifti(tmp_path / "lab" / "a.nii.gz", np.zeros((8, 8, 4), np.uint8))
    bad = tmp_path / "img" / "b.nii.gz"
    _nifti(bad, np.random.rand(32, 32, 16).astype(np.float32) if what == "truncated"
           else np.full((8, 8, 4), np.nan, np.float32))
    if what == "truncated":
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    rc = main(["prepare-images", "--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"),
               "--output", str(tmp_path / "out"), "--labeled", "1", "--classes", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and str(bad) in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("where", ["same", "parent"])
def test_output_that_would_delete_the_input_is_refused(tmp_path, capsys, where):
    ds = tmp_path / "ds"
    _nifti(ds / "imagesTr" / "a.nii.gz", np.zeros((8, 8, 4), np.float32))
    _nifti(ds / "labelsTr" / "a.nii.gz", np.zeros((8, 8, 4), np.uint8))
    out = ds / "imagesTr" if where == "same" else ds
    rc = main(["prepare-images", "--images", str(ds / "imagesTr"), "--labels", str(ds / "labelsTr"),
               "--output", str(out), "--labeled", "1"])
    assert rc == 2 and "would delete the input" in capsys.readouterr().err
    assert (ds / "imagesTr" / "a.nii.gz").is_file() and (ds / "labelsTr" / "a.nii.gz").is_file()
    (tmp_path / "LA").mkdir()
    assert main(["prepare-la", "--source", str(tmp_path / "LA"), "--output", str(tmp_path)]) == 2
    assert "--source" in capsys.readouterr().err and (tmp_path / "LA").is_dir()


def test_output_holding_other_files_is_refused(tmp_path, capsys):
    keep = tmp_path / "data" / "other_dataset" / "notes.txt"
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    assert main(["demo", "--output", str(tmp_path / "data"), "--cases", "3", "--labeled", "1", "--val", "1"]) == 2
    assert "holds no datalist.json" in capsys.readouterr().err and keep.read_text() == "mine"
    # a folder prepared before is replaced as usual
    args = ["demo", "--cases", "3", "--labeled", "1", "--val", "1", "--size", "16"]
    assert main(args + ["--output", str(tmp_path / "d")]) == 0
    assert main(args + ["--output", str(tmp_path / "d")]) == 0
    assert main(args + ["--classes", "1", "--output", str(tmp_path / "e")]) == 2
    assert "--classes" in capsys.readouterr().err


def test_reprepare_keeps_what_it_does_not_write(tmp_path):
    """Re-running a preparation into the same folder rewrites its own outputs and keeps the user's ``imagesTs/``
    (where the bundles' inference looks) and ``eval/``."""
    src = make_la_source(tmp_path / "LA", n=3)
    for i in range(3):
        _nifti(tmp_path / "img" / f"p{i}.nii.gz", np.random.rand(8, 8, 4).astype(np.float32))
        _nifti(tmp_path / "lab" / f"p{i}.nii.gz", (np.random.rand(8, 8, 4) > 0.5).astype(np.uint8))
    commands = {
        "prepare-la": ["--source", str(src), "--labeled", "1", "--val", "1"],
        "demo": ["--cases", "3", "--labeled", "1", "--val", "1", "--size", "16"],
        "prepare-images": ["--images", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--labeled", "1"],
    }
    for command, args in commands.items():
        out = tmp_path / f"out_{command}"
        assert main([command, "--output", str(out)] + args) == 0
        _nifti(out / "imagesTs" / "new.nii.gz", np.ones((4, 4, 4), np.float32))
        (out / "eval").mkdir()
        (out / "eval" / "metrics.csv").write_text("case,dice\n")
        before = (out / "datalist.json").stat().st_ino
        assert main([command, "--output", str(out)] + args) == 0
        assert (out / "datalist.json").stat().st_ino != before  # rewritten, not left over
        assert (out / "eval" / "metrics.csv").read_text() == "case,dice\n", command
        assert nib.load(out / "imagesTs" / "new.nii.gz").shape == (4, 4, 4), command
        left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f"out_{command}"))
        assert left == [f"out_{command}"], (command, left)  # no out_<command>.partial or .old


@pytest.mark.parametrize("dims, classes", [(3, 2), (2, 4)])
def test_demo_deterministic(tmp_path, dims, classes):
    args = ["demo", "--dims", str(dims), "--classes", str(classes), "--cases", "4", "--labeled", "2", "--val", "1"]
    assert main(args + ["--output", str(tmp_path / "a")]) == 0
    assert main(args + ["--output", str(tmp_path / "b")]) == 0
    a = nib.load(tmp_path / "a" / "imagesTr" / "case_000.nii.gz").get_fdata()
    b = nib.load(tmp_path / "b" / "imagesTr" / "case_000.nii.gz").get_fdata()
    np.testing.assert_array_equal(a, b)
    assert a.ndim == dims
    lab = nib.load(tmp_path / "a" / "labelsTr" / "case_000.nii.gz").get_fdata()
    assert set(np.unique(lab).astype(int)) == set(range(classes))
    dl = json.loads((tmp_path / "a" / "datalist.json").read_text())
    assert (len(dl["labeled"]), len(dl["unlabeled"]), len(dl["validation"])) == (2, 1, 1)


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_help(sub, capsys):
    from ssmis.data.__main__ import main

    with pytest.raises(SystemExit) as e:
        main([sub, "--help"])
    assert e.value.code == 0 and "--output" in capsys.readouterr().out


def test_load_datalist_errors(tmp_path):
    from ssmis.data import DataError, load_datalist

    with pytest.raises(DataError, match="datalist.json not found"):
        load_datalist(tmp_path, "labeled")
    (tmp_path / "datalist.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_datalist(tmp_path, "labeled")
    (tmp_path / "datalist.json").write_text('{"labeled": []}')
    with pytest.raises(DataError, match="no key 'validation'"):
        load_datalist(tmp_path, "validation")
    for text, words in (('[1, 2]', "expected a JSON object"), ('{"validation": null}', "'validation' must be a list"),
                        ('{"validation": [{"image": 5}]}', r"validation\[0\].image must be a file path"),
                        ('{"validation": [{"image": "a.nii.gz", "label": null}]}', r"validation\[0\].label")):
        (tmp_path / "datalist.json").write_text(text)
        with pytest.raises(DataError, match=words) as e:
            load_datalist(tmp_path, "validation")
        assert str(tmp_path / "datalist.json") in str(e.value)
    (tmp_path / "datalist.json").write_text('{"validation": []}')
    with pytest.raises(DataError, match="non-negative integer"):
        load_datalist(tmp_path, "validation", limit=-1)


def test_inputs_that_would_share_an_output_are_refused():
    from ssmis.data import DataError, check_distinct_outputs

    check_distinct_outputs([{"image": "a/case1.nii.gz"}, {"image": "a/case2.nii.gz"}, {"image": "b/case3.nii"}])
    check_distinct_outputs([{"image": "a/case1.nii.gz"}, {"image": "a/case1.nii.gz"}])  # the same file twice
    with pytest.raises(DataError, match=r"a/case.nii.gz and b/case.nii.gz would both be saved as case_seg"):
        check_distinct_outputs([{"image": "a/case.nii.gz"}, {"image": "b/case.nii.gz"}])
    with pytest.raises(DataError, match="would both be saved"):
        check_distinct_outputs([{"image": "a/case.nii"}, {"image": "a/case.nii.gz"}])


def test_prepare_la_names_an_output_under_a_file_and_an_empty_image(tmp_path, capsys):
    import h5py

    src = make_la_source(tmp_path / "LA", n=4)
    (tmp_path / "afile").write_text("keep")
    args = ["--source", str(src), "--labeled", "1", "--val", "1"]
    assert main(["prepare-la", "--output", str(tmp_path / "afile" / "sub"), *args]) == 2
    assert f"{tmp_path / 'afile'} is a file" in capsys.readouterr().err
    assert (tmp_path / "afile").read_text() == "keep"
    case = sorted((src / "volumes").iterdir())[0]
    with h5py.File(case / "mri_norm2.h5", "r+") as f:
        del f["image"]
        f["image"] = np.zeros((0, 4, 4), np.float32)
    assert main(["prepare-la", "--output", str(tmp_path / "out"), *args]) == 2
    assert "is empty" in capsys.readouterr().err and not (tmp_path / "out").exists()
