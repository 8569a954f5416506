"""The MONAI Label app through a real HTTP server on 127.0.0.1, driven by the Slicer plugin's client and plain HTTP.

Sequence: info, next sample, infer before training (409), save labels, semi-supervised training of both models,
inference with the new weights, active-learning scoring, a stopped training, concurrent requests and every bad
request of the issue (each a 4xx, with the server still answering afterwards).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch

from conftest import ROOT
from ssmis.bundle.layout import config_files

sys.path.insert(0, str(ROOT / "monailabel_app"))  # the app's lib/
from lib.server_process import start_server, stop_server  # noqa: E402

pytestmark = pytest.mark.slow  # a real server, trainings in subprocesses

monailabel_client = pytest.importorskip("monailabel.client.client")
MONAILabelClient = monailabel_client.MONAILabelClient
MONAILabelClientException = monailabel_client.MONAILabelClientException

TINY_YAML = """
backbone_def:
  _target_: BasicUNet
  spatial_dims: 3
  in_channels: 1
  out_channels: '@num_classes'
  features: [4, 4, 8, 8, 16, 4]
graph_layer: down_4
graph_channels: 16
patch_size: [32, 32, 24]
batch_size: 2
sw_batch_size: 1
target_spacing: null
"""
TRAIN = {"num_iterations": 6, "val_interval": 3, "pretrain_iterations": 2}


def _wait_train(base: str, timeout: float = 300) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        status = requests.get(f"{base}/train/").json()
        if status.get("status") not in ("SUBMITTED", "RUNNING"):
            return status
        time.sleep(1)
    raise TimeoutError("training did not finish")


def _serve(tmp_path_factory, name: str):
    """A MONAI Label server of the app on six synthetic volumes (two tiny models), yielded as
    ``{"base", "root", "syn", "studies"}`` and stopped afterwards."""
    from ssmis.data.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp(name)
    syn = make_synthetic_dataset(root / "syn", dims=3, classes=2, cases=6, labeled=3, val=1, size=32)
    studies = root / "studies"
    studies.mkdir()
    for f in sorted((syn / "imagesTr").glob("*.nii.gz")):
        shutil.copy(f, studies / f.name)
    (root / "tiny.yaml").write_text(TINY_YAML)
    conf = {"models": "transmedseg_la,fixed_dynamic_pl_la", "model_dir": str(root / "model"),
            "extra_config": str(root / "tiny.yaml"), "device": "cpu"}
    env = {"OMP_NUM_THREADS": "1"}
    try:
        proc, base = start_server(studies, conf, root / "server.log", env=env, timeout_s=120)
    except RuntimeError as e:
        pytest.fail(str(e))
    try:
        yield {"base": base, "root": root, "syn": syn, "studies": studies}
    finally:
        stop_server(proc, timeout_s=20)


@pytest.fixture(scope="session")  # session: a worker running another module in between keeps it
def server(tmp_path_factory):
    """Shared by the tests that set up what they need themselves (:func:`_ready`), in any order."""
    yield from _serve(tmp_path_factory, "label_app")


@pytest.fixture(scope="session")
def fresh_server(tmp_path_factory):
    """test_annotation_loop's own: it starts from an empty datastore and no weights."""
    yield from _serve(tmp_path_factory, "label_app_loop")


def _publish_weights(root: Path, model: str) -> Path:
    """The served ``model.pt`` of ``model``: the one a training published, or else (a test run on its own or before
    the trainings) freshly initialised weights of the served network, so every test runs in any order."""
    weights = root / "model" / model / "model.pt"
    if not weights.is_file():
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        bundle = ROOT / "bundles" / model
        parser.read_config([*config_files(bundle, "inference"), str(root / "tiny.yaml")])
        parser["bundle_root"] = str(bundle)
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(parser.get_parsed_content("network_def").state_dict(), weights)
    return weights


def _ready(server: dict) -> None:
    """Three labelled images and published weights for both models, whether or not test_annotation_loop ran first."""
    for i in range(3):
        r = requests.put(f"{server['base']}/datastore/label?image=case_00{i}", files={
            "label": ("label.nii.gz", (server["syn"] / "labelsTr" / f"case_00{i}.nii.gz").read_bytes())})
        assert r.status_code == 200, r.text
    for model in ("transmedseg_la", "fixed_dynamic_pl_la"):
        _publish_weights(server["root"], model)


