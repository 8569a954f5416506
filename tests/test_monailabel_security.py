"""Probes for the app's security and upload checks, each against a real server on 127.0.0.1.

One probe per hole that was reproduced against the app: the session tar with ``../`` members, CORS for any origin,
a NIfTI header that claims gigabytes, a gzip bomb, oversized bodies, temporary files left by refused uploads,
inference on a path a client names, 2D/4D/NaN uploads, a label on another grid, a stale label under the other
extension, and a different image re-uploaded under an id that has labels.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests

from conftest import ROOT

sys.path.insert(0, str(ROOT / "monailabel_app"))

from lib.server_process import start_server, stop_server  # noqa: E402

pytest.importorskip("monailabel")
pytestmark = pytest.mark.slow

MAX_VOXELS = 4_000_000
MAX_UPLOAD_MB = 2


def _nifti_bytes(arr: np.ndarray, affine: np.ndarray | None = None, gz: bool = True) -> bytes:
    img = nib.Nifti1Image(arr, np.eye(4) if affine is None else affine)
    raw = img.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def _header_only(shape: tuple, dtype=np.float32) -> bytes:
    """A NIfTI file of header and 4 data bytes whose header declares ``shape`` at the served network's 0.625 mm (so
    resampling does not make it larger)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_zooms((0.625,) * len(shape))
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    return header.binaryblock + b"\0" * 4 + b"\1\2\3\4"


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


@pytest.fixture(scope="session")  # session: a worker running another module in between keeps it
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label_security")
    studies = root / "studies"
    studies.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        (studies / f"case_{i}.nii.gz").write_bytes(_nifti_bytes(rng.random((24, 24, 16)).astype(np.float32)))
    conf = {"models": "transmedseg_la", "model_dir": str(root / "model"), "device": "cpu",
            "max_voxels": str(MAX_VOXELS), "max_upload_mb": str(MAX_UPLOAD_MB)}
    try:
        # auto-scoring on, as the README starts the server
        env = {"OMP_NUM_THREADS": "1", "MONAI_LABEL_AUTO_UPDATE_SCORING": "true"}
        proc, base = start_server(studies, conf, root / "server.log", env=env, timeout_s=120)
    except RuntimeError as e:
        pytest.fail(str(e))
    folders = list(Path(tempfile.gettempdir()).glob(f"ssmis-monailabel-{proc.pid}-*"))
    try:
        yield {"base": base, "root": root, "studies": studies, "pid": proc.pid,
               "temp": folders[0] if folders else None}
    finally:
        stop_server(proc, timeout_s=20)


def _upload(base: str, image_id: str, data: bytes, name: str = "x.nii.gz", **kw) -> requests.Response:
    return requests.put(f"{base}/datastore/image?image={image_id}", files={"file": (name, data)}, **kw)


def _put_label(base: str, image_id: str, data: bytes, name: str = "label.nii.gz") -> requests.Response:
    return requests.put(f"{base}/datastore/label?image={image_id}", files={"label": (name, data)})


def test_sessions_are_off_and_a_tar_with_dotdot_writes_nothing(server, tmp_path):
    base = server["base"]
    target = tmp_path / "escaped.txt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = b"planted"
        member = tarfile.TarInfo("../" * 12 + str(target).lstrip("/"))
        member.size = len(payload)
        tar.addfile(member, io.BytesIO(payload))
    r = requests.put(f"{base}/session/?uncompress=true", files={"files": ("x.tar", buf.getvalue())})
    assert 400 <= r.status_code < 500, r.text
    assert not target.exists()
    r = requests.get(f"{base}/session/anything?image=true")
    assert 400 <= r.status_code < 500 and b"/etc" not in r.content


def test_cross_origin_requests_are_refused(server):
    base = server["base"]
    evil = {"Origin": "http://evil.example"}
    preflight = requests.options(f"{base}/datastore/image", headers={
        **evil, "Access-Control-Request-Method": "PUT", "Access-Control-Request-Headers": "content-type"})
    assert "access-control-allow-origin" not in {k.lower() for k in preflight.headers}
    assert preflight.status_code == 403
    # a "simple" cross-origin request is sent by browsers without a preflight: it must not be carried out
    r = _upload(base, "from_evil", _nifti_bytes(np.zeros((24, 24, 16), np.float32)), headers=evil)
    assert r.status_code == 403 and "access-control-allow-origin" not in {k.lower() for k in r.headers}
    assert "from_evil" not in requests.get(f"{base}/datastore/?output=all").json()["objects"]
    same = {"Origin": base}  # the server's own pages
    assert requests.get(f"{base}/info/", headers=same).status_code == 200
    assert requests.get(f"{base}/info/").status_code == 200  # Slicer and MONAILabelClient send no Origin


def test_header_claims_and_bombs_are_refused_before_reading(server):
    base, pid = server["base"], server["pid"]
    before = _rss_kb(pid)
    claims_2gb = _header_only((1024, 1024, 512))  # 2 GiB of float32 in a 360-byte file
    r = _upload(base, "claim", claims_2gb, name="claim.nii")
    assert r.status_code == 413 and "max_voxels" in r.json()["detail"], r.text
    truncated = _header_only((200, 100, 100), np.uint8)  # within the voxel limit, but the data is not there
    r = _upload(base, "short", truncated, name="short.nii")
    assert r.status_code == 400 and "truncated" in r.json()["detail"], r.text
    r = _upload(base, "shortgz", gzip.compress(truncated), name="shortgz.nii.gz")
    assert r.status_code == 400 and "truncated" in r.json()["detail"], r.text
    bomb = _nifti_bytes(np.zeros((256, 256, 128), np.uint8))  # 8.4 M voxels from about 8 kB
    assert len(bomb) < 100_000
    r = _upload(base, "bomb", bomb)
    assert r.status_code == 413 and "8,388,608 voxels" in r.json()["detail"], r.text
    # no weights here: 409, answered before the image is read (with weights, the same upload gets a 413:
    # test_monailabel_app.py::test_inference_uploads_too_large_for_the_served_model_get_413)
    r = requests.post(f"{base}/infer/transmedseg_la", files={"file": ("claim.nii", claims_2gb)})
    assert r.status_code == 409, r.text
    assert _rss_kb(pid) - before < 150_000  # kB: nothing near the claimed sizes was allocated
    for image_id in ("claim", "short", "shortgz", "bomb"):
        assert image_id not in requests.get(f"{base}/datastore/?output=all").json()["objects"]


def test_bodies_above_the_upload_limit_get_413(server):
    base = server["base"]
    big = b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
    r = _upload(base, "big", big)
    assert r.status_code == 413 and "max_upload_mb" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit applies while the body streams in
        yield (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.nii.gz"\r\n'
               b"Content-Type: application/octet-stream\r\n\r\n")
        for _ in range(MAX_UPLOAD_MB * 4 + 1):
            yield b"\0" * (256 * 1024)

    r = requests.put(f"{base}/datastore/image?image=big", data=chunks(),
                     headers={"Content-Type": "multipart/form-data; boundary=xyz"})
    assert r.status_code == 413, r.text
    assert requests.get(f"{base}/info/").status_code == 200


def test_refused_uploads_leave_no_temporary_files(server):
    base, temp = server["base"], server["temp"]
    assert temp is not None and temp.is_dir(), "the server has no private temporary folder"
    assert (temp.stat().st_mode & 0o077) == 0  # other users cannot list or read it
    system_tmp = Path(tempfile.gettempdir())
    before = {p.name for p in system_tmp.iterdir()}
    bad = [lambda: _upload(base, "junk", b"not a volume"),
           lambda: _upload(base, "flat", _nifti_bytes(np.zeros((24, 24), np.float32))),
           lambda: _put_label(base, "case_0", b"garbage"),
           lambda: _put_label(base, "case_0", _nifti_bytes(np.zeros((8, 8, 8), np.uint8))),
           lambda: requests.post(f"{base}/infer/transmedseg_la", files={"file": ("x.nii.gz", b"junk")})]
    for _ in range(6):
        for call in bad:
            assert 400 <= call().status_code < 500
    time.sleep(1.5)  # the sweep keeps entries younger than a second (file-system clock ticks)
    assert requests.get(f"{base}/info/").status_code == 200  # its sweep runs just after its answer
    deadline = time.time() + 10
    while list(temp.iterdir()) and time.time() < deadline:
        time.sleep(0.1)
    assert list(temp.iterdir()) == []
    new = {p for p in {p.name for p in system_tmp.iterdir()} - before if p.startswith("tmp")}
    assert new == set(), f"temporary files left in {system_tmp}: {sorted(new)[:5]}"


