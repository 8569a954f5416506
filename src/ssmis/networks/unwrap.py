"""The network inside a data-parallel wrapper, for everything that must see the bare model's keys and layers."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

__all__ = ["unwrap_module"]

_WRAPPERS = (nn.parallel.DistributedDataParallel, nn.DataParallel)


def unwrap_module(obj: Any) -> Any:
    """``obj.module`` when ``obj`` is a ``DistributedDataParallel`` or ``DataParallel`` wrapper, else ``obj``.

    State dicts of a wrapper carry ``module.``-prefixed keys; checkpoints, the EMA/BCP teacher copy and the
    classifier lookup all need the bare network's. Non-modules (optimisers, schedulers, handlers) pass through.
    """
    while isinstance(obj, _WRAPPERS):
        obj = obj.module
    return obj
