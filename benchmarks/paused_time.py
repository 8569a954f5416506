"""Time a benchmarked process spent stopped (``SIGSTOP``, state ``T`` in ``/proc/<pid>/stat``).

A long training row is sometimes stopped on purpose so that something else (a CI run, a speed benchmark) can be
timed on a quiet machine. Its wall time then includes the pause; this meter measures the pause, so the table can
show it beside the wall time instead of a hand-written note.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

__all__ = ["PausedMeter", "process_state"]


def process_state(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The one-letter state of process ``pid`` (``R``, ``S``, ``T``, ...), or None when it cannot be read."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: the state follows the last ")"
    rest = text[text.rfind(")") + 1:].split()
    return rest[0] if rest else None


class PausedMeter:
    """``with PausedMeter(pid) as m: ...`` then ``m.seconds``: how long ``pid`` was stopped meanwhile.

    A daemon thread polls the process state every ``interval`` seconds and adds the time between two polls that
    both found it stopped (``T``, or ``t`` under a tracer), so each pause is undercounted by less than two
    intervals (up to one before its first stopped poll and one after its last).
    ``m.seconds`` is None where ``/proc`` cannot be read (not Linux).
    """

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        last_t, last_stopped = time.monotonic(), False
        while not self._stop.wait(self.interval):
            state = process_state(self.pid)
            if state is None:
                return
            now, stopped = time.monotonic(), state in ("T", "t")
            if stopped and last_stopped:
                self.seconds += now - last_t
            last_t, last_stopped = now, stopped

    def __enter__(self) -> "PausedMeter":
        if process_state(self.pid) is not None:
            self.seconds = 0.0
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