def test_inference_takes_datastore_ids_only(server):
    base, studies = server["base"], server["studies"]
    existing = studies / "case_0.nii.gz"
    for query in (f"image={existing}", "image=..%2Fcase_0", f"image={server['root']}%2Fserver.log"):
        r = requests.post(f"{base}/infer/transmedseg_la?{query}")
        assert r.status_code == 400 and "image id" in r.json()["detail"], (query, r.text)
    # a path smuggled in through params, with or without an upload of its own
    for files in (None, {"file": ("x.nii.gz", existing.read_bytes())}):
        r = requests.post(f"{base}/infer/transmedseg_la?image=case_0", data={"params": json.dumps(
            {"image": str(existing)})}, files=files)
        assert r.status_code == 400 and "image id" in r.json()["detail"], r.text
    r = requests.post(f"{base}/infer/transmedseg_la")
    assert r.status_code == 400 and "no image" in r.json()["detail"], r.text
    for query in ("id=..%2Fcase_0&tag=final", "id=case_0&tag=..%2F..%2Fstudies"):
        assert requests.delete(f"{base}/datastore/label?{query}").status_code == 400
    assert requests.delete(f"{base}/datastore/image?id=..%2Fcase_0").status_code == 400
    # a datastore id and an upload of this request are served (409: this model has no weights yet)
    assert requests.post(f"{base}/infer/transmedseg_la?image=case_0").status_code == 409
    r = requests.post(f"{base}/infer/transmedseg_la", files={"file": ("x.nii.gz", existing.read_bytes())})
    assert r.status_code == 409, r.text


def test_uploads_that_would_break_training_are_refused(server):
    base = server["base"]
    nan = np.zeros((24, 24, 16), np.float32)
    nan[1, 2, 3] = np.nan
    cases = {"flat": np.zeros((24, 24), np.float32), "fourd": np.zeros((24, 24, 16, 3), np.float32), "nan": nan}
    for image_id, arr in cases.items():
        r = _upload(base, image_id, _nifti_bytes(arr))
        assert r.status_code == 400 and image_id in r.json()["detail"], r.text
    assert "NaN" in _upload(base, "nan", _nifti_bytes(nan)).json()["detail"]
    # a trailing axis of length 1 is a 3D volume
    assert _upload(base, "single", _nifti_bytes(np.zeros((24, 24, 16, 1), np.float32))).status_code == 200
    objects = requests.get(f"{base}/datastore/?output=all").json()["objects"]
    assert not set(cases) & set(objects) and "single" in objects


def test_label_geometry_and_stale_extensions(server):
    base, studies = server["base"], server["studies"]
    image = nib.load(studies / "case_1.nii.gz")
    label = np.zeros(image.shape, np.uint8)
    label[4:10, 4:10, 4:8] = 1
    shifted = image.affine.copy()
    shifted[0, 3] += 5.0
    r = _put_label(base, "case_1", _nifti_bytes(label, shifted))
    assert r.status_code == 400 and "grid" in r.json()["detail"], r.text
    assert _put_label(base, "case_1", _nifti_bytes(label, image.affine)).status_code == 200
    newer = label.copy()
    newer[12:14, 12:14, 2:4] = 1
    assert _put_label(base, "case_1", _nifti_bytes(newer, image.affine, gz=False), "label.nii").status_code == 200
    final = studies / "labels" / "final"
    assert sorted(p.name for p in final.glob("case_1.*")) == ["case_1.nii"]  # one file per id
    r = requests.delete(f"{base}/datastore/label?id=case_1&tag=final")
    assert r.status_code == 200, r.text
    assert list(final.glob("case_1.*")) == []
    assert requests.get(f"{base}/datastore/?output=all").json()["objects"]["case_1"]["labels"] == {}


def test_a_different_image_under_a_labelled_id_is_refused(server):
    base, studies = server["base"], server["studies"]
    image = nib.load(studies / "case_0.nii.gz")
    label = np.zeros(image.shape, np.uint8)
    label[2:6, 2:6, 2:6] = 1
    assert _put_label(base, "case_0", _nifti_bytes(label, image.affine)).status_code == 200
    before = (studies / "case_0.nii.gz").read_bytes()
    other = np.asarray(image.dataobj) + 1.0
    r = _upload(base, "case_0", _nifti_bytes(other.astype(np.float32), image.affine))
    assert r.status_code == 409 and "delete the image first" in r.json()["detail"], r.text
    moved = image.affine.copy()
    moved[1, 3] += 2.0
    r = _upload(base, "case_0", _nifti_bytes(np.asarray(image.dataobj), moved))
    assert r.status_code == 409, r.text
    assert (studies / "case_0.nii.gz").read_bytes() == before
    # the same image again (even recompressed) keeps its labels
    assert _upload(base, "case_0", _nifti_bytes(np.asarray(image.dataobj), image.affine)).status_code == 200
    assert "final" in requests.get(f"{base}/datastore/?output=all").json()["objects"]["case_0"]["labels"]


def test_origin_and_limit_settings_are_checked():
    from lib.middleware import OriginGuard, allowed_origins
    from lib.volumes import VolumeLimits

    assert allowed_origins("http://localhost:3000, https://viewer.example/") == ["http://localhost:3000",
                                                                               "https://viewer.example"]
    for bad in ("*", "localhost:3000", "http://x.example/path"):
        with pytest.raises(ValueError, match="cors_origins"):
            allowed_origins(bad)
    guard = OriginGuard(None, ["http://localhost:3000"])
    assert guard.allows("http://localhost:3000", "127.0.0.1:8000")
    assert guard.allows("http://127.0.0.1:8000", "127.0.0.1:8000")  # same origin, literal host
    assert not guard.allows("http://rebound.example:8000", "rebound.example:8000")  # DNS rebinding
    assert not guard.allows("null", "127.0.0.1:8000")
    assert VolumeLimits.from_conf({"max_upload_mb": "1", "max_voxels": "1e6"}) == VolumeLimits(1_000_000, 1 << 20)
    for key in ("max_voxels", "max_upload_mb"):
        with pytest.raises(ValueError, match=key):
            VolumeLimits.from_conf({key: "-1"})


def test_conf_switches_are_read_one_way_and_a_misspelt_one_is_named():
    """``allow_remote``, ``auto_reload`` and ``shipped_weights`` are read by one function: the usual spellings of
    on and off, the default when absent, and a refusal naming the key for anything else (``ture`` used to mean off
    for allow_remote and on for shipped_weights)."""
    from lib.conf_values import switch

    for value, expected in (("true", True), ("YES", True), (" on ", True), ("1", True), ("False", False),
                            ("no", False), ("off", False), ("0", False)):
        assert switch({"allow_remote": value}, "allow_remote", not expected) is expected
    assert switch({}, "shipped_weights", True) is True and switch({}, "allow_remote", False) is False
    for bad in ("ture", "", "2", "enabled"):
        with pytest.raises(ValueError, match="--conf shipped_weights: expected true or false"):
            switch({"shipped_weights": bad}, "shipped_weights", True)


def test_server_pace_settings_are_read_once_with_the_key_named():
    """``max_parallel_infer``, ``infer_wait_s`` and the slow-client keys: defaults when absent, 0 where it means
    "none" (no wait, no rate), and a bad value (a word, a fraction of a slot, infinity) names its key at start-up
    instead of a bare ``int()`` error or a gate that waits for ever."""
    from lib.middleware import ComputeGate, SlowClients

    gate = ComputeGate.from_conf({})
    assert (gate.slots, gate.wait_s) == (2, 120.0)
    gate = ComputeGate.from_conf({"max_parallel_infer": "3", "infer_wait_s": "0"})
    assert (gate.slots, gate.wait_s) == (3, 0.0)
    for key, bad in (("max_parallel_infer", "two"), ("max_parallel_infer", "1.5"), ("max_parallel_infer", "0"),
                     ("infer_wait_s", "inf"), ("infer_wait_s", "-1"), ("infer_wait_s", "1e10")):
        with pytest.raises(ValueError, match=f"--conf {key}"):
            ComputeGate.from_conf({key: bad})
    assert SlowClients.conf_limits({}) == {"idle_s": 60.0, "body_s": 600.0, "min_rate": 32 * 1024.0}
    assert SlowClients.conf_limits({"min_client_rate_kbs": "0", "client_idle_s": "5"})["min_rate"] == 0.0
    for key in ("client_idle_s", "max_body_s", "min_client_rate_kbs"):
        with pytest.raises(ValueError, match=f"--conf {key}"):
            SlowClients.conf_limits({key: "nan"})
    with pytest.raises(ValueError, match="--conf client_idle_s"):
        SlowClients.conf_limits({"client_idle_s": "0"})


