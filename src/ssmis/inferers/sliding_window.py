"""Sliding-window inference that averages each window's softmax, as the LA protocol specifies."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

# bfloat16_is_fast is re-exported: inference.yaml calls ssmis.inferers.bfloat16_is_fast()
from ..utils.precision import autocast_to, bfloat16_is_fast, check_precision

__all__ = ["SoftmaxSlidingWindowInferer", "bfloat16_is_fast", "overlap_for_stride"]

AVERAGES = ("softmax", "logits")


def overlap_for_stride(stride: Sequence[int], roi_size: Sequence[int], key: str = "eval_sw_stride") -> list[float]:
    """The per-axis ``overlap`` for which MONAI's sliding window steps exactly ``stride`` voxels (``key``: the config
    key that holds ``stride``, named in errors).

    Protocols give the step in voxels (LA: 18 in-plane and 4 along z for 112×112×80 windows); MONAI takes an
    overlap fraction and steps ``int(roi · (1 − overlap))``, which truncates, so an overlap computed as
    ``1 − stride / roi`` can land one voxel short. Aiming half a voxel above the stride avoids that.
    """
    if len(stride) != len(roi_size):
        raise ValueError(f"{key} {list(stride)} needs one step per axis of the window {list(roi_size)}")
    out = []
    for s, r in zip(stride, roi_size):
        if isinstance(s, bool) or int(s) != s or not 1 <= s <= r:
            raise ValueError(f"{key} {list(stride)}: each step must be a whole number of voxels in 1..{r} "
                             f"(the window size on that axis)")
        out.append(max(0.0, 1.0 - (s + 0.5) / r))
    return out


class SoftmaxSlidingWindowInferer(SlidingWindowInferer):
    """:class:`monai.inferers.SlidingWindowInferer` that blends probabilities instead of raw outputs.

    MONAI's inferer blends whatever the network returns (logits here) over overlapping windows, and its
    ``process_fn`` hook is not reachable through the class in MONAI 1.6, so the network is wrapped instead: each
    window's logits ``[b, K, *roi]`` become ``softmax`` over channels before blending. The result ``[B, K, *S]`` is
    returned as ``log(blended probabilities)``, so the usual ``Activations(softmax) → argmax`` post-processing
    recovers the blended probabilities exactly and every consumer of logits works unchanged (the same convention as
    :class:`ssmis.networks.SoftmaxAverage`, whose log-probabilities pass through a window's softmax unchanged).

    Args:
        average: ``"softmax"`` (default) blends probabilities; ``"logits"`` blends raw outputs, as MONAI does.
        precision: ``"float32"`` (default) or ``"bfloat16"``: each window's forward runs under
            ``torch.autocast`` in that type (about 1.7x faster on CPUs with bfloat16 instructions; measured with
            ``benchmarks/speed.py --cases inference``) and its output is cast back to float32 before blending.
        kwargs: the arguments of :class:`monai.inferers.SlidingWindowInferer`.
    """

    def __init__(self, *args: Any, average: str = "softmax", precision: str = "float32", **kwargs: Any) -> None:
        if average not in AVERAGES:
            raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
        check_precision(precision)
        super().__init__(*args, **kwargs)
        self.average = average
        self.precision = precision

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        def window_logits(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            with autocast_to(self.precision, x.device.type):
                out = network(x, *a, **k)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"the network must return one tensor of logits per window, got {type(out).__name__}")
            return out.float()

        if self.average == "logits":
            return super().__call__(inputs, window_logits, *args, **kwargs)

        def window_probabilities(x: torch.Tensor, *a: Any, **k: Any) -> torch.Tensor:
            return torch.softmax(window_logits(x, *a, **k), dim=1)

        blended = super().__call__(inputs, window_probabilities, *args, **kwargs)
        return torch.log(blended.clamp_min(1e-8))
