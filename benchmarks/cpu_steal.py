"""Hypervisor steal time, read from ``/proc/stat``, so a benchmark can say how much of the CPU it really had.

On a shared virtual machine the host may run other guests on "our" cores; that time is counted as *steal*. A wall
time measured while steal is high says little about the code, so every benchmark here records the steal fraction
of the machine's CPU time over each measurement next to its wall time.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["StealMeter", "format_steal"]


def _cpu_jiffies(stat: Path = Path("/proc/stat")) -> tuple[int, int] | None:
    """(all CPU jiffies, steal jiffies) of the aggregate ``cpu`` line; None where ``/proc/stat`` is unavailable."""
    try:
        fields = stat.read_text().splitlines()[0].split()
    except OSError:
        return None
    if fields[0] != "cpu" or len(fields) < 9:
        return None
    values = [int(v) for v in fields[1:9]]  # user nice system idle iowait irq softirq steal
    return sum(values), values[7]


class StealMeter:
    """``with StealMeter() as m: ...`` then ``m.fraction``: the share of all CPU time stolen by the host meanwhile
    (0..1), or None where it cannot be read."""

    def __init__(self) -> None:
        self.fraction: float | None = None
        self._start: tuple[int, int] | None = None

    def __enter__(self) -> "StealMeter":
        self._start = _cpu_jiffies()
        return self

    def __exit__(self, *exc: object) -> None:
        end = _cpu_jiffies()
        if self._start is not None and end is not None and end[0] > self._start[0]:
            self.fraction = (end[1] - self._start[1]) / (end[0] - self._start[0])


def format_steal(fraction: float | None) -> str:
    """A steal fraction (0..1) as a table cell: ``"12 %"``, or ``"–"`` where it could not be measured."""
    return "–" if fraction is None else f"{100 * fraction:.0f} %"