def test_private_tempdir_removes_dead_servers_folders(tmp_path):
    import subprocess

    from lib.middleware import private_tempdir

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"ssmis-monailabel-{dead.pid}-abc"
    stale.mkdir()
    (stale / "tmpleft.nii.gz").write_bytes(b"x")
    alive = tmp_path / f"ssmis-monailabel-{os.getpid()}-def"
    alive.mkdir()
    saved = tempfile.tempdir
    try:
        folder = private_tempdir(str(tmp_path))
        assert tempfile.gettempdir() == str(folder) and folder.name.startswith(f"ssmis-monailabel-{os.getpid()}-")
    finally:
        tempfile.tempdir = saved
    assert not stale.exists() and alive.exists()
    shutil.rmtree(folder)


def test_uploads_that_would_fill_the_temporary_disk_are_refused(tmp_path, monkeypatch):
    """Each upload is copied twice into the temporary folder while it is served: one that, on top of the uploads in
    flight, would leave less than ``min_free_disk_gb`` free there gets a 507 naming the key before its body is
    read; the room is given back when a request ends; bodies that are not uploads are not counted."""
    import asyncio
    import shutil as shutil_module

    from lib.middleware import BodySizeLimit

    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: type("U", (), {"free": 10_000})())
    read = []

    async def endpoint(scope, receive, send):
        read.append((await receive())["body"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    limit = BodySizeLimit(endpoint, max_bytes=4_000, temp_folder=str(tmp_path), min_free_bytes=2_000)

    def call(length, ctype=b"multipart/form-data; boundary=x"):
        sent = []

        async def receive():
            return {"type": "http.request", "body": b"x", "more_body": False}

        async def send(message):
            sent.append(message)
        headers = [(b"content-type", ctype)] + ([(b"content-length", str(length).encode())] if length else [])
        asyncio.run(limit({"type": "http", "method": "PUT", "path": "/datastore/image", "headers": headers},
                          receive, send))
        return sent[0]["status"], sent[1].get("body", b"")

    assert call(3_000) == (200, b"") and limit._in_flight == 0  # 2 x 3,000 leaves 4,000 free
    status, body = call(4_000 + 1)
    assert status == 413  # the size limit comes first
    limit._in_flight = 3_000  # another upload being served
    status, body = call(3_000)
    assert status == 507 and b"min_free_disk_gb" in body and len(read) == 1
    assert call(None)[0] == 507  # no declared length: counted at the limit
    assert call(9_000, b"application/json")[0] == 200  # not an upload: not counted


def test_each_request_keeps_its_temporary_files_in_a_folder_of_its_own(tmp_path, monkeypatch):
    """A request's temporary files (MONAI Label's copies of uploads) go to a folder of the request's own, removed
    when it ends, even while a longer request runs (the sweep alone kept them until every older request was done);
    another request's file is never taken for this request's upload."""
    import asyncio
    import threading

    from lib.middleware import TempFileJanitor, is_own_upload, private_tempdir

    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)  # restored after the test, as is gettempdir
    monkeypatch.setattr(tempfile, "gettempdir", tempfile.gettempdir)
    folder = private_tempdir(str(tmp_path))
    made, own, started, finish = {}, {}, threading.Event(), threading.Event()

    async def app(scope, receive, send):  # stands for an endpoint that copies an upload to a temporary file
        path = scope["path"]
        with tempfile.NamedTemporaryFile(suffix=".nii.gz", delete=False) as f:
            made[path] = f.name
        own[path] = is_own_upload(f.name, folder), ("/long" in made and is_own_upload(made["/long"], folder))
        if path == "/long":
            started.set()
            while not finish.is_set():
                await asyncio.sleep(0.01)

    janitor = TempFileJanitor(app, folder)

    def call(path):
        asyncio.run(janitor({"type": "http", "method": "PUT", "path": path, "headers": []}, None, None))

    long = threading.Thread(target=call, args=("/long",), daemon=True)
    long.start()
    assert started.wait(5)
    call("/short")
    assert not os.path.exists(made["/short"]) and os.path.exists(made["/long"])  # gone although /long runs
    assert Path(made["/short"]).parent.parent == folder and own["/short"] == (True, False)
    finish.set(), long.join(5)
    assert not os.path.exists(made["/long"]) and list(folder.iterdir()) == []
    assert tempfile.gettempdir() == str(folder)  # outside a request: the server's folder
    # the query as FastAPI reads it: ?image=x&image= names no image
    seen = []

    async def query_app(scope, receive, send):
        from lib.middleware import current_request
        seen.append(current_request().query)

    asyncio.run(TempFileJanitor(query_app, folder)({"type": "http", "path": "/", "headers": [],
                                                    "query_string": b"image=x&image="}, None, None))
    assert seen == [{"image": ""}]


def test_auto_scoring_does_not_pile_up(server):
    base = server["base"]
    for _ in range(6):  # each Next Sample asks for a scoring round
        assert requests.post(f"{base}/activelearning/random").status_code == 200
    rounds = requests.get(f"{base}/scoring/?all=true").json()
    # one method served: at most the start-up round and one more, however many samples were asked for
    assert isinstance(rounds, list) and len(rounds) <= 2, rounds
    r = requests.post(f"{base}/scoring/no_such_method")
    assert r.status_code == 404 and "transmedseg_la_uncertainty" in r.json()["detail"], r.text


def test_a_train_request_with_too_few_labels_says_how_many(server):
    base = server["base"]
    r = requests.post(f"{base}/train/transmedseg_la", json={})
    assert r.status_code == 400 and "at least 5 labelled images" in r.json()["detail"], r.text
    r = requests.post(f"{base}/train/transmedseg_la", json={"batch_size": 2})
    assert r.status_code == 400 and "at least 3 labelled images" in r.json()["detail"], r.text
    assert requests.get(f"{base}/train/").json().get("status") not in ("SUBMITTED", "RUNNING")


def test_a_small_unlabelled_pool_is_drawn_with_replacement():
    from lib.trainers.semi_supervised_bundle import SemiSupervisedBundleTrain

    class Store:
        def __init__(self, n_labeled: int, n_unlabeled: int) -> None:
            self.labeled = [{"image": f"l{i}", "label": f"m{i}"} for i in range(n_labeled)]
            self.unlabeled = [f"u{i}" for i in range(n_unlabeled)]

        def datalist(self):
            return list(self.labeled)

        def get_unlabeled_images(self, tag):
            return list(self.unlabeled)

        def get_image_uri(self, image_id):
            return image_id

    split = SemiSupervisedBundleTrain.split(Store(7, 1), 0.2, 0, unlabeled_batch=2)
    assert split["unlabeled"] == [{"image": "u0"}] * 2 and split["unlabeled_resampled"]
    assert (len(split["labeled"]), len(split["validation"])) == (6, 1)
    split = SemiSupervisedBundleTrain.split(Store(7, 0), 0.2, 0, unlabeled_batch=2)
    assert split["unlabeled"] == [] and not split["unlabeled_resampled"]
    split = SemiSupervisedBundleTrain.split(Store(7, 3), 0.2, 0, unlabeled_batch=2)
    assert len(split["unlabeled"]) == 3 and not split["unlabeled_resampled"]


def test_downloads_are_served_from_the_worker_threads(server):
    """Slicer downloads the proposed volume (``GET /datastore/image``): a file response streamed from a worker
    thread's event loop reaches the client whole."""
    base, studies = server["base"], server["studies"]
    r = requests.get(f"{base}/datastore/image?image=case_1")
    assert r.status_code == 200 and r.content == (studies / "case_1.nii.gz").read_bytes()
    assert requests.head(f"{base}/datastore/image?image=case_1").status_code == 200


@pytest.mark.parametrize("chunk", [7, 1 << 20])
def test_form_fields_that_are_not_json_objects_are_refused_as_the_body_streams(chunk):
    """``FormFieldCheck`` reads ``params``/``info`` from url-encoded and multipart bodies, also split into small
    chunks, and raises a 400 naming the field before the endpoint runs; objects, malformed JSON (the endpoint's
    own 400) and other fields pass."""
    import asyncio

    from lib.middleware import FormFieldCheck, FormFieldError

    def multipart(fields: dict, file: bytes, filename: bytes = b"a.nii.gz") -> tuple[bytes, bytes]:
        b = b"----x7"
        parts = [b"--" + b + b'\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n' + v.encode()
                 for k, v in fields.items()]
        parts.append(b"--" + b + b'\r\nContent-Disposition: form-data; name="file"; filename="' + filename +
                     b'"\r\nContent-Type: application/octet-stream\r\n\r\n' + file)
        return b"multipart/form-data; boundary=" + b, b"\r\n".join(parts) + b"\r\n--" + b + b"--\r\n"

    def run(content_type: bytes, body: bytes) -> str | None:
        """The error the endpoint's body reading raised, or None when it read the whole body."""
        async def app(scope, receive, send):
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)

        pieces = [body[i:i + chunk] for i in range(0, len(body), chunk)] or [b""]
        messages = [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]

        async def receive():
            return messages.pop(0)

        scope = {"type": "http", "method": "POST", "path": "/infer/m", "headers": [(b"content-type", content_type)]}
        try:
            asyncio.run(FormFieldCheck(app)(scope, receive, None))
        except FormFieldError as e:
            assert e.status_code == 400
            return e.detail
        return None

    url = b"application/x-www-form-urlencoded"
    assert "params field must be a JSON object, got list" in run(url, b"a=1&params=%5B1%2C+2%5D&b=2")
    assert "info field must be a JSON object, got str" in run(url, b"info=%22x%22")
    assert run(url, b"params=%7B%22label_info%22%3A+%5B%5D%7D") is None
    assert run(url, b"params=%7Bnot+json") is None  # the endpoint's json.loads answers 400
    assert run(url, b"other=7") is None
    assert "params field must be a JSON object, got int" in run(*multipart({"params": "7"}, b"\0" * 5000))
    assert "params field must be a JSON object, got list" in run(*multipart({"x": "1", "params": "[]"}, b"data"))
    assert run(*multipart({"params": '{"a": [1]}'}, b"7" * 5000)) is None
    assert run(b"application/json", b"[1]") is None  # not a form: the endpoint's business
    # too deep to parse, and file names MONAI Label cannot name its temporary copy after (a 500 there)
    assert "params field nests too deeply" in run(*multipart({"params": "[" * 100000}, b"x"))
    assert "params field nests too deeply" in run(url, b"params=" + b"%5B" * 100000)
    assert "file name of the 'file' part" in run(*multipart({}, b"x", b"a" + b".v" * 150 + b".nii.gz"))
    assert "has a NUL" in run(*multipart({}, b"x", b"a\0b.nii.gz"))
    assert run(*multipart({}, b"x", b"case.T1w.nii.gz")) is None
    assert run(*multipart({}, b"x", b"/data/" + b"deep/" * 60 + b"case.nii.gz")) is None  # a client's full path
    # decoded as Starlette decodes them: invalid UTF-8 falls back to latin-1 (twice the bytes on disk), and a
    # body's charset applies to its fields and file names
    assert "suffixes of more than" in run(*multipart({}, b"x", b"a." + b"\xff" * 130 + b".nii.gz"))
    ctype, body = multipart({"params": "+AFs-" * 5000}, b"x")
    assert "nests too deeply" in run(ctype + b"; charset=utf-7", body)
    ctype, body = multipart({"params": "+AFs-1+AF0-"}, b"x")
    assert "got list" in run(ctype + b"; charset=utf-7", body)


