"""Reduced-precision forward passes: the precisions a config may name, and whether bfloat16 pays on this CPU."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast_to", "bfloat16_is_fast", "check_precision"]

PRECISIONS: dict[str, torch.dtype | None] = {"float32": None, "bfloat16": torch.bfloat16}


def check_precision(precision: str, name: str = "precision") -> str:
    """``precision`` if it is a key of ``PRECISIONS``; otherwise a ``ValueError`` naming ``name``."""
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {tuple(PRECISIONS)}, got {precision!r}")
    return precision


def autocast_to(precision: str, device_type: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``precision`` on ``device_type`` (``"cpu"``, ``"cuda"``); nothing for ``"float32"``."""
    dtype = PRECISIONS[check_precision(precision)]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device_type, dtype=dtype)


def bfloat16_is_fast() -> bool:
    """Whether this CPU has bfloat16 instructions (AVX-512 BF16 or AMX) that PyTorch's oneDNN uses; without them
    bfloat16 convolutions are emulated and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
