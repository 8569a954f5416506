"""``SemiSupervisedTrainer``: one MONAI trainer for every semi-supervised method.

Each iteration draws a labelled batch (the engine's data loader) and an unlabelled batch (a second loader,
shuffled on its own and recycled when exhausted), hands both to a *strategy* that returns the losses, then
back-propagates and steps every optimiser. Methods differ only in their strategy and handlers, never in the engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.metrics import Metric
from monai.engines.trainer import Trainer
from monai.engines.workflow import Workflow
from monai.inferers import Inferer, SimpleInferer
from monai.data import MetaTensor
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from ..utils.distributed import get_world_size
from .strategy import Strategy

__all__ = ["REFERENCE_KEY", "SemiSupervisedTrainer", "scalar_terms"]


#: the key of an unlabelled record's label, read only by diagnostics (never handed to a strategy)
REFERENCE_KEY = "reference_label"


def scalar_terms(output: Any) -> dict[str, float]:
    """The scalar entries of an iteration output (loss terms, weights): an ``output_transform`` for
    ``TensorBoardStatsHandler``/``StatsHandler`` that logs every term under its own name."""
    if isinstance(output, list):  # decollated
        output = output[0] if output else {}
    out = {}
    for k, v in output.items():
        if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1):
            out[k] = float(v)
    return out


def _to_device(batch: Mapping[str, Any], keys: Sequence[str], device: torch.device, non_blocking: bool) -> dict:
    """``keys`` of ``batch`` on ``device`` as plain tensors: strategies slice and mix batches, which MONAI's
    ``MetaTensor`` refuses when the items' metadata differ (and its per-operation bookkeeping costs time)."""
    return {k: _plain(batch[k]).to(device, non_blocking=non_blocking) for k in keys if k in batch}


def _plain(x: Any) -> Any:
    return x.as_tensor() if isinstance(x, MetaTensor) else x