def test_annotation_loop(fresh_server):
    server = fresh_server
    base, syn, root = server["base"], server["syn"], server["root"]
    # its own download folder: the server deletes its result file from /tmp, under the same name, after answering
    client = MONAILabelClient(base, tmpdir=str(root / "client"))

    info = client.info()
    assert set(info["models"]) == {"transmedseg_la", "fixed_dynamic_pl_la"}
    assert info["models"]["transmedseg_la"]["labels"] == {"left atrium": 1}
    assert set(info["trainers"]) == {"transmedseg_la", "fixed_dynamic_pl_la"}
    assert {"uncertainty", "random"} <= set(info["strategies"])

    sample = client.next_sample("uncertainty", {})
    assert sample["id"].startswith("case_") and "random" in sample["selected_by"]

    with pytest.raises(MONAILabelClientException) as e:  # no weights yet: say so, do not return noise
        client.infer("transmedseg_la", "case_000", {})
    assert "409" in e.value.msg and "no trained weights" in e.value.msg

    for i in range(3):
        assert client.save_label(f"case_00{i}", str(syn / "labelsTr" / f"case_00{i}.nii.gz"))["label"] == f"case_00{i}"
    saved = server["studies"] / "labels" / "final" / "case_000.nii.gz"
    assert np.array_equal(nib.load(saved).get_fdata(), nib.load(syn / "labelsTr" / "case_000.nii.gz").get_fdata())

    for model in ("transmedseg_la", "fixed_dynamic_pl_la"):
        client.train_start(model, TRAIN)
        status = _wait_train(base)
        assert status["status"] == "DONE", "\n".join(status.get("details", [])[-30:])
        stats = json.loads((root / "model" / model / "train_stats.json").read_text())
        assert (stats["labeled"], stats["validation"], stats["unlabeled"]) == (2, 1, 3)
        assert stats["iterations"] == TRAIN["num_iterations"] and 0.0 <= stats["best_val_dice"] <= 1.0
        kept = sorted(str(p.relative_to(stats["run_dir"])) for p in Path(stats["run_dir"]).rglob("*") if p.is_file())
        assert "datalist.json" in kept and "models/model_best.pt" in kept, kept
        assert not {"models/checkpoint.pt", "models/model.pt"} & set(kept), kept  # pruned after publishing
        # what the published weights fit, so a restart with other configs refuses them (lib/served_weights.py)
        record = json.loads((root / "model" / model / "model.json").read_text())
        assert record["extra_config"] == [str((root / "tiny.yaml").resolve())] and len(record["sha256"]) == 64

    # inference with the new weights, on the image's own grid
    path, params = client.infer("transmedseg_la", "case_001", {})
    seg, img = nib.load(path), nib.load(server["studies"] / "case_001.nii.gz")
    assert seg.shape == img.shape and np.allclose(seg.affine, img.affine)
    assert set(np.unique(np.asarray(seg.dataobj)).tolist()) <= {0, 1}
    first_mtime = params["weights_mtime"]
    path2, params2 = client.infer("fixed_dynamic_pl_la", "case_004", {})
    assert nib.load(path2).shape == nib.load(server["studies"] / "case_004.nii.gz").shape
    # a volume that is not in the datastore, uploaded with the request (sessions are off)
    path3, _ = client.infer("transmedseg_la", "", {}, file=str(server["studies"] / "case_005.nii.gz"))
    assert nib.load(path3).shape == nib.load(server["studies"] / "case_005.nii.gz").shape
    # the server's log keeps its handlers after the trainings (a bundle's logging.conf once replaced them)
    marker = f"log_probe_{time.time_ns()}"
    assert requests.post(f"{base}/infer/transmedseg_la?image={marker}").status_code == 404
    app_log = ROOT / "monailabel_app" / "logs" / "app.log"
    assert marker in app_log.read_text(errors="replace"), f"{app_log} no longer receives the server's lines"

    # retraining starts from the served weights and publishes new ones, which the next inference uses
    client.train_start("transmedseg_la", TRAIN)
    status = _wait_train(base)
    assert status["status"] == "DONE"
    assert "model.pt" in json.loads((root / "model" / "transmedseg_la" / "train_stats.json").read_text())[
        "start_weights"]
    _, params3 = client.infer("transmedseg_la", "case_001", {})
    assert params3["weights_mtime"] > first_mtime

    # active learning: cached uncertainty scores pick the next image
    for method in ("transmedseg_la_uncertainty", "fixed_dynamic_pl_la_uncertainty"):
        r = requests.post(f"{base}/scoring/{method}?run_sync=true")
        assert r.status_code == 200 and r.json()["scored"] == 3, r.text
        assert requests.post(f"{base}/scoring/{method}?run_sync=true").json()["skipped"] == 3  # cached
    # a score made under another key (older weights, bundle version or blending) is stale: only it is redone
    cache_file = root / "model" / "transmedseg_la" / "scores.json"
    stale = json.loads(cache_file.read_text())
    stale["case_004"]["key"] = "0.0|0.0.1|000000000000"
    cache_file.write_text(json.dumps(stale))
    r = requests.post(f"{base}/scoring/transmedseg_la_uncertainty?run_sync=true").json()
    assert (r["scored"], r["skipped"]) == (1, 2), r
    caches = [json.loads((root / "model" / m / "scores.json").read_text()) for m in
              ("transmedseg_la", "fixed_dynamic_pl_la")]
    assert caches[0]["case_004"]["key"] == caches[0]["case_003"]["key"] != stale["case_004"]["key"]
    assert all(set(c) == {"case_003", "case_004", "case_005"} for c in caches)
    sample = client.next_sample("uncertainty", {})
    means = {i: (caches[0][i]["score"] + caches[1][i]["score"]) / 2 for i in caches[0]}
    assert sample["selected_by"] == "uncertainty" and sample["id"] == max(means, key=means.get)


