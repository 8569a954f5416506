"""Inference with both co-trained networks: the average of their softmax, returned as log-probabilities."""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["SoftmaxAverage"]


class SoftmaxAverage(nn.Module):
    """``log(mean_k softmax(net_k(x)))`` ``[B, K, *S]``; a softmax of the output gives the averaged probabilities,
    so the usual ``Activations(softmax) → argmax`` post-processing applies unchanged. ``index`` selects one network
    instead. TorchScript-exportable; the exported module holds every network."""

    def __init__(self, net1: nn.Module, net2: nn.Module, index: int = -1) -> None:
        super().__init__()
        self.nets = nn.ModuleList([net1, net2])
        self.index = int(index)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = []
        for i, net in enumerate(self.nets):
            if self.index < 0 or i == self.index:
                probs.append(torch.softmax(net(x), 1))
        return torch.log(torch.stack(probs).mean(0).clamp_min(1e-8))
