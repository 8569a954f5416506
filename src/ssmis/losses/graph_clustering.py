"""Graph-clustering loss (GraphCL) on deep encoder features: ``L_CC = −Tr(W·S·Sᵀ)``.

GraphCL's code is not public; this follows its description. The similarity of n feature vectors
``W = (F·Fᵀ − max(F·Fᵀ))/τ`` (``F`` L2-normalised) is used both as the graph (a one-layer GCN with the row-softmax of
``W`` as normalised adjacency) and as the clustering objective; an MLP on the GCN output gives soft assignments
``S`` ``[n, K]``. Two of this project's choices, which the description leaves open, are switches: features are
L2-normalised (``normalize``), and the trace is divided by n² (``pair_mean``, a mean over node pairs) so the loss
does not grow with the subsample size; κ weights it in the total loss.
"""

from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["GraphClusteringLoss"]


class GraphClusteringLoss(nn.Module):
    """``forward(features [B, A, *S]) -> scalar`` on a random subsample of at most ``max_nodes`` voxels.

    Args:
        in_channels: A, channels of the encoder feature map.
        clusters: K soft clusters.
        hidden: GCN width.
        tau: temperature τ (2).
        max_nodes: voxel subsample size n.
        normalize: L2-normalise each feature vector before the similarity (default True).
        pair_mean: divide the trace by n² (default True); False gives the plain ``−Tr(W·S·Sᵀ)``.
    """

    def __init__(self, in_channels: int, clusters: int = 2, hidden: int = 64, tau: float = 2.0,
                 max_nodes: int = 512, normalize: bool = True, pair_mean: bool = True) -> None:
        super().__init__()
        self.gcn = nn.Linear(in_channels, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, clusters))
        self.tau, self.max_nodes = float(tau), int(max_nodes)
        self.normalize, self.pair_mean = bool(normalize), bool(pair_mean)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = features.float().movedim(1, -1).reshape(-1, features.shape[1])
        if f.shape[0] > self.max_nodes:
            f = f[torch.randperm(f.shape[0], device=f.device)[: self.max_nodes]]
        if self.normalize:
            f = nn.functional.normalize(f, dim=1)
        sim = f @ f.t()
        w = (sim - sim.max()) / self.tau  # [n, n], <= 0
        adj = torch.softmax(w, dim=1)
        h = torch.relu(self.gcn(adj @ f))
        s = torch.softmax(self.mlp(h), dim=1)  # [n, K]
        n = f.shape[0]
        cc = -torch.trace(w @ s @ s.t())
        return cc / (n * n) if self.pair_mean else cc
