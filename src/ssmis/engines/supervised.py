"""Supervised training on the labelled batch alone: the baseline every semi-supervised method is compared with."""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn as nn

from .strategy import Strategy

__all__ = ["SupervisedStrategy"]


class SupervisedStrategy(Strategy):
    """Labelled data only: ``loss = loss_function(network(image), label)``; the unlabelled batch is ignored."""

    def __init__(self, network: nn.Module, loss_function: Callable) -> None:
        self.network, self.loss_function = network, loss_function
        self.networks = (network,)

    def __call__(self, engine: Any, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
                 ) -> dict[str, torch.Tensor]:
        """``{"loss", "loss/sup"}`` on the labelled ``image`` ``[B_l, C, *S]`` and ``label`` ``[B_l, 1, *S]``."""
        loss = self.loss_function(self.forward(engine, self.network, labeled["image"]), labeled["label"])
        return {"loss": loss, "loss/sup": loss}
