"""Graph-clustering loss (GraphCL) on deep encoder features: ``L_CC = −Tr(W·S·Sᵀ)``.

GraphCL's code is not public; this follows its description. The similarity of n feature vectors
``W = (F·Fᵀ − max(F·Fᵀ))/τ`` (``F`` L2-normalised) is used both as the graph (a one-layer GCN with the
row-softmax of ``W`` as normalised adjacency) and as the clustering objective; an MLP on the GCN output gives soft
assignments ``S`` ``[n, K]``. Two of this project's choices, which the description leaves open, are switches: features
are L2-normalised (``normalize``), and the trace is divided by n² (``reduction="pairs"``, a mean over node pairs) so
the loss does not grow with the subsample size; κ weights it in the total loss. Divided by n² and L2-normalised,
``0 <= L_CC <= 2/τ``, so with κ = 0.01 the term is small beside the segmentation loss; ``reduction="nodes"`` (divided
by n, a mean over nodes of each node's sum over its pairs) is n times larger, and ``"sum"`` is the plain trace.
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
        reduction: ``"pairs"`` (default) divides the trace by n², ``"nodes"`` by n, ``"sum"`` gives the plain
            ``−Tr(W·S·Sᵀ)``.
    """

    reductions = {"pairs": 2, "nodes": 1, "sum": 0}  # each reduction divides the trace by n to this power

    def __init__(self, in_channels: int, clusters: int = 2, hidden: int = 64, tau: float = 2.0,
                 max_nodes: int = 512, normalize: bool = True, reduction: str = "pairs") -> None:
        super().__init__()
        if reduction not in self.reductions:
            raise ValueError(f"graph loss reduction must be one of {tuple(self.reductions)}, got {reduction!r}")
        self.gcn = nn.Linear(in_channels, hidden)
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, clusters))
        self.tau, self.max_nodes = float(tau), int(max_nodes)
        self.normalize, self.reduction = bool(normalize), reduction

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
        return cc / n ** self.reductions[self.reduction]
