"""Bidirectional copy-paste teacher–student (BCP), with optional graph clustering and TSA: TransMedSeg."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn
from ignite.engine import Events
from monai.losses import DiceCELoss
from monai.transforms import KeepLargestConnectedComponent

from ..losses import region_weighted_dice_ce
from ..networks import LayerFeatures, unwrap_module
from ..transforms import bidirectional_copy_paste, cuboid_mask
from ..metrics.uncertainty import mean_entropy
from .strategy import Strategy

if TYPE_CHECKING:
    from ..tsa import TransferableSemanticAugmentation

__all__ = ["BCPStrategy"]


class BCPStrategy(Strategy):
    """BCP: labelled copy-paste pre-training, then self-training with an EMA teacher's pseudo-labels.

    Labelled and unlabelled batches are split in halves a and b (``B_l = B_u``, even). A cuboid mask M covering
    ``mask_ratio`` of every axis is drawn each iteration.

    - Pre-training (iterations ≤ ``pretrain_iterations``): ``x = x_l^a⊙M + x_l^b⊙(1−M)`` with the same mix of
      ground truths; the loss is ``(Dice + CE)/2`` per region, weight 1 on both, summed (``pretrain_loss="region"``,
      BCP's ACDC code), or ``(Dice + CE)/2`` on the whole mixed image (``"whole"``, BCP's LA code: about half the
      region form's scale).
    - Self-training: the teacher predicts pseudo-labels ``p`` of ``x_u`` (argmax of its softmax, optionally only
      the largest connected component of each class). The student sees ``x_in = x_l^a⊙M + x_u^a⊙(1−M)`` and
      ``x_out = x_u^b⊙M + x_l^b⊙(1−M)``, with targets mixed the same way, and
      the loss ``(Dice + CE)/2`` weighs ground-truth regions 1 and pseudo-labelled regions ``pseudo_weight``
      (0.5). The two images' losses are summed, as in BCP (``bcp_reduction="sum"``), or averaged (``"mean"``).
      When self-training starts the teacher is reset to the pre-trained student (:meth:`attach`); with a
      ``ssmis.handlers.PretrainingStage`` that is the pre-trained state selected on validation.

    Optional terms on the self-training stage:

    - ``graph_loss`` (``GraphClusteringLoss``) on the student's deep features at ``graph_layer``, weighted
      ``graph_weight`` (κ = 0.01): together, GraphCL.
    - ``tsa`` (``TransferableSemanticAugmentation``): labelled voxels augmented towards the pseudo-labelled ones'
      statistics, weighted by its ``beta``: together with GraphCL, TransMedSeg.

    Works in 2D and 3D and for any number of classes.
    """

    def __init__(
        self,
        network: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        pretrain_iterations: int = 2000,
        mask_ratio: float = 2.0 / 3.0,
        pseudo_weight: float = 0.5,
        largest_component: bool = True,
        graph_loss: nn.Module | None = None,
        graph_layer: str | None = None,
        graph_weight: float = 0.01,
        tsa: TransferableSemanticAugmentation | None = None,
        bcp_reduction: str = "sum",
        pretrain_loss: str = "region",
    ) -> None:
        if bcp_reduction not in ("sum", "mean"):
            raise ValueError(f"bcp_reduction must be 'sum' (BCP) or 'mean', got {bcp_reduction!r}")
        self.bcp_scale = 1.0 if bcp_reduction == "sum" else 0.5
        if pretrain_loss not in ("region", "whole"):
            raise ValueError(f"pretrain_loss must be 'region' (BCP on ACDC) or 'whole' (BCP on LA), "
                             f"got {pretrain_loss!r}")
        self.pretrain_loss = pretrain_loss
        # the whole-image form is MONAI's Dice + CE (soft Dice over every class, pooled over the batch); the region
        # form needs a voxel mask, which DiceCELoss has not (losses/region.py)
        self.whole_loss = (DiceCELoss(to_onehot_y=True, softmax=True, batch=True, lambda_dice=0.5, lambda_ce=0.5)
                           if pretrain_loss == "whole" else None)
        self.network, self.teacher = network, teacher
        self.networks = (network,)
        self.num_classes = num_classes
        self.pretrain_iterations = int(pretrain_iterations)
        self.mask_ratio, self.pseudo_weight = float(mask_ratio), float(pseudo_weight)
        self.lcc = (KeepLargestConnectedComponent(applied_labels=list(range(1, num_classes)), is_onehot=False,
                                                  independent=True) if largest_component else None)
        if graph_loss is not None and not graph_layer:
            raise ValueError("graph_loss needs graph_layer, the name of the encoder layer to read features from")
        self.graph_loss, self.graph_weight = graph_loss, float(graph_weight)
        self.graph_tap = LayerFeatures(network, graph_layer) if graph_loss is not None else None
        self.tsa = tsa

    def attach(self, engine: Any) -> None:
        """Copy the student into the teacher as self-training starts (iteration ``pretrain_iterations + 1``), and
        attach ``tsa`` (:meth:`Strategy.attach`).

        The trainer calls this after attaching its handlers, so a ``ssmis.handlers.PretrainingStage`` has already
        put the selected pre-trained state into the student when the copy is made."""
        super().attach(engine)
        engine.add_event_handler(Events.ITERATION_STARTED(once=self.pretrain_iterations + 1), self.reset_teacher)

    def reset_teacher(self, engine: Any = None) -> None:
        """teacher ← student (unwrapped: under DDP the student's keys carry ``module.``)."""
        self.teacher.load_state_dict(unwrap_module(self.network).state_dict())

    @staticmethod
    def _halves(x: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[0] < 2 or x.shape[0] % 2:
            raise ValueError(f"BCP needs an even {what} batch of at least 2 (halves a and b), got {x.shape[0]}")
        h = x.shape[0] // 2
        return x[:h], x[h:]

    @torch.no_grad()
    def pseudo_label(self, x_u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher pseudo-labels ``[B, 1, *S]`` of ``x_u`` ``[B, C, *S]`` and the mean entropy of its softmax."""
        prob = torch.softmax(self.teacher(x_u).float(), 1)
        lab = prob.argmax(1, keepdim=True)
        if self.lcc is not None:
            lab = torch.stack([self.lcc(item) for item in lab]).to(lab)
        return lab.long(), mean_entropy(prob)

    def __call__(self, engine: Any, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                 ) -> dict[str, torch.Tensor]:
        """Pre-training or self-training on a labelled batch (``image`` ``[B_l, C, *S]``, ``label``
        ``[B_l, 1, *S]``) and an unlabelled one (``image`` ``[B_u, C, *S]``, ``B_u = B_l``)."""
        x_l, y_l = labeled["image"], labeled["label"].long()
        xa, xb = self._halves(x_l, "labelled")
        ya, yb = y_l[: xa.shape[0]], y_l[xa.shape[0]:]
        mask = cuboid_mask(x_l.shape[2:], self.mask_ratio, device=x_l.device)
        iteration = engine.state.iteration
        if unlabeled is None or iteration <= self.pretrain_iterations:
            x_mix, _ = bidirectional_copy_paste(xa, xb, mask)
            y_mix, _ = bidirectional_copy_paste(ya, yb, mask)
            logits = self.forward(engine, self.network, x_mix)
            if self.pretrain_loss == "region":
                loss = region_weighted_dice_ce(logits, y_mix, y_mix, mask, 1.0, 1.0)
            else:
                loss = self.whole_loss(logits, y_mix)
            return {"loss": loss, "loss/bcp": loss, "stage": torch.tensor(0.0)}
        x_u = unlabeled["image"]
        if x_u.shape[0] != x_l.shape[0]:
            raise ValueError(f"BCP pairs labelled and unlabelled images: batch sizes {x_l.shape[0]} and "
                             f"{x_u.shape[0]} differ")
        ua, ub = self._halves(x_u, "unlabelled")
        plab, entropy = self.pseudo_label(x_u)
        pa, pb = plab[: ua.shape[0]], plab[ua.shape[0]:]
        x_in, _ = bidirectional_copy_paste(xa, ua, mask)
        _, x_out = bidirectional_copy_paste(xb, ub, mask)
        y_in, _ = bidirectional_copy_paste(ya, pa, mask)
        _, y_out = bidirectional_copy_paste(yb, pb, mask)
        logits = self.forward(engine, self.network, torch.cat([x_in, x_out]))
        h = x_in.shape[0]
        # x_in: ground truth inside M, pseudo-label outside; x_out: pseudo-label inside M, ground truth outside
        l_in = region_weighted_dice_ce(logits[:h], y_in, y_in, mask, 1.0, self.pseudo_weight)
        l_out = region_weighted_dice_ce(logits[h:], y_out, y_out, mask, self.pseudo_weight, 1.0)
        bcp = self.bcp_scale * (l_in + l_out)
        out = {"loss/bcp": bcp, "pseudo/entropy": entropy, "stage": torch.tensor(1.0)}
        if self.report_pseudo_labels:
            out["pseudo_label/teacher"] = plab
        loss = bcp
        if self.graph_loss is not None:
            cc = self.graph_loss(self.graph_tap.features)
            out["loss/graph"] = cc
            loss = loss + self.graph_weight * cc
        if self.tsa is not None:
            m = mask.bool().expand(h, 1, *mask.shape[2:])
            source = torch.cat([m, ~m])  # ground-truth voxels of x_in and x_out
            loss = self.add_tsa(out, loss, torch.cat([y_in, y_out]), source)
        out["loss"] = loss
        return out
