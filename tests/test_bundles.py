"""Every LA bundle end to end on tiny synthetic data: train, evaluate, infer, DDP; resume for supervised_la."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import BUNDLES, ROOT, TINY, configs, run_bundle, tb_scalars

pytestmark = pytest.mark.slow


BUNDLE_NAMES = ["supervised_la", "mean_teacher_la", "transmedseg_la", "fixed_dynamic_pl_la"]
LOSS_TAG = {"supervised_la": "loss", "mean_teacher_la": "loss", "transmedseg_la": "loss",
            "fixed_dynamic_pl_la": "loss"}
# bundle-specific overrides that fit the tiny network of conftest.TINY (bottleneck "down_4" with 16 channels)
EXTRA = {"transmedseg_la": ["--graph_layer", "down_4", "--graph_channels", "16", "--pretrain_iterations", "20",
                            "--lr_step_iterations", "1000"],
         "fixed_dynamic_pl_la": ["--max_shift", "[4, 4, 4]"]}
# iterations and validation interval of the short training run (co-training costs ~6 forward passes a step)
ITERS = {"fixed_dynamic_pl_la": (40, 20)}


@pytest.fixture(scope="module", params=BUNDLE_NAMES)
def bundle(request) -> str:
    return request.param


@pytest.fixture(scope="session")
def _trained_runs() -> dict[str, Path]:
    """Each bundle's short training run, made once per session of each xdist worker that needs it: a module-scoped
    fixture would be torn down and made again whenever a worker runs another module's test in between. The tests of
    one bundle may run on both workers, and then each trains it once: xdist's ``--dist loadgroup`` split a marked
    group over both workers in a check with pytest 9.2 and pytest-xdist 3.8."""
    return {}


@pytest.fixture
def trained(bundle, synthetic_3d, tmp_path_factory, _trained_runs) -> Path:
    if bundle not in _trained_runs:
        out = tmp_path_factory.mktemp(bundle) / "run"
        n, val = ITERS.get(bundle, (60, 30))
        run_bundle(bundle, ["train.yaml"], "--dataset_dir", str(synthetic_3d), "--output_dir", str(out),
                   "--num_iterations", str(n), "--val_interval", str(val), "--learning_rate", "0.05", *TINY,
                   *EXTRA.get(bundle, []), timeout=1500)
        _trained_runs[bundle] = out
    return _trained_runs[bundle]


def test_training_lowers_loss_and_writes_checkpoint(bundle, trained):
    n, val = ITERS.get(bundle, (60, 30))
    losses = [v for _, v in tb_scalars(trained / "logs", LOSS_TAG[bundle])]
    assert len(losses) == n
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10]), losses
    if bundle == "mean_teacher_la":  # every loss term and the unlabelled weight are logged each iteration
        weights = [v for _, v in tb_scalars(trained / "logs", "weight/unlabeled")]
        assert len(weights) == 60 and weights == sorted(weights) and weights[-1] > weights[0]
        assert len(tb_scalars(trained / "logs", "loss/sup")) == 60
    if bundle == "fixed_dynamic_pl_la":  # both networks' losses are logged separately, and both fall
        for tag in ("loss/sup1", "loss/sup2"):
            v = [x for _, x in tb_scalars(trained / "logs", tag)]
            assert np.mean(v[-10:]) < 0.8 * np.mean(v[:10]), (tag, v)
        for tag in ("loss/fix1", "loss/fix2", "loss/dyn1", "loss/dyn2", "weight/unlabeled"):
            assert len(tb_scalars(trained / "logs", tag)) == n, tag
        ckpt = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
        assert any(k.startswith("nets.0.") for k in ckpt) and any(k.startswith("nets.1.") for k in ckpt)
    if bundle == "transmedseg_la":  # self-training terms and TSA diagnostics from iteration 21 on
        for tag in ("loss/graph", "loss/tsa", "tsa/lambda", "tsa/cond_class1", "pseudo/entropy"):
            assert len(tb_scalars(trained / "logs", tag)) == 40, tag
        assert len(tb_scalars(trained / "logs", "loss/bcp")) == 60
    dice = tb_scalars(trained / "logs", "val_mean_dice")
    assert [s for s, _ in dice] == [val, n]  # validation every val_interval, x axis in iterations
    best = torch.load(trained / "models" / "model_best.pt", map_location="cpu", weights_only=True)
    assert "model" in best and best["best_metric"] == pytest.approx(max(v for _, v in dice), abs=1e-6)
    ckpt = torch.load(trained / "models" / "model.pt", map_location="cpu", weights_only=True)
    # a plain state dict, as the model zoo's export reads it: the network itself loads it
    assert "model" not in ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values())
    state = torch.load(trained / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["trainer"]["iteration"] == n
    assert state["best_model"]["best_metric"] == pytest.approx(best["best_metric"])  # resumable with the run
    assert not list((trained / "models").glob("*.tmp")), "temporary checkpoint left behind"


def test_evaluate_writes_metrics_and_overlays(bundle, trained, synthetic_3d):
    run_bundle(bundle, ["train.yaml", "evaluate.yaml"], "--dataset_dir", str(synthetic_3d),
               "--output_dir", str(trained), *TINY, *EXTRA.get(bundle, []))
    ev = trained / "eval"
    metrics = json.loads((ev / "metrics.json").read_text())
    assert len(metrics["cases"]) == 2
    for key in ("dice", "jaccard", "hd95_vox", "hd95_mm", "asd_vox", "asd_mm"):
        assert key in metrics["mean"]
    # synthetic spacing is 1.25 mm: distances in mm are 1.25 x those in voxels
    assert metrics["mean"]["hd95_mm"] == pytest.approx(1.25 * metrics["mean"]["hd95_vox"], rel=1e-4)
    rows = (ev / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("case,dice") and rows[-1].startswith("mean,")
    assert len(list(ev.glob("overlay_best_*.png"))) == 1 and len(list(ev.glob("overlay_worst_*.png"))) == 1


def test_inference_keeps_geometry(bundle, trained, synthetic_3d, tmp_path):
    src = nib.load(synthetic_3d / "imagesTr" / "case_007.nii.gz")
    # a non-trivial affine: the output must carry it unchanged
    affine = np.array([[0, -1.25, 0, 10], [1.25, 0, 0, -5], [0, 0, 1.25, 3], [0, 0, 0, 1]], float)
    (tmp_path / "imagesTs").mkdir()
    nib.save(nib.Nifti1Image(src.get_fdata().astype(np.float32), affine), tmp_path / "imagesTs" / "scan.nii.gz")
    out = tmp_path / "pred"
    run_bundle(bundle, ["inference.yaml"], "--dataset_dir", str(tmp_path), "--output_dir", str(out),
               "--ckpt_path", str(trained / "models" / "model.pt"),
               *[a for a in TINY if a not in ("--batch_size", "2")])
    seg = nib.load(out / "scan" / "scan_seg.nii.gz")
    assert seg.shape == src.shape
    np.testing.assert_allclose(seg.affine, affine, atol=1e-5)
    assert set(np.unique(seg.get_fdata())) <= {0.0, 1.0}


def test_inference_without_images_says_so(tmp_path):
    p = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file",
                        configs("supervised_la", "inference.yaml"), "--dataset_dir", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode != 0 and p.stderr.strip().splitlines()[-1].startswith("no *.nii.gz images in"), p.stderr[-2000:]


def test_resume_after_kill(synthetic_3d, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs("supervised_la", "train.yaml"),
           "--bundle_root", str(BUNDLES / "supervised_la"), "--dataset_dir", str(synthetic_3d),
           "--output_dir", str(out), "--num_iterations", "400", "--val_interval", "5", *TINY]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                            start_new_session=True)
    state = out / "models" / "checkpoint.pt"
    deadline = time.time() + 300
    while not state.is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, map_location="cpu", weights_only=False)["trainer"]["iteration"]
    assert 0 < saved < 400, saved
    # rerun the same command with a shorter total: it continues from the checkpoint instead of restarting
    total = saved + 10
    cmd[cmd.index("400")] = str(total)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"resumed from {state} at iteration {saved}" in p.stdout + p.stderr
    final = torch.load(state, map_location="cpu", weights_only=False)["trainer"]["iteration"]
    assert final == -(-total // 5) * 5


@pytest.mark.parametrize("name", ["supervised_la", "transmedseg_la", "fixed_dynamic_pl_la"])
def test_ddp_two_cpu_processes(name, synthetic_3d, tmp_path):
    out = tmp_path / "ddp"
    data = synthetic_3d
    if name != "supervised_la":  # a full unlabelled batch per process (BCP pairs B_u = B_l; co-training takes 2)
        from ssmis.data.synthetic import make_synthetic_dataset

        data = make_synthetic_dataset(tmp_path / "syn", dims=3, classes=2, cases=10, labeled=4, val=2, size=32)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",  # a free port
           "-m", "monai.bundle", "run", "--config_file",
           configs(name, "train.yaml", "multi_gpu_train.yaml"), "--bundle_root", str(BUNDLES / name),
           "--dataset_dir", str(data), "--output_dir", str(out),
           "--num_iterations", "6", "--val_interval", "3", *TINY, *EXTRA.get(name, [])]
    if "--pretrain_iterations" in cmd:  # reach self-training: teacher copy, graph head and TSA statistics under DDP
        cmd[cmd.index("--pretrain_iterations") + 1] = "2"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=400, env=env)
    assert p.returncode == 0, (p.stdout[-3000:], p.stderr[-5000:])
    ckpt = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in ckpt)  # saved unwrapped, loadable without DDP
    state = torch.load(out / "models" / "checkpoint.pt", weights_only=False)
    assert state["trainer"]["iteration"] == 6
    if name == "transmedseg_la":  # TSA's statistics reached rank 0's checkpoint under DDP (that they are summed
        # over the processes is test_tsa_plugin.py::test_statistics_are_synchronised_across_processes)
        assert float(state["tsa"]["statistics.source.count"].sum()) > 0
    best = torch.load(out / "models" / "model_best.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") or ".module." in k for k in best["model"])


def test_tsa_plugs_into_mean_teacher_with_one_override(synthetic_3d, tmp_path):
    out = tmp_path / "mt_tsa"
    run_bundle("mean_teacher_la", ["train.yaml", "tsa.yaml"], "--dataset_dir", str(synthetic_3d), "--output_dir",
               str(out), "--num_iterations", "4", "--val_interval", "4", *TINY)
    assert len(tb_scalars(out / "logs", "loss/tsa")) == 4
    state = torch.load(out / "models" / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert "statistics.target.cov" in state["tsa"]  # the memory module is checkpointed


# the exported bundle must run with the packages its metadata names: these are the MONAI Label app's alone
APP_ONLY_MODULES = ("monailabel", "itk", "pydicom", "pynetdicom", "dicomweb_client")
IMPORT_BLOCKER = """
import importlib.abc, sys
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in %r:
            raise ImportError(f"{name} is not among the exported bundle's packages")