def test_task_requests_cannot_choose_server_settings_or_overwrite_labels(server):
    """Bodies of the task endpoints may not name a folder for the task's PYTHONPATH, pick GPUs, save batch or
    inference predictions as final labels, run batch inference inside the server, or ask for unbounded work; the
    whole-slide, log, dataset-zip and weight-upload endpoints are not served. Each answer is quick and says why."""
    base = server["base"]
    final = server["studies"] / "labels" / "final" / "case_0.nii.gz"
    final_before = final.read_bytes() if final.exists() else None

    def task_count(kind: str) -> int:
        tasks = requests.get(f"{base}/{kind}/?all=true").json()
        return len(tasks) if isinstance(tasks, list) else 0

    counts = {kind: task_count(kind) for kind in ("train", "batch/infer")}
    refused = {
        "train bundle_path": (400, lambda: requests.post(f"{base}/train/transmedseg_la", json={"bundle_path": "/tmp"})),
        "train gpus": (400, lambda: requests.post(f"{base}/train/transmedseg_la", json={"gpus": "0"})),
        "train section bundle_path": (400, lambda: requests.post(
            f"{base}/train/", json={"transmedseg_la": {"bundle_path": "/tmp"}})),
        "scoring bundle_path": (400, lambda: requests.post(f"{base}/scoring/transmedseg_la_uncertainty",
                                                           json={"bundle_path": "/tmp"})),
        "batch bundle_path": (400, lambda: requests.post(f"{base}/batch/infer/transmedseg_la",
                                                         json={"bundle_path": "/tmp"})),
        "batch to final labels": (400, lambda: requests.post(f"{base}/batch/infer/transmedseg_la",
                                                             json={"label_tag": "final"})),
        "batch run_sync": (400, lambda: requests.post(f"{base}/batch/infer/transmedseg_la?run_sync=true", json={})),
        "batch run_sync=t": (400, lambda: requests.post(f"{base}/batch/infer/transmedseg_la?run_sync=t", json={})),
        "train run_sync=Y": (400, lambda: requests.post(f"{base}/train/transmedseg_la?run_sync=Y", json={})),
        "batch many workers": (400, lambda: requests.post(f"{base}/batch/infer/transmedseg_la",
                                                          json={"max_workers": 64})),
        "infer to final labels": (400, lambda: requests.post(
            f"{base}/infer/transmedseg_la?image=case_0",
            data={"params": json.dumps({"save_label": True, "label_tag": "final"})})),
        "active learning client_id": (400, lambda: requests.post(f"{base}/activelearning/random",
                                                                 json={"client_id": "x" * 300})),
        "train batch_size 1e12": (400, lambda: requests.post(f"{base}/train/transmedseg_la",
                                                             json={"batch_size": 10 ** 12})),
        "train num_iterations 1e9": (400, lambda: requests.post(f"{base}/train/transmedseg_la",
                                                                json={"num_iterations": 10 ** 9})),
        "train val_fraction 0.999": (400, lambda: requests.post(f"{base}/train/transmedseg_la",
                                                                json={"val_fraction": 0.999})),
        "train infinite learning rate": (400, lambda: requests.post(
            f"{base}/train/transmedseg_la", data='{"learning_rate": Infinity}',
            headers={"Content-Type": "application/json"})),
        "train seed 2^40": (400, lambda: requests.post(f"{base}/train/transmedseg_la", json={"seed": 2 ** 40})),
        "train huge patch": (400, lambda: requests.post(f"{base}/train/transmedseg_la",
                                                        json={"patch_size": [1024, 1024, 1024]})),
        "2 MiB JSON body": (413, lambda: requests.post(f"{base}/train/transmedseg_la",
                                                       json={"x": "y" * (2 << 20)})),
        "whole-slide inference": (404, lambda: requests.post(f"{base}/infer/wsi/transmedseg_la?image=case_0")),
        "whole-slide inference v2": (404, lambda: requests.post(f"{base}/infer/wsi_v2/transmedseg_la?image=case_0",
                                                                json={"size": [10 ** 6, 10 ** 6]})),
        "logs": (404, lambda: requests.get(f"{base}/logs/")),
        "gpu logs": (404, lambda: requests.get(f"{base}/logs/gpu")),
        "datastore zip": (404, lambda: requests.get(f"{base}/datastore/dataset")),
        "weight upload": (404, lambda: requests.put(f"{base}/model/transmedseg_la",
                                                    files={"file": ("model.pt", b"x")})),
        "reload": (404, lambda: requests.post(f"{base}/reload")),
        "infer with a label input": (400, lambda: requests.post(f"{base}/infer/transmedseg_la?image=nosuch",
                                                                files={"label": ("x.bin", b"\0" * 10)})),
        "unknown checksum": (400, lambda: requests.get(f"{base}/datastore/image?image=case_0&check_sum=FOO:x")),
        "DICOM SEG output": (400, lambda: requests.post(f"{base}/infer/transmedseg_la?image=case_0&output=dicom_seg")),
        "session upload": (404, lambda: requests.put(f"{base}/session/", files={"files": ("x.nii.gz", b"x")})),
        "DICOMweb proxy": (404, lambda: requests.post(f"{base}/proxy/dicom/x", data=b"x" * 1000)),
        # a task request travels on its process's command line (Linux: 128 KiB per argument)
        "scoring 40 KiB body": (413, lambda: requests.post(f"{base}/scoring/transmedseg_la_uncertainty",
                                                           json={"x": "A" * 40000})),
        "train 140 KB in another section": (413, lambda: requests.post(
            f"{base}/train/transmedseg_la", json={"fixed_dynamic_pl_la": {"x": "A" * 140000}})),
        # MONAI Label lays the body over the request: a body naming another model or method would run that one
        "train model in the body": (400, lambda: requests.post(f"{base}/train/transmedseg_la",
                                                               json={"model": "fixed_dynamic_pl_la"})),
        "train-all model in the body": (400, lambda: requests.post(f"{base}/train/", json={"model": "x"})),
        "train-all section naming another": (400, lambda: requests.post(
            f"{base}/train/", json={"transmedseg_la": {"model": "fixed_dynamic_pl_la"}})),
        "scoring method in the body": (400, lambda: requests.post(f"{base}/scoring/transmedseg_la_uncertainty",
                                                                  json={"method": "random"})),
        "batch model in the body": (400, lambda: requests.post(f"{base}/batch/infer/transmedseg_la",
                                                               json={"model": "other"})),
        # bodies and fields nested past Python's recursion limit
        "deeply nested train body": (400, lambda: requests.post(
            f"{base}/train/transmedseg_la", data="[" * 20000, headers={"Content-Type": "application/json"})),
        "deeply nested scoring body": (400, lambda: requests.post(
            f"{base}/scoring/transmedseg_la_uncertainty", data='{"a":' + "[" * 20000,
            headers={"Content-Type": "application/json"})),
        "deeply nested params field": (400, lambda: requests.post(f"{base}/infer/transmedseg_la?image=case_0",
                                                                  data={"params": "[" * 100000})),
        "file name of 300 bytes": (400, lambda: requests.put(
            f"{base}/datastore/image?image=longname", files={"file": ("a" + ".v" * 150 + ".nii.gz", b"x")})),
        "session id": (400, lambda: requests.post(f"{base}/infer/transmedseg_la?session_id=abc")),
        "OHIF files": (404, lambda: requests.get(f"{base}/ohif/index.html")),
        "OHIF static files": (404, lambda: requests.get(f"{base}/static/ohif/index.html")),
    }
    for name, (status, call) in refused.items():
        r = call()
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:300]}"
        assert r.json().get("detail"), f"{name}: no message"
    assert {kind: task_count(kind) for kind in counts} == counts  # nothing was queued, not even to fail
    # scoring runs on its own after start-up; none of its tasks carries a client's folder
    scorings = requests.get(f"{base}/scoring/?all=true").json()
    assert all(t.get("request", {}).get("bundle_path") != "/tmp" for t in (scorings if isinstance(scorings, list)
                                                                            else [scorings]))
    assert (final.read_bytes() if final.exists() else None) == final_before  # no annotator's label replaced


