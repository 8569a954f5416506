"""Inferers: sliding-window inference that blends per-window softmax probabilities."""

from .sliding_window import SoftmaxSlidingWindowInferer

__all__ = ["SoftmaxSlidingWindowInferer"]
