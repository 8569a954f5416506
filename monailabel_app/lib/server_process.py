"""Start and stop this MONAI Label app as a real server on 127.0.0.1, in a subprocess: for the app's tests, its
benchmarks and scripts (``sys.path`` holding ``monailabel_app``, then ``from lib.server_process import ...``).

One launcher keeps the benchmarks and the test suite on the same command line and environment.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

APP_DIR = Path(__file__).resolve().parents[1]  # monailabel_app/

__all__ = ["free_port", "server_command", "start_server", "stop_server"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(studies: Path, port: int, conf: dict[str, str]) -> list[str]:
    """``monailabel start_server`` for ``monailabel_app`` on ``studies``, with one ``--conf key value`` per item.

    It runs ``python -m monailabel.main`` with this interpreter, not the ``monailabel`` script: that script runs
    whichever ``python`` is first on PATH, which is not this environment's unless it is activated.
    """
    cmd = [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR),
           "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port)]
    for key, value in conf.items():
        cmd += ["--conf", key, str(value)]
    return cmd


def start_server(studies: Path, conf: dict[str, str], log: Path, env: dict[str, str] | None = None,
                 timeout_s: float = 180) -> tuple[subprocess.Popen, str]:
    """Start the server (output to ``log``) and wait until ``GET /info/`` answers; returns the process and the
    base URL. ``env`` adds to this process's environment. Raises RuntimeError with the log's tail if the server
    exits or does not answer within ``timeout_s``."""
    import requests

    port = free_port()
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "MONAI_LABEL_AUTO_UPDATE_SCORING": "false", **(env or {})}
    with open(log, "w") as out:  # the child keeps its own handle
        proc = subprocess.Popen(server_command(studies, port, conf), stdout=out, stderr=subprocess.STDOUT,
                                env=full_env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        try:
            if requests.get(f"{base}/info/", timeout=2).status_code == 200:
                return proc, base
        except requests.ConnectionError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode}; {log}:\n{log.read_text()[-3000:]}")
        time.sleep(1)
    stop_server(proc)
    raise RuntimeError(f"server did not answer within {timeout_s:.0f} s; {log}:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen, timeout_s: float = 30) -> None:
    """SIGTERM the server's process group, SIGKILL it after ``timeout_s``; a server that already exited is fine."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout_s)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
