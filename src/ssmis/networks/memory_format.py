"""Channels-last weights, which oneDNN's CPU convolutions run faster (measured in ``benchmarks/speed.py``)."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["channels_last"]


def channels_last(module: nn.Module) -> nn.Module:
    """``module`` with every 4D parameter and buffer (2D convolutions) in ``torch.channels_last`` and every 5D one (3D
    convolutions) in ``torch.channels_last_3d``, in place; returned for chaining in configs.

    ``Module.to(memory_format=...)`` takes one format for all, and ``channels_last_3d`` refuses 4D tensors, so a
    network mixing both (or a 2D one) could not be converted in one call. Loading a state dict afterwards keeps the
    format (``copy_`` into the existing tensors). The output of a convolution whose weight is channels-last is
    channels-last too, whatever the input's format.
    """
    formats = {4: torch.channels_last, 5: torch.channels_last_3d}

    def convert(t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=formats[t.dim()]) if t.dim() in formats else t

    return module._apply(convert)
