"""Time a benchmarked process spent stopped (``SIGSTOP``, state ``T`` in ``/proc/<pid>/stat``).

A long training row is sometimes stopped on purpose so that something else (a CI run, a speed benchmark) can be
timed on a quiet machine. Its wall time then includes the pause; this meter measures the pause, so the table can
show it beside the wall time instead of a hand-written note. Stopping the whole process group (``kill -STOP -PGID``)
stops the meter too; the meter then counts, when it wakes, the gap in its own polling over which the process used
(almost) no CPU.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

__all__ = ["PausedMeter", "process_cpu_s", "process_state"]


def _stat_fields(pid: int, proc: Path) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (the state first), or None."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: the state follows the last ")"
    return text[text.rfind(")") + 1:].split() or None


def process_state(pid: int, proc: Path = Path("/proc")) -> str | None:
    """The one-letter state of process ``pid`` (``R``, ``S``, ``T``, ...), or None when it cannot be read."""
    fields = _stat_fields(pid, proc)
    return fields[0] if fields else None


def process_cpu_s(pid: int, proc: Path = Path("/proc")) -> float | None:
    """User plus system CPU seconds of process ``pid`` (all its threads), or None when they cannot be read."""
    fields = _stat_fields(pid, proc)
    try:  # utime and stime are fields 14 and 15 of stat, in clock ticks; fields[0] is field 3
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (TypeError, IndexError, ValueError):
        return None


class PausedMeter:
    """``with PausedMeter(pid) as m: ...`` then ``m.seconds``: how long ``pid`` was stopped meanwhile.

    A daemon thread polls the process state every ``interval`` seconds and adds the time between two polls that
    both found it stopped (``T``, or ``t`` under a tracer), so each pause is undercounted by less than two
    intervals (up to one before its first stopped poll and one after its last).
    When the meter itself was stopped with the process (a group stop), two polls are further apart than
    ``interval + late_s``; such a gap counts, less one interval, if the process used under ``idle_cpu`` CPU
    seconds per second over it (a training process uses about one per thread).
    ``m.seconds`` is None where ``/proc`` cannot be read (not Linux).
    """

    def __init__(self, pid: int, interval: float = 1.0, late_s: float = 5.0, idle_cpu: float = 0.1) -> None:
        self.pid, self.interval, self.late_s, self.idle_cpu = pid, interval, late_s, idle_cpu
        self.seconds: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        last_t, last_stopped, last_cpu = time.monotonic(), False, process_cpu_s(self.pid)
        while not self._stop.wait(self.interval):
            state, cpu = process_state(self.pid), process_cpu_s(self.pid)
            if state is None:
                return
            now, stopped = time.monotonic(), state in ("T", "t")
            gap = now - last_t
            if stopped and last_stopped:
                self.seconds += gap
            elif gap > self.interval + self.late_s and None not in (cpu, last_cpu) \
                    and cpu - last_cpu < self.idle_cpu * gap:  # the meter was stopped too, and so was the process
                self.seconds += gap - self.interval
            last_t, last_stopped, last_cpu = now, stopped, cpu

    def __enter__(self) -> "PausedMeter":
        if process_state(self.pid) is not None:
            self.seconds = 0.0
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