def test_uploads_too_large_on_the_models_grid_or_forged_are_refused(server):
    """An upload is judged by what the served model would allocate: 64³ voxels of 20 mm are 2048³ at the
    network's 0.625 mm. A forged data offset, an RGB volume and non-positive voxel sizes are refused by name,
    before the voxels are decoded."""
    base, pid = server["base"], server["pid"]
    before = _rss_kb(pid)
    coarse = _nifti_bytes(np.zeros((64, 64, 64), np.uint8), np.diag([20.0, 20.0, 20.0, 1.0]))
    r = _upload(base, "coarse", coarse)
    assert r.status_code == 413 and "resampled" in r.json()["detail"] and "max_voxels" in r.json()["detail"], r.text
    r = requests.post(f"{base}/infer/transmedseg_la", files={"file": ("coarse.nii.gz", coarse)})
    assert r.status_code == 409, r.text  # no weights: answered before the image is read (see above)
    header = nib.Nifti1Header()
    header.set_data_shape((24, 24, 16))
    header.set_data_dtype(np.uint8)
    header.set_data_offset(10 ** 15)
    forged = gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * (24 * 24 * 16), compresslevel=1)
    r = _upload(base, "forged", forged)
    assert r.status_code == 400 and "vox_offset" in r.json()["detail"], r.text
    rgb = np.zeros((24, 24, 16), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    r = _upload(base, "rgb", _nifti_bytes(rgb))
    assert r.status_code == 400 and "RGB" in r.json()["detail"], r.text
    img = nib.Nifti1Image(np.zeros((24, 24, 16), np.float32), np.eye(4))
    img.header["srow_y"][1] = np.inf  # the affine's voxel size along y (nibabel turns a 0 pixdim into 1)
    img.header.set_data_offset(352)
    r = _upload(base, "flat",
                gzip.compress(img.header.binaryblock + b"\0" * 4 + np.zeros((24, 24, 16), np.float32).tobytes()))
    assert r.status_code == 400 and "voxel sizes" in r.json()["detail"], r.text
    # voxel sizes of 0.625 in the header, but an affine (sform) of 20 mm: resampling follows the affine
    sform = nib.Nifti1Image(np.zeros((64, 64, 64), np.uint8), np.diag([20.0, 20.0, 20.0, 1.0]))
    sform.header.set_zooms((0.625, 0.625, 0.625))
    assert sform.header.get_zooms() == (0.625, 0.625, 0.625)
    r = _upload(base, "sform", gzip.compress(sform.to_bytes(), compresslevel=1))
    assert r.status_code == 413 and "resampled" in r.json()["detail"], r.text
    assert _rss_kb(pid) - before < 150_000  # kB: nothing near the 2048³ it would resample to was allocated
    for image_id in ("coarse", "forged", "rgb", "flat", "sform"):
        assert image_id not in requests.get(f"{base}/datastore/?output=all").json()["objects"]


def test_image_info_cannot_break_active_learning_or_grow_without_bound(server):
    """Info keys the server writes are refused, ``strategy`` keeps its shape, and an image's info is bounded; the
    random strategy keeps answering."""
    base = server["base"]
    cases = {
        "strategy not an object": ({"strategy": 5}, 400),
        "a server key": ({"name": "x.nii.gz"}, 400),
        "too much": ({"notes": "n" * (300 * 1024)}, 413),
    }
    for name, (info, status) in cases.items():
        r = requests.put(f"{base}/datastore/image/info?image=case_0", data={"info": json.dumps(info)})
        assert r.status_code == status, f"{name}: {r.status_code} {r.text[:200]}"
    r = requests.put(f"{base}/datastore/image/info?image=case_0", data={"info": json.dumps({"notes": "fine"})})
    assert r.status_code == 200, r.text
    r = requests.post(f"{base}/activelearning/random", json={"client_id": "slicer"})
    assert r.status_code == 200 and r.json().get("id"), r.text


def test_finished_tasks_are_forgotten_beyond_a_bound(monkeypatch):
    """MONAI Label keeps every task with its request; the app keeps the newest finished ones only, and never a
    queued or running one."""
    from monailabel.utils.async_tasks import utils as async_tasks

    from lib.task_queue import forget_finished

    tasks = [{"id": i, "status": "DONE"} for i in range(8)] + [{"id": 8, "status": "RUNNING"},
                                                               {"id": 9, "status": "SUBMITTED"}]
    tasks[2]["status"] = "ERROR"
    monkeypatch.setitem(async_tasks.background_tasks, "train", tasks)
    held = async_tasks.background_tasks["train"]
    assert forget_finished("train", keep=3) == 5
    assert [t["id"] for t in held] == [5, 6, 7, 8, 9] and async_tasks.background_tasks["train"] is held
    assert forget_finished("train", keep=3) == 0 and forget_finished("scoring") == 0


def test_requests_that_queue_tasks_are_bounded_and_counted_under_one_lock(monkeypatch):
    """``?enqueue=true`` and ``POST /train/`` (every model) answer 429 once ``max_queued`` tasks wait; run_sync
    spellings FastAPI reads as True are refused; a body that is not JSON is passed on unread (FastAPI refuses it)."""
    import asyncio

    from lib import task_queue
    from lib.middleware import TaskRequestCheck

    queued: list[dict] = []
    monkeypatch.setattr(task_queue, "pending", lambda method: queued)
    monkeypatch.setattr(task_queue, "forget_finished", lambda method: 0)
    reached = []

    async def app(scope, receive, send):  # stands for MONAI Label: it queues a task
        queued.append({"status": "SUBMITTED"})
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    check = TaskRequestCheck(app, max_queued=2)

    async def call(path, query=b"", body=b"{}", ctype=b"application/json"):
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "POST", "path": path, "query_string": query,
                 "headers": [(b"content-type", ctype)]}
        await check(scope, receive, send)
        return sent[0]["status"]

    async def scenario():
        together = await asyncio.gather(*(call("/train/") for _ in range(4)))  # arriving together
        return together, [await call("/train/m", b"enqueue=true"), await call("/train/m"),
                          await call("/batch/infer/m", b"run_sync=T"),
                          await call("/scoring/", b"", b"--x", b"text/plain")]

    together, later = asyncio.run(scenario())
    assert sorted(together) == [200, 200, 429, 429]
    assert later == [429, 200, 400, 429]  # a plain POST /train/<model> does not queue; run_sync=T refused
    # FastAPI reads the last value: run_sync=1&run_sync=0 queues, so it is counted (and refused when full)
    assert asyncio.run(call("/scoring/", b"run_sync=1&run_sync=0")) == 429
    assert len(queued) == 3 and reached.count("/train/") == 2


def test_queue_locks_work_across_the_worker_threads_own_event_loops(monkeypatch):
    """Each request runs in a worker thread with its own event loop: a request that waits for the queue lock is
    served once the holder (another thread) is done, one that waits too long gets a 503, and a second synchronous
    scoring gets a 429 while one runs. (An ``asyncio.Lock`` here left the waiter hanging, then answered 500.)"""
    import asyncio
    import threading

    from lib import task_queue
    from lib.middleware import TaskRequestCheck
    from lib.middleware import task_requests

    monkeypatch.setattr(task_queue, "pending", lambda method: [])
    monkeypatch.setattr(task_queue, "forget_finished", lambda method: 0)
    monkeypatch.setattr(task_requests, "LOCK_WAIT_S", 1.0)
    release = {"/train/": threading.Event(), "/scoring/m": threading.Event()}
    entered = {k: threading.Event() for k in release}

    async def app(scope, receive, send):  # the first request of each path holds its lock until released
        if scope["path"] in release and not entered[scope["path"]].is_set():
            entered[scope["path"]].set()
            while not release[scope["path"]].is_set():
                await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    check = TaskRequestCheck(app, max_queued=4)
    statuses: dict[str, list[int]] = {}

    def call(name, path, query=b""):  # one request in a thread of its own, as WorkerThreads serves it
        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.setdefault(name, []).append(message["status"])

        scope = {"type": "http", "method": "POST", "path": path, "query_string": query,
                 "headers": [(b"content-type", b"application/json")]}
        thread = threading.Thread(target=lambda: asyncio.run(check(scope, receive, send)), daemon=True)
        thread.start()
        return thread

    a = call("a", "/train/")
    assert entered["/train/"].wait(5)
    b = call("b", "/train/")  # waits for a's lock, in another loop
    time.sleep(0.3)
    release["/train/"].set()
    a.join(5), b.join(5)
    assert statuses == {"a": [200], "b": [200]}
    entered["/train/"].clear(), release["/train/"].clear()
    a = call("c", "/train/")
    assert entered["/train/"].wait(5)
    call("d", "/train/").join(5)  # the lock is held past LOCK_WAIT_S
    assert statuses["d"] == [503]
    release["/train/"].set(), a.join(5)
    s1 = call("s1", "/scoring/m", b"run_sync=true")
    assert entered["/scoring/m"].wait(5)
    call("s2", "/scoring/m", b"run_sync=true").join(5)
    release["/scoring/m"].set(), s1.join(5)
    call("s3", "/scoring/m", b"run_sync=true").join(5)
    assert (statuses["c"], statuses["s1"], statuses["s2"], statuses["s3"]) == ([200], [200], [429], [200])
    # a queueing request's body, of any type, is read before the lock: one sent slowly does not hold it
    stalled = threading.Event()

    def stalled_body():
        async def receive():
            stalled.set()
            await asyncio.sleep(3)
            return {"type": "http.request", "body": b"x", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/train/", "query_string": b"",
                 "headers": [(b"content-type", b"text/plain")]}

        async def send(message):
            pass
        asyncio.run(check(scope, receive, send))

    slow = threading.Thread(target=stalled_body, daemon=True)
    slow.start()
    assert stalled.wait(5)
    call("g", "/train/").join(5)
    assert statuses["g"] == [200]
    slow.join(5)


def test_a_synchronous_scoring_frees_its_turn_once_its_answer_is_sent(monkeypatch):
    """The app coroutine of a ``run_sync`` scoring returns only after the client has the whole answer (the endpoint
    runs in a worker thread), so a client's next ``run_sync``, sent as soon as the answer arrived, must not find the
    turn still taken. Here the first call holds its app after its last send: the second is served (it got a 429
    when the turn was freed on return). A turn whose app fails before answering is freed as well."""
    import asyncio
    import threading

    from lib import task_queue
    from lib.middleware import TaskRequestCheck

    monkeypatch.setattr(task_queue, "forget_finished", lambda method: 0)
    answered, finish = threading.Event(), threading.Event()

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{", "more_body": True})
        assert check._sync_scoring.locked()  # not yet: the answer is not complete
        await send({"type": "http.response.body", "body": b"}"})
        if scope["path"] == "/scoring/slow":
            answered.set()
            while not finish.is_set():
                await asyncio.sleep(0.01)
        if scope["path"] == "/scoring/fails":
            raise RuntimeError("after the answer")

    async def failing(scope, receive, send):
        raise RuntimeError("before any answer")

    check = TaskRequestCheck(app)
    statuses: list[int] = []

    async def call(path, target=None):
        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        scope = {"type": "http", "method": "POST", "path": path, "query_string": b"run_sync=true",
                 "headers": [(b"content-type", b"application/json")]}
        await (target or check)(scope, receive, send)

    first = threading.Thread(target=lambda: asyncio.run(call("/scoring/slow")), daemon=True)
    first.start()
    assert answered.wait(5)
    asyncio.run(call("/scoring/m"))  # the first still runs its app, but its answer is out
    finish.set(), first.join(5)
    assert statuses == [200, 200]
    with pytest.raises(RuntimeError, match="after the answer"):
        asyncio.run(call("/scoring/fails"))
    broken = TaskRequestCheck(failing)
    for _ in range(2):  # the second would get a 429 if the first had kept the turn
        with pytest.raises(RuntimeError, match="before any answer"):
            asyncio.run(call("/scoring/m", broken))
    assert not check._sync_scoring.locked() and not broken._sync_scoring.locked()
    asyncio.run(call("/scoring/m"))
    assert statuses == [200, 200, 200, 200]


def test_a_root_path_does_not_let_requests_past_the_path_checks():
    """``monailabel start_server --root_path /api`` puts ``/api`` in front of every request's path, and the router
    serves ``/api/logs`` as ``/logs``: the path checks must judge the routed path, or the prefix walks past them."""
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from lib.middleware import DisabledEndpoints, TaskRequestCheck, TrainRequestCheck
    from lib.middleware.request_parts import path_parts, route_path

    async def ok(request):
        return JSONResponse({"served": request.url.path})

    def refuse(model, params):
        raise ValueError("bad train parameters")

    routes = [Route("/logs/", ok), Route("/train/{model}", ok, methods=["POST"]),
              Route("/batch/infer/{model}", ok, methods=["POST"])]
    app = DisabledEndpoints(TrainRequestCheck(TaskRequestCheck(Starlette(routes=routes)), check=refuse))
    for prefix, root in (("/api", "/api"), ("/api", "/api/"), ("", "/api")):
        client = TestClient(app, root_path=root)
        assert client.get(f"{prefix}/logs/").status_code == 404, (prefix, root)
        assert client.post(f"{prefix}/train/m", json={}).json() == {"detail": "bad train parameters"}
        r = client.post(f"{prefix}/batch/infer/m?run_sync=true", json={})
        assert r.status_code == 400 and "run_sync" in r.json()["detail"], (prefix, root, r.text)
    # a path that only starts with the root path's letters is not under it
    assert route_path({"path": "/apix/logs", "root_path": "/api"}) == "/apix/logs"
    assert path_parts({"path": "/api", "root_path": "/api"}) == [""]


def _asgi_call(app, scope_extra: dict, chunks: list, read_response: bool = True):
    """Run one request through the ASGI ``app``: the body ``chunks`` (None: the client stalls forever there);
    returns the messages sent. ``read_response`` False: the client never takes the response (send hangs)."""
    import asyncio

    sent: list = []
    queue = list(chunks)

    async def receive():
        if not queue:
            await asyncio.sleep(3600)  # the disconnect never comes
        chunk = queue.pop(0)
        if chunk is None:
            await asyncio.sleep(3600)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        if not read_response and message["type"] == "http.response.body":
            await asyncio.sleep(3600)
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/infer/m", "query_string": b"",
             "headers": [(b"transfer-encoding", b"chunked")], **scope_extra}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 30))
    return sent


def test_slow_clients_are_cut_off_and_the_server_waits_for_nobody():
    """A body that pauses longer than ``client_idle_s`` or takes longer than ``max_body_s`` in all gets a 408
    naming the key; a response the client does not take is dropped after ``client_idle_s``."""
    import asyncio

    from lib.middleware import SlowClients

    async def endpoint(scope, receive, send):  # reads the whole body, then answers with it
        body, more = b"", True
        while more:
            m = await receive()
            body, more = body + m.get("body", b""), m.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    def status(sent):
        return next(m["status"] for m in sent if m["type"] == "http.response.start")

    # (a client that is never cut off would hang the call: _asgi_call gives up after 30 s)
    sent = _asgi_call(SlowClients(endpoint, idle_s=0.2, body_s=5), {}, [b"a", None])
    assert status(sent) == 408 and b"client_idle_s" in sent[-1]["body"]  # not max_body_s: cut at the pause

    class Trickle:  # a chunk every 0.1 s, forever: never idle, but never done
        def __init__(self):
            self.n = 0

        async def __call__(self):
            await asyncio.sleep(0.1)
            self.n += 1
            return {"type": "http.request", "body": b"x", "more_body": True}

    async def trickled():
        sent = []

        async def send(m):
            sent.append(m)
        scope = {"type": "http", "method": "PUT", "path": "/datastore/image", "headers": [(b"content-length", b"99")]}
        await SlowClients(endpoint, idle_s=1, body_s=0.5)(scope, Trickle(), send)
        await SlowClients(endpoint, idle_s=0.3, body_s=60, min_rate=1000)(scope, Trickle(), send)
        return sent

    sent = asyncio.run(trickled())
    assert status(sent) == 408 and b"max_body_s" in sent[1]["body"]
    assert sent[2]["status"] == 408 and b"min_client_rate_kbs" in sent[3]["body"]  # 10 bytes/s: too slow

    async def late_reader(scope, receive, send):  # computes before it reads (the clock starts at the first read)
        await asyncio.sleep(0.4)
        await endpoint(scope, receive, send)

    assert status(_asgi_call(SlowClients(late_reader, idle_s=0.2, body_s=0.3), {}, [b"o", b"k"])) == 200

    async def bodiless(scope, receive, send):  # a request without a body, answered after 0.4 s of work, which
        await asyncio.sleep(0.4)  # then listens for the disconnect while it sends (as a file response does)
        assert (await receive())["body"] == b""
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"file"})

    sent = _asgi_call(SlowClients(bodiless, idle_s=0.2, body_s=0.3), {"headers": []}, [b""])
    assert status(sent) == 200 and sent[-1]["body"] == b"file"
    # a response the client never takes: dropped, no exception (a send that waited for the client would hang)
    sent = _asgi_call(SlowClients(endpoint, idle_s=0.2, body_s=5), {}, [b"ok"], read_response=False)
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert status(_asgi_call(SlowClients(endpoint, idle_s=0.2, body_s=5), {}, [b"o", b"k"])) == 200


def test_a_slow_upload_holds_a_thread_never_a_compute_slot():
    """The compute gate is taken once the whole body is in, so a stalled upload cannot keep inference from others;
    a request that finds every worker thread busy gets a 503 after the gate's wait instead of queueing forever."""
    import asyncio
    import threading

    from lib.middleware import ComputeGate, WorkerThreads

    running = []

    async def endpoint(scope, receive, send):
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        running.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    gate = ComputeGate(slots=1, wait_s=0.5)
    app = WorkerThreads(endpoint, gate, threads=2)

    async def scenario():
        stalled = asyncio.ensure_future(app(*_request("/infer/a", [b"a", None])))
        await asyncio.sleep(0.3)
        second = await app(*_request("/infer/b", [b"b"]))
        third = await asyncio.wait_for(app(*_request("/infer/c", [b"c"])), 5)
        busy = []  # both threads taken: one stalled, one held below
        hold = threading.Event()

        async def held(scope, receive, send):
            await asyncio.get_running_loop().run_in_executor(None, hold.wait, 5)
        app.app = held
        held_call = asyncio.ensure_future(app(*_request("/datastore/x", [b""])))
        await asyncio.sleep(0.3)
        await app({"type": "http", "method": "GET", "path": "/datastore/y", "headers": []}, _none, _collect(busy))
        hold.set()
        await held_call
        stalled.cancel()
        return second, third, busy

    def _request(path, chunks):
        queue = list(chunks)

        async def receive():
            chunk = queue.pop(0) if queue else None
            if chunk is None:
                await asyncio.sleep(3600)
            return {"type": "http.request", "body": chunk, "more_body": bool(queue)}
        upload = [(b"content-type", b"multipart/form-data; boundary=x")]  # an upload, as Slicer sends it
        return {"type": "http", "method": "POST", "path": path, "headers": upload}, receive, _collect([])

    async def _none():
        await asyncio.sleep(3600)

    def _collect(into):
        async def send(m):
            into.append(m)
        return send

    _, _, busy = asyncio.run(scenario())
    assert running == ["/infer/b", "/infer/c"]  # served while /infer/a's upload stalls
    assert busy[0]["status"] == 503 and b"worker threads" in busy[1]["body"]

    # a request that computes without reading its body (no form: no body, or JSON) takes its slot first
    def computes(scope, receive, send):
        async def run(scope, receive, send):
            time.sleep(0.5)  # blocking work in the worker thread, the body never read
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return run(scope, receive, send)

    async def together(ctype):
        app = WorkerThreads(computes, ComputeGate(slots=1, wait_s=0.1), threads=4)
        results = [[] for _ in range(3)]
        headers = [(b"content-type", ctype)] if ctype else []
        await asyncio.gather(*(app({"type": "http", "method": "POST", "path": "/infer/m", "headers": headers},
                                   _none, _collect(r)) for r in results))
        return sorted(r[0]["status"] for r in results)

    for ctype in (None, b"application/json"):
        assert asyncio.run(together(ctype)) == [200, 503, 503], ctype

    # image and label uploads decode a whole volume: they pass the gate once their body is in; their info does not
    def reads_then_computes(scope, receive, send):
        async def run(scope, receive, send):
            while (await receive()).get("more_body", False):
                pass
            time.sleep(0.5)  # decoding the volume, in the worker thread
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        return run(scope, receive, send)

    def uploads(method, path):
        async def go():
            app = WorkerThreads(reads_then_computes, ComputeGate(slots=1, wait_s=0.1), threads=4)
            results = [[] for _ in range(3)]

            def request(r):
                scope, receive, _ = _request(path, [b"part"])
                return app({**scope, "method": method}, receive, _collect(r))
            await asyncio.gather(*(request(r) for r in results))
            return sorted(r[0]["status"] for r in results)
        return asyncio.run(go())

    for path in ("/datastore/image", "/datastore/label", "/datastore/", "/datastore"):
        assert uploads("PUT", path) == [200, 503, 503], path
    assert uploads("PUT", "/datastore/image/info") == [200, 200, 200]
    assert uploads("GET", "/datastore/image") == [200, 200, 200]
    # a gate that does not wait (infer_wait_s 0) still serves an idle server
    idle = []
    asyncio.run(WorkerThreads(endpoint, ComputeGate(slots=1, wait_s=0), threads=1)(
        *_request("/infer/z", [b"z"])[:2], _collect(idle)))
    assert idle[0]["status"] == 200


