"""The processor a benchmark ran on, read from ``/proc/cpuinfo``, so that times from different machines are not
compared as if they came from one.

The virtual machines these benchmarks run on are not all alike: the same training row has taken 1.15 CPU seconds an
iteration on one and about 4.9 on another. Each result row records the processor that trained it; wall and CPU
times compare only between rows of the same processor.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["cpu_model"]


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The first processor's ``model name`` with its family and model numbers, e.g. ``"AMD EPYC (family 23, model
    1)"`` (the name alone does not tell one generation from the next), or None where ``cpuinfo`` cannot be read or
    names no model."""
    try:
        lines = cpuinfo.read_text().split("\n\n")[0].splitlines()
    except OSError:
        return None
    fields = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if not name:
        return None
    numbers = [f"{label} {fields[key]}" for key, label in (("cpu family", "family"), ("model", "model"))
               if fields.get(key)]
    return f"{name} ({', '.join(numbers)})" if numbers else name