sys.meta_path.insert(0, _Block())
"""


def test_exported_zip_runs_inference_outside_the_repository(bundle, trained, synthetic_3d, tmp_path):
    """``python -m ssmis.bundle export``: the zip, unpacked outside the repository, runs its inference.yaml with the
    shipped weights from inside the folder (literal ``bundle_root: .``), without MONAI Label's packages, and
    ``ckpt_export`` reads its plain state dict into a TorchScript network that matches the eager one."""
    import zipfile

    from ssmis.bundle.export import export_bundle

    tiny_net = {"backbone_def#_target_": "BasicUNet", "backbone_def#features": [4, 4, 8, 8, 16, 4]}
    with pytest.raises(ValueError, match="not the weights of this bundle's network_def"):  # the V-Net's: refused
        export_bundle(BUNDLES / bundle, tmp_path / "dist", weights=trained / "models" / "model.pt")
    archive = export_bundle(BUNDLES / bundle, tmp_path / "dist", weights=trained / "models" / "model.pt",
                            network_overrides=tiny_net)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp_path / "unpacked")
    folder = tmp_path / "unpacked" / bundle
    assert (folder / "large_files.yml").is_file() and "sha256" in (folder / "large_files.yml").read_text()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(IMPORT_BLOCKER % (APP_ONLY_MODULES,))
    env = dict(os.environ, PYTHONPATH=str(tmp_path / "site"))
    (tmp_path / "data" / "imagesTs").mkdir(parents=True)
    shutil.copy(synthetic_3d / "imagesTr" / "case_007.nii.gz", tmp_path / "data" / "imagesTs")
    tiny = [a for a in TINY if a not in ("--batch_size", "2")]
    p = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", "configs/inference.yaml",
                        "--dataset_dir", str(tmp_path / "data"), *tiny], cwd=folder, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, (p.stdout[-2000:], p.stderr[-4000:])
    seg = nib.load(folder / "eval" / "case_007" / "case_007_seg.nii.gz")
    assert seg.shape == nib.load(synthetic_3d / "imagesTr" / "case_007.nii.gz").shape
    ts = tmp_path / "model.ts"
    p = subprocess.run([sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(ts),
                        "--ckpt_file", "models/model.pt", "--meta_file", "configs/metadata.json",
                        "--config_file", "configs/inference.yaml", *tiny], cwd=folder, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.yaml"))
    parser["backbone_def#_target_"], parser["backbone_def#features"] = "BasicUNet", [4, 4, 8, 8, 16, 4]
    net = parser.get_parsed_content("network_def").eval()
    net.load_state_dict(torch.load(folder / "models" / "model.pt", map_location="cpu", weights_only=True))
    scripted = torch.jit.load(str(ts))
    x = torch.randn(1, 1, 32, 32, 24)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=1e-4, atol=1e-4)
    if bundle == "fixed_dynamic_pl_la":  # the pair: both networks are in the export
        names = {n for n, _ in scripted.named_parameters()}
        assert any(n.startswith("nets.0.") for n in names) and any(n.startswith("nets.1.") for n in names)