def test_stop_training_keeps_served_weights(server):
    base, root = server["base"], server["root"]
    client = MONAILabelClient(base, tmpdir=str(root / "client"))
    _ready(server)
    model = root / "model" / "fixed_dynamic_pl_la" / "model.pt"
    before = (model.stat().st_mtime, model.read_bytes())
    client.train_start("fixed_dynamic_pl_la", {"num_iterations": 100000, "val_interval": 50000})
    for _ in range(120):
        if requests.get(f"{base}/train/").json().get("status") == "RUNNING":
            break
        time.sleep(0.5)
    # while it trains, concurrent inferences are all answered and /info/ is answered while they run: inference runs
    # off the event loop (at most max_parallel_infer at once, the others wait their turn). Counted, not timed: a
    # server that answered /info/ only between inferences would answer about one probe before the first is done
    big = root / "big.nii.gz"  # large enough that the inferences overlap the /info/ probes
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((96, 96, 64), dtype=np.float32), np.eye(4)), big)
    events: list[str] = []
    with cf.ThreadPoolExecutor(6) as ex:
        infers = [ex.submit(requests.post, f"{base}/infer/fixed_dynamic_pl_la?output=json",
                            files={"file": ("big.nii.gz", big.read_bytes())}, timeout=300) for i in range(4)]
        for f in infers:
            f.add_done_callback(lambda f: events.append("infer"))
        while not all(f.done() for f in infers) and len(events) < 100:
            assert requests.get(f"{base}/info/", timeout=30).status_code == 200
            events.append("info")
            time.sleep(0.2)
    assert [f.result().status_code for f in infers] == [200] * 4
    assert events.index("infer") >= 4, f"/info/ answers and finished inferences, in order: {events}"
    assert requests.get(f"{base}/train/").json().get("status") == "RUNNING"
    queued = requests.post(f"{base}/train/fixed_dynamic_pl_la?enqueue=true",
                           json={"num_iterations": 100000, "val_interval": 50000})
    assert queued.status_code == 200 and queued.json()["status"] == "SUBMITTED", queued.text
    client.train_stop()  # stops the running training and the queued one
    status = _wait_train(base, timeout=60)
    assert status["status"] == "STOPPED", status
    time.sleep(3)  # a queued training would have started by now
    runs = requests.get(f"{base}/train/?all=true").json()
    assert not [t for t in runs if t["status"] in ("SUBMITTED", "RUNNING")], runs
    assert {t["id"]: t["status"] for t in runs}[queued.json()["id"]] == "STOPPED"
    assert (model.stat().st_mtime, model.read_bytes()) == before
    assert requests.post(f"{base}/infer/fixed_dynamic_pl_la?image=case_003&output=json").status_code == 200


def test_bad_requests_get_4xx_and_server_keeps_serving(server):
    base, syn, root = server["base"], server["syn"], server["root"]
    _ready(server)
    tmp = root / "bad"
    tmp.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), tmp / "flat.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), tmp / "small.nii.gz")
    lab = nib.load(syn / "labelsTr" / "case_003.nii.gz")
    arr = np.asarray(lab.dataobj).copy()
    arr[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(arr, lab.affine), tmp / "values.nii.gz")
    good_label = syn / "labelsTr" / "case_003.nii.gz"

    def put_label(query: str, path: Path | None = None, content: bytes | None = None) -> requests.Response:
        data = content if content is not None else path.read_bytes()
        return requests.put(f"{base}/datastore/label?{query}", files={"label": ("label.nii.gz", data)})

    cases = {
        "unknown model (infer)": lambda: requests.post(f"{base}/infer/nope?image=case_000"),
        "unknown model (train)": lambda: requests.post(f"{base}/train/nope", json={}),
        "unknown strategy": lambda: requests.post(f"{base}/activelearning/nope"),
        "unknown image id": lambda: requests.post(f"{base}/infer/transmedseg_la?image=case_999"),
        "image id path traversal": lambda: requests.post(f"{base}/infer/transmedseg_la?image=..%2F..%2Fetc%2Fpasswd"),
        "absolute path as image id": lambda: requests.post(f"{base}/infer/transmedseg_la?image=%2Fetc%2Fpasswd"),
        "malformed params (infer)": lambda: requests.post(f"{base}/infer/transmedseg_la?image=case_000",
                                                          data={"params": "{not json"}),
        "malformed params (upload)": lambda: requests.put(f"{base}/datastore/image?image=x",
                                                          files={"file": ("x.nii.gz", good_label.read_bytes())},
                                                          data={"params": "[oops"}),
        "params not a JSON object (infer)": lambda: requests.post(f"{base}/infer/transmedseg_la?image=case_000",
                                                                  data={"params": "[1]"}),
        "params not a JSON object (upload over case_000)": lambda: requests.put(
            f"{base}/datastore/image?image=case_000", files={"file": ("x.nii.gz", good_label.read_bytes())},
            data={"params": "[1]"}),
        "params not a JSON object (label)": lambda: requests.put(
            f"{base}/datastore/label?image=case_003", files={"label": ("label.nii.gz", good_label.read_bytes())},
            data={"params": "7"}),
        "train: unknown parameter": lambda: requests.post(f"{base}/train/transmedseg_la",
                                                          json={"num_iteration": 5}),
        "train: patch_size as a string": lambda: requests.post(f"{base}/train/transmedseg_la",
                                                               json={"patch_size": "96"}),
        "train: run_sync": lambda: requests.post(f"{base}/train/transmedseg_la?run_sync=true", json={}),
        "train: patch_size of the wrong length": lambda: requests.post(f"{base}/train/fixed_dynamic_pl_la",
                                                                       json={"patch_size": [32, 32]}),
        "train: fractional iterations": lambda: requests.post(f"{base}/train/transmedseg_la",
                                                              json={"num_iterations": 2.5}),
        "train: every model, one bad": lambda: requests.post(f"{base}/train/",
                                                             json={"transmedseg_la": {"learning_rate": -1}}),
        "upload that is not a volume": lambda: requests.put(f"{base}/datastore/image?image=junk",
                                                            files={"file": ("junk.nii.gz", b"not a volume")}),
        "upload with a non-NIfTI name": lambda: requests.put(f"{base}/datastore/image?image=junk",
                                                             files={"file": ("junk.txt", b"text")}),
        "uploaded image id path traversal": lambda: requests.put(
            f"{base}/datastore/image?image=..%2Fescape", files={"file": ("x.nii.gz", good_label.read_bytes())}),
        "2D image to a 3D model": lambda: requests.post(
            f"{base}/infer/transmedseg_la", files={"file": ("flat.nii.gz", (tmp / "flat.nii.gz").read_bytes())}),
        "label shape mismatch": lambda: put_label("image=case_003", tmp / "small.nii.gz"),
        "label values outside the classes": lambda: put_label("image=case_003", tmp / "values.nii.gz"),
        "label that is not a volume": lambda: put_label("image=case_003", content=b"garbage"),
        "label for an unknown image": lambda: put_label("image=case_999", good_label),
        "label tag path traversal": lambda: put_label("image=case_003&tag=..%2F..%2Fevil", good_label),
        "label image id path traversal": lambda: put_label("image=..%2Fcase_003", good_label),
        "image info not a JSON object": lambda: requests.put(f"{base}/datastore/image/info?image=case_000",
                                                             data={"info": "[1]"}),
        "image info for an unknown image": lambda: requests.put(f"{base}/datastore/image/info?image=case_999",
                                                                data={"info": "{}"}),
        "label info not a JSON object": lambda: requests.put(f"{base}/datastore/label/info?label=case_000&tag=final",
                                                             data={"info": "7"}),
        "label info for a missing label": lambda: requests.put(
            f"{base}/datastore/label/info?label=case_003&tag=final", data={"info": "{}"}),
    }
    image_before = (server["studies"] / "case_000.nii.gz").read_bytes()
    answers = {name: call() for name, call in cases.items()}
    assert (server["studies"] / "case_000.nii.gz").read_bytes() == image_before  # a refused upload writes nothing
    for name, r in answers.items():
        assert 400 <= r.status_code < 500, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.json().get("detail"), f"{name}: no message"
    assert not (server["studies"] / "labels" / "final" / "case_003.nii.gz").exists()  # nothing half-written
    assert requests.get(f"{base}/train/").json().get("status") not in ("SUBMITTED", "RUNNING")  # nothing queued
    assert "num_iteration" in answers["train: unknown parameter"].json()["detail"]
    assert not (root / "evil").exists() and not (server["studies"].parent / "escape.nii.gz").exists()
    (root / "bad_requests.json").write_text(json.dumps({k: v.status_code for k, v in answers.items()}, indent=2))

    # concurrent inference requests are all answered, and the server is still healthy
    with cf.ThreadPoolExecutor(4) as ex:
        codes = list(ex.map(lambda i: requests.post(f"{base}/infer/transmedseg_la?image=case_00{i % 6}"
                                                    "&output=json").status_code, range(8)))
    assert codes == [200] * 8
    assert requests.get(f"{base}/info/").status_code == 200


