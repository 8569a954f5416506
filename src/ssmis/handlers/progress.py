"""A tqdm progress bar over training iterations that shows the running loss."""

from __future__ import annotations

from typing import Any, Callable

from ignite.engine import Engine
from ignite.handlers import ProgressBar

__all__ = ["TrainingProgressBar"]


class TrainingProgressBar(ProgressBar):
    """``ignite.handlers.ProgressBar`` whose ``attach(engine)`` needs no arguments, as bundle handler lists call it.

    Args:
        output_transform: maps ``engine.state.output`` to a scalar or dict shown beside the bar (e.g. the loss).
        kwargs: passed to ``ProgressBar`` (``persist``, ``bar_format``, …).
    """

    def __init__(self, output_transform: Callable[[Any], Any] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("persist", False)
        super().__init__(**kwargs)
        self._output_transform = output_transform

    def attach(self, engine: Engine, metric_names: Any = None, output_transform: Any = None, **kwargs: Any) -> None:
        transform = output_transform or self._output_transform
        if transform is not None:
            base = transform

            def transform(output: Any) -> Any:
                value = base(output)
                if isinstance(value, dict):
                    return {k: float(v) for k, v in value.items()}
                if isinstance(value, (tuple, list)) and len(value) == 1:  # from_engine returns a 1-tuple
                    value = value[0]
                return {"loss": float(value)}  # a 1-tuple or 0-d tensor would show as "loss_0"

        super().attach(engine, metric_names=metric_names, output_transform=transform, **kwargs)
