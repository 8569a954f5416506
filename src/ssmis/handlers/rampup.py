"""A weight that ramps up over training: an ignite state-parameter scheduler, also exposed as ``.value``."""

from __future__ import annotations

import math
from typing import Any

from ignite.engine import Engine, Events
from ignite.handlers.state_param_scheduler import StateParamScheduler

__all__ = ["RampUpWeight", "linear_rampup", "sigmoid_rampup", "weight_value"]


def sigmoid_rampup(t: float, length: float) -> float:
    """``exp(-5 (1 - t/length)^2)`` for ``t < length``, then 1 (Laine & Aila's ramp-up)."""
    if length <= 0:
        return 1.0
    p = min(max(t / length, 0.0), 1.0)
    return float(math.exp(-5.0 * (1.0 - p) ** 2))


def weight_value(weight: Any) -> float:
    """A weight given as a number or as an object with a ``value`` (a :class:`RampUpWeight`)."""
    return float(getattr(weight, "value", weight))


def linear_rampup(t: float, length: float) -> float:
    """``t/length`` for ``t < length``, then 1."""
    return 1.0 if length <= 0 else float(min(max(t / length, 0.0), 1.0))


class RampUpWeight(StateParamScheduler):
    """``value = start + (w0 - start) · ramp(iteration - delay, length)``: an ignite state-parameter scheduler that
    writes the weight to ``engine.state.<name>`` at every ``ITERATION_STARTED`` and keeps it as ``.value`` for the
    strategy that holds it.

    Args:
        w0: final weight.
        length: ramp length in iterations.
        kind: ``"sigmoid"`` (``exp(-5(1-t/T)²)``) or ``"linear"``.
        start: weight at the start of the ramp (default 0).
        name: the ``engine.state`` attribute it writes (default ``unlabeled_weight``).
        delay: iterations before the ramp starts (the weight is ``start`` until then; linear ramps only, since the
            sigmoid ramp is not 0 at its start).

    Unlike ignite's own schedulers, whose position is an event counter, the position is set from
    ``engine.state.iteration`` at every event, so a resumed run continues the ramp where it was without any state.
    """

    def __init__(self, w0: float, length: int, kind: str = "sigmoid", start: float = 0.0,
                 name: str | None = None, delay: int = 0) -> None:
        if kind not in ("sigmoid", "linear"):
            raise ValueError(f"kind must be 'sigmoid' or 'linear', got {kind!r}")
        if int(delay) < 0:
            raise ValueError(f"delay must be >= 0, got {delay}")
        super().__init__(param_name=name or "unlabeled_weight", create_new=True)
        self.w0, self.length, self.kind, self.start = float(w0), int(length), kind, float(start)
        self.name, self.delay = name, int(delay)
        self.value = self.at(0)

    def at(self, iteration: int) -> float:
        """The weight after ``iteration`` completed iterations."""
        ramp = sigmoid_rampup if self.kind == "sigmoid" else linear_rampup
        t = iteration - self.delay
        return self.start if t < 0 else self.start + (self.w0 - self.start) * ramp(t, self.length)

    def get_param(self) -> float:
        return self.at(self.event_index - 1)

    def attach(self, engine: Engine, event: Any = Events.ITERATION_STARTED) -> None:
        super().attach(engine, event)

    def __call__(self, engine: Engine) -> None:
        # the iteration counter is incremented before ITERATION_STARTED fires: iteration 1 is the first step
        self.event_index = engine.state.iteration - 1
        super().__call__(engine)  # event_index becomes the iteration; engine.state.<name> = get_param()
        self.value = getattr(engine.state, self.param_name)