def test_reupload_keeps_labels_and_refuses_another_image(server):
    base, syn, studies = server["base"], server["syn"], server["studies"]

    def upload(path: Path) -> requests.Response:
        return requests.put(f"{base}/datastore/image?image=reup", files={"file": ("reup.nii.gz", path.read_bytes())})

    def labels_of_reup() -> list:
        return sorted(requests.get(f"{base}/datastore/?output=all").json()["objects"]["reup"]["labels"])

    assert upload(syn / "imagesTr" / "case_005.nii.gz").status_code == 200
    r = requests.put(f"{base}/datastore/label?image=reup",
                     files={"label": ("label.nii.gz", (syn / "labelsTr" / "case_005.nii.gz").read_bytes())})
    assert r.status_code == 200, r.text
    assert labels_of_reup() == ["final"]
    small = server["root"] / "reup_small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 16, 8), np.float32), np.eye(4)), small)
    before = (studies / "reup.nii.gz").read_bytes()
    r = upload(small)  # the stored label would no longer fit this image
    assert r.status_code == 409 and "delete the image first" in r.json()["detail"], r.text
    assert (studies / "reup.nii.gz").read_bytes() == before and labels_of_reup() == ["final"]
    r = upload(syn / "imagesTr" / "case_004.nii.gz")  # same shape, other voxels: the label would not belong to it
    assert r.status_code == 409 and "delete the image first" in r.json()["detail"], r.text
    assert upload(syn / "imagesTr" / "case_005.nii.gz").status_code == 200  # the same image again: label kept
    assert (studies / "reup.nii.gz").read_bytes() == before and labels_of_reup() == ["final"]
    # without ?image=, MONAI Label takes the id from the file name up to its first dot: sub-01.T1w and sub-01.T2w
    # are both "sub-01", and the second upload silently replaced the first

    def unnamed(name: str, path: Path, query: str = "") -> requests.Response:
        return requests.put(f"{base}/datastore/image{query}", files={"file": (name, path.read_bytes())})

    assert unnamed("sub-01.T1w.nii.gz", syn / "imagesTr" / "case_003.nii.gz").status_code == 200
    t1 = (studies / "sub-01.nii.gz").read_bytes()
    r = unnamed("sub-01.T2w.nii.gz", syn / "imagesTr" / "case_004.nii.gz")
    assert r.status_code == 409 and "?image=" in r.json()["detail"] and (studies / "sub-01.nii.gz").read_bytes() == t1
    assert unnamed("sub-01.T1w.nii.gz", syn / "imagesTr" / "case_003.nii.gz").status_code == 200  # the same again
    assert unnamed("x.nii.gz", syn / "imagesTr" / "case_004.nii.gz", "?image=sub-01").status_code == 200  # named
    assert (studies / "sub-01.nii.gz").read_bytes() != t1


def test_unusable_weights_are_named(server):
    base, root = server["base"], server["root"]
    weights = root / "model" / "transmedseg_la" / "model.pt"
    before = weights.read_bytes() if weights.is_file() else None
    _publish_weights(root, "transmedseg_la")
    good = weights.read_bytes()
    try:
        for content, words in ((b"not a checkpoint", "cannot read the weights"), (None, "do not fit")):
            if content is None:
                torch.save({"model": {"other.weight": torch.zeros(2, 2)}}, weights)
            else:
                weights.write_bytes(content)
            r = requests.post(f"{base}/infer/transmedseg_la?image=case_001&output=json")
            assert r.status_code == 409 and str(weights) in r.json()["detail"] and words in r.json()["detail"], r.text
    finally:
        weights.write_bytes(good)
    assert requests.post(f"{base}/infer/transmedseg_la?image=case_001&output=json").status_code == 200
    if before is None:
        weights.unlink()


