"""Numbers and switches from the server's ``--conf``: checked once, with the key named in the error."""

from __future__ import annotations

import math
from typing import Any, Dict

__all__ = ["positive_number", "switch"]

#: how a ``--conf`` switch may be spelled (any case); anything else is refused rather than guessed
ON, OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def positive_number(conf: Dict[str, Any], key: str, integer: bool = False, zero: bool = False,
                    maximum: float = math.inf) -> float | None:
    """``conf[key]`` as a positive finite number (a whole number >= 1 with ``integer``; 0 allowed with ``zero``) of
    at most ``maximum``, or None when absent; ``ValueError`` naming ``--conf key`` for anything else."""
    if key not in conf:
        return None
    try:
        value = float(conf[key])
    except (TypeError, ValueError):
        value = float("nan")
    ok = math.isfinite(value) and ((zero and value == 0)
                                   or (value >= 1 and value.is_integer() if integer else value > 0))
    if not ok or value > maximum:
        kind = f"{'a non-negative' if zero else 'a positive'} {'integer' if integer else 'number'}"
        kind += f" of at most {maximum:g}" if math.isfinite(maximum) else ""
        raise ValueError(f"--conf {key}: expected {kind}, got {conf[key]!r}")
    return value


def switch(conf: Dict[str, Any], key: str, default: bool) -> bool:
    """``conf[key]`` as a switch (``true``/``false``, ``yes``/``no``, ``on``/``off``, ``1``/``0``), ``default``
    when absent; ``ValueError`` naming ``--conf key`` for anything else (``--conf allow_remote ture`` would
    otherwise mean one thing or the other without a word)."""
    if key not in conf:
        return default
    value = str(conf[key]).strip().lower()
    if value not in ON + OFF:
        raise ValueError(f"--conf {key}: expected true or false, got {conf[key]!r}")
    return value in ON
