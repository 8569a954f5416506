"""Co-training with fixed and dynamic pseudo-labels (two sub-networks, each taught by the other)."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn as nn

from ..handlers.rampup import weight_value
from ..losses import pseudo_label_loss
from ..metrics.uncertainty import mean_entropy
from ..transforms import apply_cutmix, combine_fixed_dynamic, context_size, crop_at, cutmix_box, map_back, sample_shifts
from ..utils.precision import autocast_to, check_precision
from .strategy import Strategy

__all__ = ["CoTrainingStrategy"]


def _positive_pair(value: Any) -> tuple[float, float] | None:
    """``value`` as two positive floats, or ``None`` for anything else (a scalar, a string, ``None``, …)."""
    if isinstance(value, (str, bytes)):
        return None
    try:
        pair = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return (pair[0], pair[1]) if len(pair) == 2 and min(pair) > 0 else None


class CoTrainingStrategy(Strategy):
    """Two sub-networks SN1, SN2 of the same architecture, each learning from the other's pseudo-labels.

    Per iteration, with a labelled batch and an unlabelled *context* batch ``[B, C, *(crop + 2·max_shift)]`` whose
    centre is the fixed crop:

    - supervised: ``L_sup = α·CE + (1−α)·Dice`` for both networks (``sup_loss``);
    - fixed pseudo-label: the other network's prediction on the fixed crop;
    - dynamic pseudo-label: the other network predicts ``n_shifts`` crops shifted by offsets drawn afresh each
      iteration (one gradient-free batched pass), the predictions are mapped back to the fixed crop and averaged
      where they overlap, and COM keeps that where the shifted crops cover a voxel and the fixed label elsewhere;
    - CUT: SN2 learns on a CutMix of two unlabelled crops (λ ~ Beta(4, 4), box side √(1−λ)); SN1's fixed and
      dynamic pseudo-labels are mixed with the same box. SN1 learns on the original crops.

    ``loss = Σ_nets L_sup + w(t)·(L_fix + L_dyn)`` with ``w`` a number or ``RampUpWeight``.

    Args:
        networks: (SN1, SN2).
        sup_loss: supervised loss on logits and labels.
        crop, max_shift: the fixed crop size and the maximum shift per axis (the context is ``crop + 2·max_shift``).
        unlabeled_weight: ``w(t)``.
        use_fixed, use_dynamic, use_cut: the paper's ablation switches.
        cut_beta: ``(α, β)`` of CUT's ``λ ~ Beta(α, β)`` (the paper: ``(4, 4)``).
        n_shifts: shifted crops per iteration (4).
        confidence_weighted: weight the pseudo-label CE by the teacher's confidence.
        input_noise: uniform noise ``U(−input_noise, input_noise)`` added to the unlabelled context (TraCoCo: 0.2).
        teacher_mode: ``"train"`` (default) makes the pseudo-labels in training mode, SN1's fixed one from its own
            training forward pass; ``"eval"`` makes every pseudo-label in a separate gradient-free pass in eval
            mode, so batch-normalised networks (the V-Net) use their running statistics and the teacher passes do
            not update them. The method leaves this open; with instance norm (the CPU protocol) the two agree.
        teacher_precision: ``"float32"`` (default, the paper) or ``"bfloat16"``: the gradient-free pseudo-label
            passes (the other network's fixed crop, every shifted crop) run under ``torch.autocast`` in that type
            and their softmax is taken in float32. Passes with gradients are unchanged.
    """

    def __init__(
        self,
        networks: Sequence[nn.Module],
        sup_loss: Callable,
        crop: Sequence[int],
        max_shift: Sequence[int],
        unlabeled_weight: Any = 0.3,
        use_fixed: bool = True,
        use_dynamic: bool = True,
        use_cut: bool = True,
        cut_beta: Sequence[float] = (4.0, 4.0),
        n_shifts: int = 4,
        confidence_weighted: bool = False,
        input_noise: float = 0.0,
        teacher_mode: str = "train",
        teacher_precision: str = "float32",
    ) -> None:
        if teacher_mode not in ("train", "eval"):
            raise ValueError(f"teacher_mode must be 'train' or 'eval', got {teacher_mode!r}")
        pair = _positive_pair(cut_beta)
        if pair is None:
            raise ValueError(f"cut_beta must be two positive numbers (α, β) of Beta(α, β), got {cut_beta!r}")
        if len(networks) != 2:
            raise ValueError(f"co-training needs exactly two networks, got {len(networks)}")
        if not (use_fixed or use_dynamic):
            raise ValueError("at least one of use_fixed and use_dynamic must be on")
        if int(n_shifts) < 1:
            raise ValueError(f"n_shifts must be >= 1, got {n_shifts}")
        context_size(crop, max_shift)  # refuses mismatched axes and a shift range that could miss the fixed crop
        self.networks = tuple(networks)
        self.sup_loss = sup_loss
        self.crop, self.max_shift = [int(c) for c in crop], [int(m) for m in max_shift]
        self.unlabeled_weight = unlabeled_weight
        self.use_fixed, self.use_dynamic, self.use_cut = use_fixed, use_dynamic, use_cut
        self.cut_beta = pair
        self.n_shifts, self.confidence_weighted = int(n_shifts), confidence_weighted
        self.input_noise = float(input_noise)
        self.teacher_mode = teacher_mode
        self.teacher_precision = check_precision(teacher_precision, "teacher_precision")
        self._warned_cut = False

    @contextmanager
    def _teacher(self, net: nn.Module) -> Iterator[nn.Module]:
        """``net`` without gradients, in eval mode when ``teacher_mode`` is ``"eval"`` (its mode is restored), under
        autocast to ``teacher_precision``."""
        was_training = net.training
        if self.teacher_mode == "eval":
            net.eval()
        device_type = next(net.parameters()).device.type
        try:
            with torch.no_grad(), autocast_to(self.teacher_precision, device_type):
                yield net
        finally:
            net.train(was_training)

    def align_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """The fixed crop of an unlabelled context ``[B, 1, *context]``: the grid of every pseudo-label."""
        return self._fixed_crop(reference)

    def _fixed_crop(self, context: torch.Tensor) -> torch.Tensor:
        idx = [slice(m, m + c) for m, c in zip(self.max_shift, self.crop)]
        if list(context.shape[2:]) != [c + 2 * m for c, m in zip(self.crop, self.max_shift)]:
            raise ValueError(f"unlabelled context {list(context.shape[2:])} is not crop {self.crop} + 2 x max_shift "
                             f"{self.max_shift}")
        return context[(slice(None), slice(None), *idx)]

    def fixed_prob(self, net: nn.Module, x_u: torch.Tensor) -> torch.Tensor:
        """``net``'s gradient-free probabilities ``[B, K, *crop]`` (float32) on the fixed crops ``x_u``: the fixed
        pseudo-label it gives the other network."""
        with self._teacher(net) as teacher:
            return torch.softmax(teacher(x_u).float(), 1)

    @torch.no_grad()
    def dynamic_prob(self, net: nn.Module, context: torch.Tensor, fixed_prob: torch.Tensor) -> torch.Tensor:
        """COM ``[B, K, *crop]`` of ``net``'s fixed-crop probabilities ``fixed_prob`` ``[B, K, *crop]`` and its
        predictions on ``n_shifts`` crops shifted within ``context`` ``[B, C, *context]``, mapped back and averaged."""
        offsets = sample_shifts(self.n_shifts, self.max_shift)
        crops = crop_at(context, offsets, self.crop, self.max_shift)
        with self._teacher(net) as teacher:
            temp, cover = map_back(torch.softmax(teacher(crops).float(), 1), offsets, context.shape[0])
        return combine_fixed_dynamic(fixed_prob, temp, cover)

    def __call__(self, engine: Any, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                 ) -> dict[str, torch.Tensor]:
        """Both networks' losses on a labelled batch (``image`` ``[B_l, C, *S]``, ``label`` ``[B_l, 1, *S]``) and
        an unlabelled one (``image`` ``[B_u, C, *S']``, the context crop the fixed and shifted crops are cut from;
        None: the supervised terms alone)."""
        sn1, sn2 = self.networks
        x_l, y = labeled["image"], labeled["label"]
        b_l = x_l.shape[0]
        if unlabeled is None:
            s1, s2 = (self.sup_loss(self.forward(engine, sn1, x_l), y),
                      self.sup_loss(self.forward(engine, sn2, x_l), y))
            return {"loss": s1 + s2, "loss/sup1": s1, "loss/sup2": s2}
        ctx = unlabeled["image"]
        if self.input_noise > 0:
            ctx = ctx + (torch.rand_like(ctx) * 2 - 1) * self.input_noise
        x_u = self._fixed_crop(ctx)
        # SN1 trains on the original crops; its own prediction (detached) is SN2's fixed pseudo-label
        out1 = self.forward(engine, sn1, torch.cat([x_l, x_u]))
        if self.teacher_mode == "eval":
            p1_fix = self.fixed_prob(sn1, x_u)
        else:
            p1_fix = torch.softmax(out1[b_l:].detach().float(), 1)
        p2_fix = self.fixed_prob(sn2, x_u)
        p1_dyn = self.dynamic_prob(sn1, ctx, p1_fix) if self.use_dynamic else None
        p2_dyn = self.dynamic_prob(sn2, ctx, p2_fix) if self.use_dynamic else None
        x_u2, t1_fix, t1_dyn = x_u, p1_fix, p1_dyn
        if self.use_cut and x_u.shape[0] == 1 and not self._warned_cut:
            warnings.warn("CUT needs two unlabelled volumes per batch to mix; with unlabeled_batch_size 1 SN2 learns "
                          "on the original crops", stacklevel=2)
            self._warned_cut = True
        if self.use_cut and x_u.shape[0] > 1:
            box = cutmix_box(x_u.shape[2:], *self.cut_beta).to(x_u.device)
            perm = torch.roll(torch.arange(x_u.shape[0], device=x_u.device), 1)
            x_u2 = apply_cutmix(x_u, box, perm)
            t1_fix = apply_cutmix(p1_fix, box, perm)
            t1_dyn = apply_cutmix(p1_dyn, box, perm) if p1_dyn is not None else None
        out2 = self.forward(engine, sn2, torch.cat([x_l, x_u2]))
        s1, s2 = self.sup_loss(out1[:b_l], y), self.sup_loss(out2[:b_l], y)
        w = weight_value(self.unlabeled_weight)
        out = {"loss/sup1": s1, "loss/sup2": s2, "weight/unlabeled": torch.tensor(w),
               "pseudo/entropy": 0.5 * (mean_entropy(p1_fix) + mean_entropy(p2_fix))}
        unsup = x_u.new_zeros(())
        cw = self.confidence_weighted
        if self.use_fixed:
            f1, f2 = pseudo_label_loss(out1[b_l:], p2_fix, cw), pseudo_label_loss(out2[b_l:], t1_fix, cw)
            out["loss/fix1"], out["loss/fix2"] = f1, f2
            unsup = unsup + f1 + f2
        if self.use_dynamic:
            d1, d2 = pseudo_label_loss(out1[b_l:], p2_dyn, cw), pseudo_label_loss(out2[b_l:], t1_dyn, cw)
            out["loss/dyn1"], out["loss/dyn2"] = d1, d2
            unsup = unsup + d1 + d2
            out["pseudo/dynamic_changed"] = (p2_dyn.argmax(1) != p2_fix.argmax(1)).float().mean()
        if self.report_pseudo_labels:  # by the network that made them, before CUT mixes SN1's for SN2
            for name, prob in (("fixed_sn1", p1_fix), ("dynamic_sn1", p1_dyn), ("fixed_sn2", p2_fix),
                               ("dynamic_sn2", p2_dyn)):
                if prob is not None:
                    out[f"pseudo_label/{name}"] = prob.argmax(1, keepdim=True)
        out["loss"] = s1 + s2 + w * unsup
        return out