def test_a_repeated_content_type_is_read_as_the_endpoint_reads_it():
    """FastAPI reads the first of repeated headers; the checks do too, so a JSON body with a second
    ``Content-Type: multipart/form-data`` is still checked as JSON and capped at 1 MiB."""
    from lib.middleware import BodySizeLimit, TaskRequestCheck
    from lib.middleware.headers import header

    headers = [(b"content-type", b"application/json"), (b"content-type", b"multipart/form-data; boundary=x")]
    assert header({"headers": headers}, b"content-type") == b"application/json"
    assert header({"headers": headers}, b"origin", None) is None

    async def endpoint(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    scope = {"path": "/train/m", "headers": headers}
    sent = _asgi_call(TaskRequestCheck(endpoint), scope, [json.dumps({"bundle_path": "/tmp"}).encode()])
    assert sent[0]["status"] == 400 and b"bundle_path" in sent[1]["body"]
    # a type FastAPI still reads as JSON (it strips \x85 and \xa0 as whitespace) is checked as JSON
    for odd in (b"application/json\x85", b"application/json\xa0; charset=utf-8", b"APPLICATION/JSON"):
        sent = _asgi_call(TaskRequestCheck(endpoint), {"path": "/train/m", "headers": [(b"content-type", odd)]},
                          [json.dumps({"x": "A" * 40000}).encode()])
        assert sent[0]["status"] == 413, odd
    big = scope | {"headers": headers + [(b"content-length", str(2 << 20).encode())]}
    sent = _asgi_call(BodySizeLimit(endpoint, max_bytes=512 << 20), big, [b"x"])
    assert sent[0]["status"] == 413


def test_an_image_id_that_names_a_file_in_the_working_directory_is_read_from_the_datastore(tmp_path, monkeypatch):
    """MONAI Label reads an image id that names a file in the server's working directory as that file; the app
    hands it the datastore's path instead, and still saves the prediction as the ``original`` label when asked."""
    import importlib.util

    from monailabel.interfaces.app import MONAILabelApp

    spec = importlib.util.spec_from_file_location("ssmis_label_main", ROOT / "monailabel_app" / "main.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")  # a file in the working directory, named like an id
    prediction = tmp_path / "prediction.nii.gz"
    prediction.write_bytes(b"label")
    seen, saved = [], []
    monkeypatch.setattr(MONAILabelApp, "infer", lambda self, request, datastore=None: seen.append(request) or {
        "file": str(prediction), "params": {"took": 1}, "label": str(prediction)})

    class Store:
        def get_image_uri(self, image_id):
            return f"/datastore/{image_id}.nii.gz" if image_id == "notes.txt" else ""

        def save_label(self, image_id, filename, tag, info):
            saved.append((image_id, filename, tag, info))
            return image_id

    app = object.__new__(main.SSMISApp)
    app._infers, app.temp_folder = {"m": object()}, None
    result = app.infer({"model": "m", "image": "notes.txt", "save_label": True}, Store())
    assert seen[0]["image"] == "/datastore/notes.txt.nii.gz" and seen[0]["save_label"] is False
    assert saved == [("notes.txt", str(prediction), "original", {"model": "m", "params": {"took": 1}})]
    assert result["label"] == "notes.txt"
    app.infer({"model": "m", "image": "notes.txt"}, Store())
    assert len(saved) == 1  # no save_label: nothing saved


def test_batch_inference_names_each_image_once(monkeypatch):
    """A batch request's ``images`` list is deduplicated (one id 25,000 times was 25,000 inferences) and must hold
    ids; every batch saves to ``original`` with at most ``max_parallel_infer`` workers."""
    import importlib.util

    from monailabel.interfaces.app import MONAILabelApp

    spec = importlib.util.spec_from_file_location("ssmis_label_main_batch", ROOT / "monailabel_app" / "main.py")
    main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(main)
    seen = []
    monkeypatch.setattr(MONAILabelApp, "batch_infer", lambda self, request, datastore=None: seen.append(request) or {})
    app = object.__new__(main.SSMISApp)
    app.gate_size = 2
    app.batch_infer({"model": "m", "images": ["a"] * 25000 + ["b", "a"], "max_workers": 5})
    assert seen[0]["images"] == ["a", "b"] and seen[0]["max_workers"] == 2 and seen[0]["label_tag"] == "original"
    # a list that is not of ids is refused before any task starts (batch inference runs in a task process)
    from lib.middleware.task_requests import _refusal

    assert "images" in _refusal("batch", {"images": [{"id": "a"}]}, 2)
    assert "images" in _refusal("batch", {"images": "everything"}, 2)
    assert (_refusal("batch", {"images": ["a", "b"]}, 2) is None
            and _refusal("batch", {"images": "unlabeled"}, 2) is None)


def test_queued_tasks_that_never_started_stop_counting_as_queued(monkeypatch):
    """A task whose process failed to start stays SUBMITTED in MONAI Label for good; it is marked ERROR once a
    later task has started (the executor runs them in order) or once it is old and its executor is idle."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import datetime, timedelta

    from monailabel.utils.async_tasks import utils as async_tasks

    from lib.task_queue import pending

    def ts(ago_s):
        return (datetime.today() - timedelta(seconds=ago_s)).strftime("%Y-%m-%d %H:%M:%S")

    skipped = {"id": "a", "status": "SUBMITTED", "start_ts": ts(5)}
    running = {"id": "b", "status": "RUNNING", "start_ts": ts(4)}
    waiting = {"id": "c", "status": "SUBMITTED", "start_ts": ts(3)}
    monkeypatch.setitem(async_tasks.background_tasks, "scoring", [skipped, running, waiting])
    monkeypatch.setitem(async_tasks.background_processes, "scoring", {"b": object()})
    monkeypatch.setitem(async_tasks.background_executors, "scoring", ThreadPoolExecutor(max_workers=1))
    assert [t["id"] for t in pending("scoring")] == ["b", "c"]
    assert skipped["status"] == "ERROR" and "did not start" in skipped["details"][0]
    # nothing runs and nothing waits in the executor: an old queued task failed, a fresh one may still start
    running["status"] = "DONE"
    old, fresh = ({"id": "d", "status": "SUBMITTED", "start_ts": ts(120)},
                  {"id": "e", "status": "SUBMITTED", "start_ts": ts(1)})
    monkeypatch.setitem(async_tasks.background_tasks, "scoring", [running, old, fresh])
    monkeypatch.setitem(async_tasks.background_processes, "scoring", {})
    assert [t["id"] for t in pending("scoring")] == ["e"] and old["status"] == "ERROR"


def test_remote_clients_get_no_server_paths(tmp_path):
    """MONAI Label answers with absolute server paths (an image's info, the next sample, the training list, file
    names in errors). A client on another machine gets them relative to the studies folder or with the folder named
    by a stand-in, and without the ``path`` entries (Slicer then downloads the image); a local client gets them as
    they are, and images pass unchanged."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from starlette.testclient import TestClient

    from lib import errors
    from lib.middleware import install_middleware

    studies, models = tmp_path / "studies", tmp_path / "model"
    answer = {"id": "case_0", "path": f"{studies}/case_0.nii.gz", "ts": 1,
              "train": [{"image": f"{studies}/case_0.nii.gz", "label": f"{studies}/labels/final/case_0.nii.gz"}],
              "detail": f"cannot read {models}/transmedseg_la/model.pt or {studies}"}
    fastapi_app = FastAPI()
    fastapi_app.add_api_route("/activelearning/random", lambda: answer, methods=["POST"])
    fastapi_app.add_api_route("/datastore/image", lambda: Response(b'{"path": "/x"}', media_type="application/x-nifti"))
    errors.install_handlers(fastapi_app)
    install_middleware(fastapi_app, loopback_only=False, server_roots={str(studies): "", str(models): "<model_dir>"})
    remote = TestClient(fastapi_app, client=("192.0.2.7", 50000)).post("/activelearning/random").json()
    assert remote == {"id": "case_0", "ts": 1,
                      "train": [{"image": "case_0.nii.gz", "label": "labels/final/case_0.nii.gz"}],
                      "detail": "cannot read <model_dir>/transmedseg_la/model.pt or ."}
    assert str(tmp_path) not in json.dumps(remote)
    local = TestClient(fastapi_app, client=("127.0.0.1", 50000))
    assert local.post("/activelearning/random").json() == answer
    image = TestClient(fastapi_app, client=("192.0.2.7", 50000)).get("/datastore/image")
    assert image.content == b'{"path": "/x"}'
    from lib.middleware import hide_paths  # a root is replaced only where a path starts with it

    assert hide_paths(["/mnt/data/x", "/database/y", "/data/z", "in /data."], {"/data": ""}) == [
        "/mnt/data/x", "/database/y", "z", "in .."]
    # file:// URIs and keys are rewritten too; a URI of a folder outside the roots is left
    assert hide_paths({"/data/a.nii.gz": "file:///data/b", "c": "file:///mnt/data/c"}, {"/data": "<s>"}) == {
        "<s>/a.nii.gz": "<s>/b", "c": "file:///mnt/data/c"}