def test_inference_uploads_too_large_for_the_served_model_get_413(server):
    """With weights served, ``/infer`` judges an upload by its header before decoding it (the security tests' server
    has no weights, so it answers 409 first): a 360-byte file that declares 2 GiB of float32, and a gzip bomb of
    150 M voxels, are refused against the default ``max_voxels`` (512³); the server keeps serving."""
    import gzip

    base, root = server["base"], server["root"]
    _publish_weights(root, "transmedseg_la")
    header = nib.Nifti1Header()
    header.set_data_shape((1024, 1024, 512))
    header.set_data_dtype(np.float32)
    header.set_data_offset(352)
    claim = header.binaryblock + b"\0" * 4 + b"\1\2\3\4"
    bomb = gzip.compress(nib.Nifti1Image(np.zeros((640, 640, 368), np.uint8), np.eye(4)).to_bytes(), compresslevel=1)
    for name, data in (("claim.nii", claim), ("bomb.nii.gz", bomb)):
        r = requests.post(f"{base}/infer/transmedseg_la?output=json", files={"file": (name, data)})
        assert r.status_code == 413 and "max_voxels" in r.json()["detail"], (name, r.status_code, r.text[:300])
    assert requests.post(f"{base}/infer/transmedseg_la?image=case_001&output=json").status_code == 200


def test_loopback_guard_refuses_remote_clients():
    import asyncio

    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.middleware import LoopbackOnly

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def call(host: str) -> int:
        sent = []

        async def send(message):
            sent.append(message)

        async def receive():
            return {"type": "http.request", "body": b""}

        scope = {"type": "http", "client": (host, 5000), "method": "GET", "path": "/info/", "headers": []}
        asyncio.run(LoopbackOnly(app)(scope, receive, send))
        return sent[0]["status"]

    assert call("127.0.0.1") == 200 and call("::1") == 200
    assert call("10.1.2.3") == 403


def test_prediction_key_follows_weights_version_and_configs(tmp_path):
    """The uncertainty cache key changes with the weights, the bundle version, the inference configs and an extra
    config, and with nothing else."""
    import os

    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.infers.bundle_predictor import BundlePredictor

    bundle = tmp_path / "transmedseg_la"
    shutil.copytree(ROOT / "bundles" / "transmedseg_la" / "configs", bundle / "configs")
    shutil.copytree(ROOT / "bundles" / "common" / "configs", tmp_path / "common" / "configs")  # the shared ones
    extra, model = tmp_path / "tiny.yaml", tmp_path / "model.pt"
    extra.write_text(TINY_YAML)
    model.write_bytes(b"weights")
    predictor = BundlePredictor(bundle, model, extra_configs=[extra], device="cpu")
    key = predictor.prediction_key()
    assert predictor.prediction_key() == key

    def changed(edit) -> bool:
        nonlocal key
        edit()
        new = predictor.prediction_key()
        was, key = key, new
        return new != was

    meta = bundle / "configs" / "metadata.json"
    assert changed(lambda: os.utime(model, (1e9, 1e9)))
    assert changed(lambda: meta.write_text(json.dumps({**json.loads(meta.read_text()), "version": "9.9.9"})))
    inference = tmp_path / "common" / "configs" / "inference.yaml"
    assert changed(lambda: inference.write_text(inference.read_text() + "\nsw_average: logits\n"))
    assert changed(lambda: extra.write_text(TINY_YAML + "sw_overlap: 0.25\n"))
    assert not changed(lambda: (bundle / "configs" / "train.yaml").write_text("# not read at inference\n"))


