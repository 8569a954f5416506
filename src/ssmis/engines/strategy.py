"""The base of every strategy: the per-iteration logic of a method, plugged into ``SemiSupervisedTrainer``.

A strategy receives the labelled batch (``image`` ``[B_l, C, *S]``, ``label`` ``[B_l, 1, *S]``) and the
unlabelled batch (``image`` ``[B_u, C, *S]``, or None when there is no unlabelled data) and returns a dict of
tensors holding the total ``"loss"`` and any named terms to log (``"loss/sup"``, ``"weight/unlabeled"``, …).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from ..tsa import TransferableSemanticAugmentation

__all__ = ["Strategy"]


class Strategy:
    """Base class. Subclasses implement ``__call__`` and list the networks they train in ``networks``.

    With ``report_pseudo_labels`` set (by ``ssmis.handlers.PseudoLabelQuality``), a strategy also returns each
    pseudo-label it trains on as a class map ``[B, 1, *S]`` under ``"pseudo_label/<name>"``, on the grid that
    :meth:`align_reference` maps the unlabelled batch's grid to.

    Transferable Semantic Augmentation plugs into any teacher–student strategy through ``tsa``: the strategy calls
    :meth:`add_tsa` right after the student's forward pass, and :meth:`attach` attaches TSA's λ ramp to the engine
    (so a config need not list it among the handlers, and a TSA whose ramp was never attached cannot stay at λ = 0).
    """

    networks: Sequence[nn.Module] = ()
    report_pseudo_labels: bool = False
    tsa: TransferableSemanticAugmentation | None = None

    def align_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """A tensor ``[B, 1, *S]`` on the unlabelled batch's grid, on the grid of the reported pseudo-labels."""
        return reference

    def attach(self, engine: Any) -> None:
        """Called once by the engine: attaches ``tsa`` (its λ ramp), if any. A subclass that registers handlers of
        its own calls this too."""
        if self.tsa is not None:
            self.tsa.attach(engine)

    def add_tsa(self, out: dict[str, torch.Tensor], loss: torch.Tensor, targets: torch.Tensor,
                source_mask: torch.Tensor) -> torch.Tensor:
        """``loss + β · L_tsa`` for the student's last forward pass, with TSA's terms put in ``out``; ``loss`` as it
        is without ``tsa``.

        Args:
            targets: the class per voxel of that pass ``[B, 1, *S]``: ground truth where ``source_mask``
                ``[B, 1, *S]`` (bool) is true, the teacher's pseudo-label elsewhere.
        """
        if self.tsa is None:
            return loss
        out.update(self.tsa.loss(targets, source_mask))
        return loss + self.tsa.beta * out["loss/tsa"]

    @staticmethod
    def forward(engine: Any, network: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """A trained network's forward pass ``[B, K, *S]``, through the engine's ``inferer`` (its ``train#inferer``,
        ``SimpleInferer`` by default); a plain call for an engine without one (a test's stand-in)."""
        inferer = getattr(engine, "inferer", None)
        return network(x) if inferer is None else inferer(x, network)

    def train(self) -> None:
        """Put the trained networks in training mode (teachers are left as they are)."""
        for net in self.networks:
            net.train()

    def __call__(
        self, engine: Any, labeled: dict[str, torch.Tensor], unlabeled: dict[str, torch.Tensor] | None
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError
