"""A diagnostic: how good each pseudo-label a strategy trains on is, against the unlabelled volumes' own labels.

The LA preparation writes every case's label, the unlabelled ones' included (``reference_label`` in their
records). Merged on top of a bundle's training configs, ``configs/pseudo_label_quality.yaml`` loads that label with
the unlabelled image (same crop and flips), keeps it on the engine (``engine.state.unlabeled_reference``, which the
strategy never receives) and attaches this handler. The strategy then reports its pseudo-labels
(``Strategy.report_pseudo_labels``), and each iteration this handler adds, per pseudo-label ``<name>``:

- ``pseudo_quality/<name>/dice``: the Dice of the pseudo-label against the reference, mean over the foreground
  classes, over the whole batch;
- ``pseudo_quality/<name>/wrong``: the fraction of voxels whose pseudo-label class differs from the reference;

to ``engine.state.output``, where the logging handlers attached after it (TensorBoard, the console) pick them up.
The reference never reaches a loss: training with and without it gives the same weights (a test checks this).
"""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.metrics import compute_dice
from monai.networks.utils import one_hot

__all__ = ["PseudoLabelQuality", "pseudo_label_scores"]

PREFIX = "pseudo_label/"


def pseudo_label_scores(pseudo: torch.Tensor, reference: torch.Tensor, num_classes: int) -> tuple[float, float]:
    """``(dice, wrong)`` of class maps ``pseudo`` and ``reference`` ``[B, 1, *S]``: the Dice over the whole batch,
    averaged over classes ``1 … num_classes − 1`` (a class absent from both counts as 1), and the fraction of voxels
    where the two differ."""
    pseudo, reference = pseudo.long(), reference.to(pseudo.device).round().long()
    if pseudo.shape != reference.shape:
        raise ValueError(f"pseudo-label {tuple(pseudo.shape)} and reference {tuple(reference.shape)} differ in shape")
    # MONAI's Dice, on the batch flattened into one sample (pooled over the batch); ignore_empty=False scores a class
    # absent from both as 1, and one absent from the reference alone as 0
    flat = [one_hot(t.reshape(1, 1, -1), num_classes) for t in (pseudo, reference)]
    dice = compute_dice(*flat, include_background=False, ignore_empty=False)
    return float(dice.mean()), float((pseudo != reference).float().mean())


class PseudoLabelQuality:
    """Score the strategy's pseudo-labels against the reference labels of the unlabelled batch, every iteration.

    Args:
        num_classes: classes including the background.

    Attach it before the logging handlers (``train#method_handlers``). An iteration without a reference (unlabelled
    records without ``reference_label``, which the config's transforms allow) or without reported pseudo-labels
    (BCP's pre-training) adds nothing.
    """

    def __init__(self, num_classes: int) -> None:
        if int(num_classes) < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = int(num_classes)

    def attach(self, engine: Engine) -> None:
        # at STARTED: MONAI's Workflow attaches handlers before the trainer has set its strategy
        engine.add_event_handler(Events.STARTED, self.ask_for_pseudo_labels)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    @staticmethod
    def ask_for_pseudo_labels(engine: Engine) -> None:
        if not hasattr(engine, "strategy"):
            raise TypeError(f"PseudoLabelQuality needs a trainer with a semi-supervised strategy "
                            f"(ssmis.engines.SemiSupervisedTrainer); {type(engine).__name__} has none: a supervised "
                            "bundle makes no pseudo-labels to score")
        engine.strategy.report_pseudo_labels = True

    def __call__(self, engine: Engine) -> None:
        output: Any = engine.state.output
        reference = getattr(engine.state, "unlabeled_reference", None)
        if reference is None or not isinstance(output, dict):
            return
        aligned = engine.strategy.align_reference(reference)
        scores = {}
        for key, pseudo in output.items():
            if key.startswith(PREFIX):
                dice, wrong = pseudo_label_scores(pseudo, aligned, self.num_classes)
                name = key[len(PREFIX):]
                scores[f"pseudo_quality/{name}/dice"] = torch.tensor(dice)
                scores[f"pseudo_quality/{name}/wrong"] = torch.tensor(wrong)
        output.update(scores)