def test_datastore_index_survives_a_failed_write(tmp_path, monkeypatch):
    """A write of the datastore's JSON index that dies half-way leaves the previous complete index, and nothing else."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.datastore.safe_local import SafeLocalDatastore

    studies, upload = tmp_path / "studies", tmp_path / "upload"
    studies.mkdir(), upload.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), upload / "img.nii.gz")
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.uint8), np.eye(4)), upload / "lab.nii.gz")
    store = SafeLocalDatastore(str(studies), num_classes=2, extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    store.add_image("a", str(upload / "img.nii.gz"), {})
    store.save_label("a", str(upload / "lab.nii.gz"), "final", {})
    index = Path(store._datastore_config_path)
    before = index.read_text()
    assert "final" in json.loads(before)["objects"]["a"]["labels"]

    def dies_half_way(self, text, *args, **kwargs):
        with open(self, "w") as f:
            f.write(text[: len(text) // 2])
        raise OSError("disk full")

    def cannot_serialise(*args, **kwargs):
        raise OSError("disk full")

    # a failure while serialising (MONAI Label's in-place write has already truncated the index by then) and one
    # half-way through writing the bytes
    for target, name, fail in ((json, "dumps", cannot_serialise), (Path, "write_text", dies_half_way)):
        monkeypatch.setattr(target, name, fail)
        with pytest.raises(OSError, match="disk full"):
            store.add_image("b", str(upload / "img.nii.gz"), {})
        monkeypatch.undo()
        assert index.read_text() == before
    assert sorted(p.name for p in index.parent.iterdir() if p.name.startswith("." + index.name)) == []
    reopened = SafeLocalDatastore(str(studies), num_classes=2, extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    assert "final" in reopened.get_labels_by_image_id("a")


def test_uploads_that_would_fill_the_disk_are_refused_and_nothing_stored_is_lost(tmp_path, monkeypatch):
    """Past ``max_datastore_gb`` (re-uploads counted net of the file they replace) or below ``min_free_disk_gb``
    free, an image or a label gets a 507 that names the conf key, and the stored files and index are unchanged."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.datastore import SafeLocalDatastore, StorageLimits, folder_bytes
    from lib.errors import RequestError

    studies, upload = tmp_path / "studies", tmp_path / "upload"
    studies.mkdir(), upload.mkdir()
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.random((16, 16, 8)).astype(np.float32), np.eye(4)), upload / "img.nii")
    nib.save(nib.Nifti1Image(np.ones((16, 16, 8), np.uint8), np.eye(4)), upload / "lab.nii")
    size = (upload / "img.nii").stat().st_size
    limits = StorageLimits(max_bytes=2 * size + 1024, min_free_bytes=1)
    store = SafeLocalDatastore(str(studies), num_classes=2, extensions=("*.nii.gz", "*.nii"), auto_reload=False,
                               storage=limits)
    store.add_image("a", str(upload / "img.nii"), {})
    store.add_image("a", str(upload / "img.nii"), {})  # a re-upload replaces its file: no growth
    store.add_image("b", str(upload / "img.nii"), {})
    files = {p: p.read_bytes() for p in studies.rglob("*") if p.is_file()}
    assert folder_bytes(studies) == sum(len(b) for b in files.values())
    for call in (lambda: store.add_image("c", str(upload / "img.nii"), {}),
                 lambda: store.save_label("a", str(upload / "lab.nii"), "final", {})):
        with pytest.raises(RequestError) as e:
            call()
        assert e.value.status_code == 507 and "max_datastore_gb" in e.value.detail
    assert {p: p.read_bytes() for p in studies.rglob("*") if p.is_file()} == files
    assert sorted(store.list_images()) == ["a", "b"]
    # the disk's free space: a write must leave min_free_disk_gb
    roomy = SafeLocalDatastore(str(studies), num_classes=2, extensions=("*.nii.gz", "*.nii"), auto_reload=False,
                               storage=StorageLimits(min_free_bytes=1 << 30))
    monkeypatch.setattr("shutil.disk_usage", lambda path: type("U", (), {"free": (1 << 30) + size // 2})())
    with pytest.raises(RequestError, match="min_free_disk_gb") as e:
        roomy.add_image("c", str(upload / "img.nii"), {})
    assert e.value.status_code == 507 and "c" not in roomy.list_images()
    # the index: each info may hold 256 KiB and tags are any names, so the index file is capped too
    monkeypatch.undo()
    index = Path(store._datastore_config_path)
    small = SafeLocalDatastore(str(studies), num_classes=2, extensions=("*.nii.gz", "*.nii"), auto_reload=False,
                               storage=StorageLimits(max_index_bytes=index.stat().st_size + 4096))
    before = index.read_bytes()
    with pytest.raises(RequestError, match="max_index_mb") as e:
        small.update_image_info("a", {"note": "x" * 8000})
    assert e.value.status_code == 507 and index.read_bytes() == before
    small.update_image_info("a", {"note": "short"})  # a small change still fits
    assert StorageLimits.from_conf({"max_index_mb": "1"}).max_index_bytes == 1 << 20
    assert StorageLimits.from_conf({"max_datastore_gb": "0.5"}).max_bytes == 1 << 29
    with pytest.raises(ValueError, match="min_free_disk_gb"):
        StorageLimits.from_conf({"min_free_disk_gb": "-1"})


def test_auto_reload_follows_an_index_replaced_by_another_process(tmp_path):
    """With ``auto_reload``, a server reloads the index when another datastore replaces it (atomically, a rename)."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.datastore.safe_local import SafeLocalDatastore

    studies, upload = tmp_path / "studies", tmp_path / "upload"
    studies.mkdir(), upload.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.float32), np.eye(4)), upload / "img.nii.gz")
    kw = dict(num_classes=2, extensions=("*.nii.gz", "*.nii"))
    server = SafeLocalDatastore(str(studies), auto_reload=True, **kw)
    try:
        other = SafeLocalDatastore(str(studies), auto_reload=False, **kw)
        other.add_image("a", str(upload / "img.nii.gz"), {})
        time.sleep(2)  # let the image file's own events settle
        other.update_image_info("a", {"reviewer": "x"})  # changes only the index

        def seen() -> bool:  # the in-memory state: get_image_info would reload from disk by itself
            obj = server._datastore.objects.get("a")
            return obj is not None and obj.image.info.get("reviewer") == "x"

        deadline = time.time() + 20
        while time.time() < deadline and not seen():
            time.sleep(0.2)
        assert seen()
    finally:
        server._observer.stop()


def test_a_failed_training_names_the_file(server):
    base, studies = server["base"], server["studies"]
    _ready(server)
    victim = studies / "case_002.nii.gz"
    good = victim.read_bytes()
    try:
        victim.write_bytes(b"no longer a volume")
        r = requests.post(f"{base}/train/transmedseg_la", json=TRAIN)
        assert r.status_code == 200, r.text
        status = _wait_train(base)
        assert status["status"] == "ERROR", status
        last = status["details"][-1]
        assert "training failed" in last and "case_002.nii.gz" in last and "Traceback" not in last, last
    finally:
        victim.write_bytes(good)


def test_images_are_resampled_to_the_models_spacing_and_back(tmp_path):
    """A bundle's ``target_spacing``: an image at another voxel size reaches the network resampled to it, and the
    prediction comes back on the image's own grid; an image already at that spacing is not resampled."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.infers.bundle_predictor import BundlePredictor

    extra, weights = tmp_path / "tiny.yaml", tmp_path / "model.pt"
    extra.write_text(TINY_YAML.replace("target_spacing: null", "target_spacing: [2.0, 2.0, 2.0]")
                     + "sw_overlap: 0.25\n")
    predictor = BundlePredictor(ROOT / "bundles" / "transmedseg_la", weights, extra_configs=[extra], device="cpu")
    assert predictor.target_spacing == (2.0, 2.0, 2.0)
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([*config_files(ROOT / "bundles" / "transmedseg_la", "inference"), str(extra)])
    parser["bundle_root"] = str(ROOT / "bundles" / "transmedseg_la")
    torch.save({"model": parser.get_parsed_content("network").state_dict()}, weights)
    network = predictor._load().network
    calls = []
    network.register_forward_pre_hook(lambda module, inputs: calls.append(tuple(inputs[0].shape[2:])))

    rng = np.random.default_rng(0)
    for spacing, resampled in ((1.0, True), (2.0, False)):  # 64x64x48 at 1 mm is one 32x32x24 window at 2 mm
        affine = np.diag([spacing, spacing, spacing, 1.0])
        affine[:3, 3] = [5.0, -3.0, 2.0]
        path = tmp_path / f"img_{spacing}.nii.gz"
        nib.save(nib.Nifti1Image(rng.random((64, 64, 48), dtype=np.float32), affine), path)
        calls.clear()
        prediction = predictor.predict(path)
        assert (len(calls) == 1) == resampled and calls[0] == (32, 32, 24), (spacing, calls)
        grid = (32, 32, 24) if resampled else (64, 64, 48)  # the probabilities stay on the network's grid
        assert tuple(prediction.probs.shape) == (2, *grid)
        assert torch.allclose(prediction.probs.sum(0), torch.ones(grid), atol=1e-4)
        assert prediction.label.shape == (64, 64, 48) and prediction.label.dtype == np.uint8
        out = tmp_path / f"seg_{spacing}.nii.gz"
        from lib.volumes import write_label

        write_label(prediction.label, prediction.image, out)
        seg = nib.load(out)
        assert seg.shape == (64, 64, 48) and np.allclose(seg.affine, affine)


def test_the_app_serves_the_bundles_own_inference_chain(tmp_path):
    """The app's label map is the one ``inference.yaml`` writes for the same image and weights: the bundle's own
    network (co-training: the pair's averaged softmax), pre-processing (resampled to ``target_spacing``), inferer
    and post-processing (resampled back, largest component kept)."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.infers.bundle_predictor import BundlePredictor
    from monai.bundle import ConfigParser

    bundle = ROOT / "bundles" / "fixed_dynamic_pl_la"
    extra, weights = tmp_path / "voxelwise.yaml", tmp_path / "model.pt"
    # a voxel-wise network (foreground where the normalised intensity is positive), so the label is known
    extra.write_text("backbone_def: {_target_: torch.nn.Conv3d, in_channels: 1, out_channels: 2, kernel_size: 1}\n"
                     "patch_size: [32, 32, 24]\ntarget_spacing: [2.0, 2.0, 2.0]\nsw_overlap: 0.25\n")
    configs = [*config_files(bundle, "inference"), str(extra)]
    parser = ConfigParser()
    parser.read_config(configs)
    pair = parser.get_parsed_content("network_def")
    with torch.no_grad():
        for scale, net in zip((1.0, 3.0), pair.nets):
            net.weight.copy_(torch.tensor([-scale, scale]).view(2, 1, 1, 1, 1))
            net.bias.zero_()
    torch.save(pair.state_dict(), weights)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [5.0, -3.0, 2.0]
    large = np.zeros((64, 64, 48), np.float32)
    large[16:44, 20:48, 12:36] = 1.0
    image = large.copy()
    image[50:58, 4:12, 4:10] = 1.0  # a small structure, which the largest-component step removes
    image += np.random.default_rng(0).normal(0, 0.02, image.shape).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), tmp_path / "case.nii.gz")

    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"bundle_root": str(bundle), "ckpt_path": str(weights), "output_dir": str(tmp_path / "out"),
                   "datalist": [{"image": str(tmp_path / "case.nii.gz")}], "device": "$torch.device('cpu')"})
    parser.get_parsed_content("evaluator").run()
    expected = np.asarray(nib.load(next((tmp_path / "out").rglob("*_seg.nii.gz"))).dataobj)
    assert 2 * (expected * large).sum() / (expected.sum() + large.sum()) > 0.9  # blurred by the 2 mm round trip
    assert not expected[50:58, 4:12, 4:10].any()

    prediction = BundlePredictor(bundle, weights, extra_configs=[extra], device="cpu").predict(tmp_path / "case.nii.gz")
    assert prediction.label.shape == expected.shape == (64, 64, 48)
    np.testing.assert_array_equal(prediction.label, expected)


def test_training_images_at_another_spacing_are_resampled_copies(tmp_path):
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.trainers.resampling import resample_records

    label = np.zeros((20, 20, 16), np.uint8)
    label[4:12, 4:12, 4:10] = 1
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    for name, arr in (("img", np.random.default_rng(0).random((20, 20, 16), dtype=np.float32)), ("lab", label)):
        nib.save(nib.Nifti1Image(arr, affine), tmp_path / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((10, 10, 8), np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path / "ok.nii.gz")
    datalist = {"labeled": [{"image": str(tmp_path / "img.nii.gz"), "label": str(tmp_path / "lab.nii.gz")}],
                "unlabeled": [{"image": str(tmp_path / "ok.nii.gz")}]}
    cache = tmp_path / "cache"
    out = resample_records(datalist, (2.0, 2.0, 2.0), cache)
    assert out["unlabeled"] == datalist["unlabeled"]  # already at 2 mm: the file itself
    image, lab = (nib.load(out["labeled"][0][k]) for k in ("image", "label"))
    assert Path(out["labeled"][0]["image"]).parent == cache
    assert image.shape == lab.shape == (10, 10, 8) and np.allclose(image.header.get_zooms(), 2.0)
    assert set(np.unique(np.asarray(lab.dataobj))) == {0, 1} and np.asarray(lab.dataobj).sum() == 4 * 4 * 3
    mtime = Path(out["labeled"][0]["image"]).stat().st_mtime
    assert resample_records(datalist, (2.0, 2.0, 2.0), cache) == out  # cached: not remade
    assert Path(out["labeled"][0]["image"]).stat().st_mtime == mtime
    assert resample_records(datalist, None, cache) == datalist
    # an image the datalist no longer uses (deleted from the datastore) leaves the cache with the next training
    kept = resample_records({"labeled": datalist["labeled"][:0], "unlabeled": datalist["unlabeled"]}, (2.0, 2.0, 2.0),
                            cache)
    assert kept["unlabeled"] == datalist["unlabeled"] and list(cache.iterdir()) == []
    # voxels so large that the copy would pass the voxel limit: named, nothing written
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.diag([4000.0, 4000.0, 4000.0, 1.0])),
             tmp_path / "huge_voxels.nii.gz")
    with pytest.raises(ValueError, match="huge_voxels.nii.gz.*voxels"):
        resample_records({"unlabeled": [{"image": str(tmp_path / "huge_voxels.nii.gz")}]}, (2.0, 2.0, 2.0), cache)
    assert list(cache.iterdir()) == []


def test_diverged_weights_are_never_published(tmp_path):
    """A training whose weights hold NaN or infinity fails by name; the served weights are not replaced."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.trainers.semi_supervised_bundle import publish_weights

    served = tmp_path / "served.pt"
    served.write_bytes(b"the weights served now")
    good = {"conv.weight": torch.ones(2, 2), "bn.num_batches_tracked": torch.tensor(3)}
    torch.save({**good, "head.bias": torch.tensor([0.0, float("nan")])}, tmp_path / "nan.pt")
    with pytest.raises(RuntimeError, match=r"nan.pt hold NaN or infinite values \(head.bias;.*served.pt is kept"):
        publish_weights(tmp_path / "nan.pt", served, [])
    assert served.read_bytes() == b"the weights served now" and not (tmp_path / "model.json").exists()
    torch.save({**good, "head.bias": torch.tensor([0.0, float("inf")])}, tmp_path / "inf.pt")
    with pytest.raises(RuntimeError, match="inf.pt hold NaN or infinite"):
        publish_weights(tmp_path / "inf.pt", served, [])
    torch.save(good, tmp_path / "good.pt")
    publish_weights(tmp_path / "good.pt", served, [])  # finite: published
    assert served.read_bytes() == (tmp_path / "good.pt").read_bytes() and (tmp_path / "model.json").is_file()


@pytest.mark.parametrize("bundle",
                         sorted(p.parent.parent.name for p in (ROOT / "bundles").glob("*/configs/metadata.json")))
def test_every_bundle_is_served_by_the_app(bundle, tmp_path):
    """Each bundle's README tells users to serve it with ``--conf models <bundle>``: the app has a config for every
    bundle, whose labels come from its metadata and whose predictor builds the bundle's network."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.configs import CONFIGS

    assert bundle in CONFIGS, f"no app config for {bundle} (monailabel_app/lib/configs)"
    config = CONFIGS[bundle]()
    config.init(bundle, str(tmp_path / "model"), {"device": "cpu", "shipped_weights": "false"}, None,
                bundles_dir=str(ROOT / "bundles"))
    channels = json.loads((ROOT / "bundles" / bundle / "configs" / "metadata.json").read_text())[
        "network_data_format"]["outputs"]["pred"]["channel_def"]
    assert len(config.labels) == len(channels) - 1 == config.predictor.num_classes - 1
    assert config.task == ("acdc" if bundle.endswith("_acdc") else "la")
    assert isinstance(config.predictor._parser().get_parsed_content("network_def"), torch.nn.Module)
    # as the quick start serves it: with the CPU protocol, the app starts from the bundle's shipped weights, which
    # load into the network its inference configs build (transmedseg_acdc's cpu_protocol.yaml once named a training
    # key, and the app did not start)
    from ssmis.bundle.weights import read_state_dict

    served = CONFIGS[bundle]()
    served.init(bundle, str(tmp_path / "served"), {"device": "cpu", "extra_config": "cpu_protocol.yaml"}, None,
                bundles_dir=str(ROOT / "bundles"))
    weights = tmp_path / "served" / bundle / "model.pt"
    assert weights.is_file(), f"{bundle}: the shipped weights are not served with cpu_protocol.yaml"
    network = served.predictor._parser().get_parsed_content("network_def")
    network.load_state_dict({k: v.float() for k, v in read_state_dict(weights).items()}, strict=True)


def test_a_short_training_with_the_defaults_slicer_sends_is_accepted(tmp_path):
    """Slicer sends the trainer's whole default config with the user's num_iterations: a 20-iteration TransMedSeg run
    keeps its default pretrain_iterations (100: all pre-training) and validates at its end, instead of a 400."""
    sys.path.insert(0, str(ROOT / "monailabel_app"))
    from lib.configs import CONFIGS

    config = CONFIGS["transmedseg_la"]()
    config.init("transmedseg_la", str(tmp_path / "model"), {"device": "cpu", "shipped_weights": "false",
                                                           "extra_config": "cpu_protocol.yaml"}, None,
                bundles_dir=str(ROOT / "bundles"))
    trainer = config.trainer()
    request = {**trainer.config(), "num_iterations": 20}
    settings = trainer.parse(request)
    trainer.check(settings, n_labeled=8)
    assert settings["val_interval"] == 20 and settings["pretrain_iterations"] == 100
    with pytest.raises(ValueError, match="num_iterations=1000000 is above this server's limit"):
        trainer.check(trainer.parse({**request, "num_iterations": 10 ** 6}), n_labeled=8)
