"""Inferers: sliding-window inference that blends per-window softmax probabilities."""

from .sliding_window import SoftmaxSlidingWindowInferer, overlap_for_stride

__all__ = ["SoftmaxSlidingWindowInferer", "overlap_for_stride"]
