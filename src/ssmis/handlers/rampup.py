"""A weight that ramps up over training, exposed as ``.value`` to the strategy that uses it."""

from __future__ import annotations

import math

from ignite.engine import Engine, Events

__all__ = ["RampUpWeight", "sigmoid_rampup", "linear_rampup"]


def sigmoid_rampup(t: float, length: float) -> float:
    """``exp(-5 (1 - t/length)^2)`` for ``t < length``, then 1 (Laine & Aila's ramp-up)."""
    if length <= 0:
        return 1.0
    p = min(max(t / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - p) ** 2))


def linear_rampup(t: float, length: float) -> float:
    """``t/length`` for ``t < length``, then 1."""
    return 1.0 if length <= 0 else float(min(max(t / length, 0.0), 1.0))


class RampUpWeight:
    """``value = start + (w0 - start) · ramp(iteration, length)``, updated at every ``ITERATION_STARTED``.

    Args:
        w0: final weight.
        length: ramp length in iterations.
        kind: ``"sigmoid"`` (``exp(-5(1-t/T)²)``) or ``"linear"``.
        start: weight at iteration 0 for the linear ramp's offset (default 0).
        name: if set, the value is also stored as ``engine.state.<name>``.

    Derived from ``engine.state.iteration`` only, so it is right after a resume without any saved state.
    """

    def __init__(self, w0: float, length: int, kind: str = "sigmoid", start: float = 0.0, name: str | None = None):
        if kind not in ("sigmoid", "linear"):
            raise ValueError(f"kind must be 'sigmoid' or 'linear', got {kind!r}")
        self.w0, self.length, self.kind, self.start, self.name = float(w0), int(length), kind, float(start), name
        self.value = self.at(0)

    def at(self, iteration: int) -> float:
        ramp = sigmoid_rampup if self.kind == "sigmoid" else linear_rampup
        return self.start + (self.w0 - self.start) * ramp(iteration, self.length)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        # the iteration counter is incremented before ITERATION_STARTED fires: iteration 1 is the first step
        self.value = self.at(engine.state.iteration - 1)
        if self.name:
            setattr(engine.state, self.name, self.value)