def _check_draws_a_batch(name: str, loader: Iterable | None) -> None:
    """Raise if ``loader`` holds records but yields no batch (``drop_last`` with fewer records than a batch).

    Ignite would run every epoch with zero iterations and only warn; a run would then "finish" and save an untrained
    model. An empty unlabelled dataset is allowed (a supervised control), an empty labelled one is not.
    """
    dataset = getattr(loader, "dataset", None)
    if not isinstance(loader, DataLoader) or not hasattr(dataset, "__len__"):
        return
    try:
        n, batches = len(dataset), len(loader)  # type: ignore[arg-type]
    except TypeError:  # an iterable dataset: its length is unknown
        return
    sampler = getattr(loader, "sampler", None)
    here = len(sampler) if isinstance(sampler, DistributedSampler) else n  # this process's share under DDP
    if batches == 0 and (n > 0 or name == "labelled"):
        share = f" ({here} for this process)" if here != n else ""
        raise ValueError(
            f"the {name} data loader yields no batch: {n} record(s){share}, batch size {loader.batch_size}, "
            f"drop_last {loader.drop_last}; add {name} records or lower the batch size"
        )


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every element of every tensor is finite, with one host synchronisation."""
    if not tensors:
        return True
    flags = [torch.isfinite(t.coalesce().values() if t.is_sparse else t).all() for t in tensors]
    return bool(torch.stack([f.to(flags[0].device) for f in flags]).all())


def _has_len(loader: Iterable) -> bool:
    try:
        len(loader)  # type: ignore[arg-type]
    except TypeError:
        return False
    return True


class SemiSupervisedTrainer(Trainer):
    """Iteration-based semi-supervised trainer built on ``monai.engines.Trainer``.

    Args:
        device: where batches are moved.
        max_epochs: epochs to run; with ``epoch_length`` = validation interval this is the iteration budget.
        train_data_loader: labelled loader; batches are dicts with ``image`` ``[B, C, *S]`` and ``label``
            ``[B, 1, *S]``.
        unlabeled_data_loader: unlabelled loader (``image`` only); None or empty degrades to supervised training.
        strategy: the method: ``strategy(engine, labeled, unlabeled) -> dict`` holding ``"loss"``.
        optimizers: one optimiser or several (co-training); all are zeroed, and stepped after one backward pass
            of the total loss (pseudo-labels are detached, so each network receives only its own gradients).
        epoch_length: iterations per epoch (the validation interval); required when the labelled loader has no
            length (an iterable dataset).
        amp: autocast the strategy: float16 with a ``GradScaler`` on CUDA; on the CPU only with
            ``amp_dtype=torch.bfloat16``.
        amp_dtype: autocast dtype (default float16 on CUDA, bfloat16 on the CPU).
        inferer: the forward pass of the trained networks (default ``SimpleInferer``); strategies call it
            through ``Strategy.forward``.
        train_handlers, key_train_metric, additional_metrics, postprocessing, metric_cmp_fn, event_names,
        event_to_attr, decollate, non_blocking: as in ``monai.engines.SupervisedTrainer``.

    ``engine.state.output`` after each iteration is the strategy's dict with detached scalars; it fires
    ``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED`` like MONAI's trainers.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable | DataLoader,
        strategy: Strategy,
        optimizers: Optimizer | Sequence[Optimizer] | Mapping[str, Optimizer],
        unlabeled_data_loader: Iterable | DataLoader | None = None,
        epoch_length: int | None = None,
        non_blocking: bool = False,
        postprocessing: Callable | None = None,
        inferer: Inferer | None = None,
        key_train_metric: dict[str, Metric] | None = None,
        additional_metrics: dict[str, Metric] | None = None,
        metric_cmp_fn: Callable | None = None,
        train_handlers: Sequence | None = None,
        amp: bool = False,
        amp_dtype: torch.dtype | None = None,
        event_names: list | None = None,
        event_to_attr: dict | None = None,
        decollate: bool = False,
    ) -> None:
        kwargs = {} if metric_cmp_fn is None else {"metric_cmp_fn": metric_cmp_fn}
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            data_loader=train_data_loader,
            epoch_length=epoch_length,
            non_blocking=non_blocking,
            iteration_update=None,
            postprocessing=postprocessing,
            key_metric=key_train_metric,
            additional_metrics=additional_metrics,
            handlers=train_handlers,
            amp=amp,
            event_names=event_names,
            event_to_attr=event_to_attr,
            decollate=decollate,
            **kwargs,
        )
        self.strategy = strategy
        # the trained networks' forward passes go through it (``Strategy.forward``), as in MONAI's trainers
        self.inferer = SimpleInferer() if inferer is None else inferer
        if isinstance(optimizers, Optimizer):
            optimizers = [optimizers]
        self.optimizers = list(optimizers.values()) if isinstance(optimizers, Mapping) else list(optimizers)
        self.unlabeled_data_loader = unlabeled_data_loader
        self._unlabeled_iter: Iterator | None = None
        self._unlabeled_pass = 0
        self._warned_supervised = False
        device_type = torch.device(device).type
        self.amp_dtype = amp_dtype or (torch.float16 if device_type == "cuda" else torch.bfloat16)
        self.amp_device_type = device_type
        self._batches_this_pass = 0
        self.add_event_handler(Events.STARTED, self._count_batches, 0)
        self.add_event_handler(Events.GET_BATCH_COMPLETED, self._count_batches, 1)
        self.add_event_handler(Events.DATALOADER_STOP_ITERATION, self._check_pass_drew_a_batch)
        strategy.attach(self)

    def _count_batches(self, _: Engine, step: int) -> None:
        """``step`` 0 resets the count of labelled batches drawn in this pass over the loader, 1 adds one."""
        self._batches_this_pass = self._batches_this_pass + 1 if step else 0

    def _check_pass_drew_a_batch(self, _: Engine) -> None:
        """Raise when a full pass over the labelled loader drew no batch.

        ``run`` checks sized loaders up front; this catches the rest (an ``IterableDataset``, or a custom iterable,
        that yields nothing). It fires on ignite's ``DATALOADER_STOP_ITERATION``, before the epoch's handlers, so
        no checkpoint of an untrained model is saved.
        """
        if self._batches_this_pass == 0:
            raise ValueError("the labelled data loader yields no batch: a full pass over it drew nothing (an "
                             "empty iterable dataset, or fewer records than a batch with drop_last)")
        self._batches_this_pass = 0

    def run(self) -> None:  # type: ignore[override]
        for name, loader in (("labelled", self.data_loader), ("unlabelled", self.unlabeled_data_loader)):
            _check_draws_a_batch(name, loader)
        if self.state.epoch_length is None and not _has_len(self.data_loader):
            # ignite would take the first pass's length as the epoch length; a pass that draws nothing then gives
            # epochs of 0 iterations, with no DATALOADER_STOP_ITERATION to catch it, and the run "completes"
            raise ValueError("the labelled data loader has no length (an iterable dataset): pass epoch_length, the "
                             "iterations per epoch (also when resuming: it is checked before the checkpoint loads)")
        # MONAI's Trainer.run always makes a CUDA GradScaler when amp is on; it is needed only for float16 on CUDA
        use_scaler = self.amp and self.amp_device_type == "cuda" and self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        Workflow.run(self)

    def next_unlabeled(self) -> dict[str, torch.Tensor] | None:
        """The next unlabelled batch on the engine's device, restarting the loader when exhausted; None if empty."""
        loader = self.unlabeled_data_loader
        if loader is None:
            return None
        for _ in range(2):
            if self._unlabeled_iter is None:
                sampler = getattr(loader, "sampler", None)
                if isinstance(sampler, DistributedSampler):
                    sampler.set_epoch(self._unlabeled_pass)
                self._unlabeled_pass += 1
                self._unlabeled_iter = iter(loader)
            try:
                batch = next(self._unlabeled_iter)
            except StopIteration:
                # a fresh iterator that is empty at once means no unlabelled data: degrade to supervised
                self._unlabeled_iter = None
                continue
            # a diagnostic reference label (ssmis.handlers.PseudoLabelQuality) stays here, out of the strategy's reach
            self.state.unlabeled_reference = batch.get(REFERENCE_KEY) if isinstance(batch, Mapping) else None
            return _to_device(batch, (Keys.IMAGE,), self.state.device, self.non_blocking)
        if not self._warned_supervised:  # a fresh iterator was empty at once
            self._warned_supervised = True
            self.logger.warning("the unlabelled data loader drew no batch: training on labelled data only")
        return None

    def _refuse_non_finite(self, what: str, terms: Mapping[str, Any]) -> None:
        """Raise ``FloatingPointError`` naming the iteration, ``what`` is not finite, and every scalar loss term."""
        parts = ", ".join(f"{k} {float(v):.4g}" for k, v in terms.items()
                          if isinstance(v, (int, float)) or (torch.is_tensor(v) and v.numel() == 1))
        hint = f"; autocast to {self.amp_dtype} is on, try amp off" if self._autocast_on() else ""
        raise FloatingPointError(f"iteration {self.state.iteration}: {what} is not finite ({parts}); stopped before "
                                 f"the optimiser step, weights unchanged{hint}")

    def _autocast_on(self) -> bool:
        return bool(self.amp) and not (self.amp_device_type == "cpu" and self.amp_dtype != torch.bfloat16)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self._autocast_on():
            return contextlib.nullcontext()
        return torch.autocast(self.amp_device_type, dtype=self.amp_dtype)

    def _iteration(self, engine: SemiSupervisedTrainer,  # type: ignore[override]
                   batchdata: dict[str, torch.Tensor]) -> dict:
        """One iteration: draw both batches, run the strategy, back-propagate, step every optimiser."""
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        labeled = _to_device(batchdata, (Keys.IMAGE, Keys.LABEL), engine.state.device, engine.non_blocking)
        unlabeled = engine.next_unlabeled()
        engine.strategy.train()
        for opt in engine.optimizers:
            opt.zero_grad(set_to_none=True)
        with engine._autocast():
            terms = engine.strategy(engine, labeled, unlabeled)
        if Keys.LOSS not in terms:
            raise KeyError(f"{type(engine.strategy).__name__} returned no 'loss' (it returned {sorted(terms)})")
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss = terms[Keys.LOSS]
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        if engine.scaler is not None:
            engine.scaler.scale(loss).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            for opt in engine.optimizers:
                engine.scaler.step(opt)
            engine.scaler.update()
        else:
            # without a GradScaler nothing skips a bad step: a NaN would reach every weight and then the next
            # checkpoint, so stop before the step, with the weights and checkpoints as they were
            # (with several processes only the gradient check: every rank sees the same all-reduced gradients and
            # stops together, where one rank stopping on its own loss would leave the others waiting in the backward
            # all-reduce)
            if get_world_size() == 1 and not torch.isfinite(loss.detach()).all():
                engine._refuse_non_finite("the loss", terms)
            loss.backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            if not _all_finite([q.grad for opt in engine.optimizers for g in opt.param_groups for q in g["params"]
                                if q.grad is not None]):
                engine._refuse_non_finite("a gradient", terms)
            for opt in engine.optimizers:
                opt.step()
        engine.state.output = {k: (v.detach() if torch.is_tensor(v) else v) for k, v in terms.items()}
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
