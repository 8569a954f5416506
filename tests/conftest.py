"""Shared fixtures: tiny synthetic datasets and a helper to run bundle commands."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUNDLES = ROOT / "bundles"

# a tiny network and patch so a bundle run takes seconds on 2 CPU cores
TINY = [
    "--backbone_def#_target_", "BasicUNet",
    "--backbone_def#features", "[4, 4, 8, 8, 16, 4]",
    "--backbone_def#dropout", "0.0",  # the V-Net's training dropout would reach BasicUNet's every block
    "--patch_size", "[32, 32, 24]",
    "--batch_size", "2",
    "--device", "$torch.device('cpu')",
    "--amp", "False",
]


def configs(bundle: str, *names: str) -> str:
    """A ``--config_file`` value merging ``names`` of a bundle: each shared config, then the bundle's own."""
    from ssmis.bundle.layout import config_files

    return repr(config_files(BUNDLES / bundle, *names))


def config_list(bundle: str, *names: str) -> list[str]:
    """The files of :func:`configs`, for ``ConfigParser.read_config``."""
    from ssmis.bundle.layout import config_files

    return config_files(BUNDLES / bundle, *names)


def run_bundle(bundle: str, names: list[str], *overrides: str, timeout: int = 600, **kw) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle run`` on a bundle's configs; fail the test with its output if it fails."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs(bundle, *names),
           "--bundle_root", str(BUNDLES / bundle), "--meta_file", str(BUNDLES / bundle / "configs" / "metadata.json"),
           *overrides]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, **kw)
    if p.returncode != 0:
        pytest.fail(f"bundle command failed ({p.returncode}):\n{' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


@pytest.fixture(scope="session")
def synthetic_3d(tmp_path_factory) -> Path:
    from ssmis.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("syn3d") / "data", dims=3, classes=2, cases=8,
                                  labeled=4, val=2, size=32)


# under pytest-xdist (make test: 2 workers on 2 cores) each worker and the processes its tests start take one thread
THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"
if THREADS == "1":
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", THREADS))


def tb_scalars(log_dir: Path, tag: str) -> list[tuple[int, float]]:
    """``(step, value)`` of a TensorBoard scalar in a run's ``logs/``, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = []
    for ev in sorted(log_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(ev))
        acc.Reload()
        if tag in acc.Tags()["scalars"]:
            out += [(s.step, s.value) for s in acc.Scalars(tag)]
    return sorted(out)
