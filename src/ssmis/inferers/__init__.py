"""Inferers: sliding-window inference that blends per-window softmax probabilities."""

from .sliding_window import SoftmaxSlidingWindowInferer, bfloat16_is_fast, overlap_for_stride

__all__ = ["SoftmaxSlidingWindowInferer", "bfloat16_is_fast", "overlap_for_stride"]
