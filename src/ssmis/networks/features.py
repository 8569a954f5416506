"""Reading the features that feed a network's final 1×1(×1) convolution, with that layer's weight and bias.

TSA (transferable semantic augmentation) works on exactly these: the classifier input ``a`` of every voxel and
the classifier ``(W, b)``. Any network whose last layer is a 1×1 convolution qualifies: ``ssmis.networks.VNet``,
``monai.networks.nets.BasicUNet``, ``UNet`` built that way, and so on.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .unwrap import unwrap_module

__all__ = ["find_classifier", "ClassifierFeatures", "LayerFeatures"]


def find_classifier(network: nn.Module) -> nn.Module:
    """The last convolution registered in ``network`` whose kernel is all ones (its 1×1(×1) classifier).

    Raises ``ValueError`` when the network has none, or when a later layer than that convolution holds parameters
    (then it is not the final layer).
    """
    network = unwrap_module(network)
    last_name, last = None, None
    names = []
    for name, m in network.named_modules():
        if list(m.parameters(recurse=False)):
            names.append(name)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and all(k == 1 for k in m.kernel_size):
            last_name, last = name, m
    if last is None:
        raise ValueError(f"{type(network).__name__} has no 1x1 convolution to use as the classifier")
    if names and names[-1] != last_name:
        raise ValueError(
            f"{type(network).__name__}: the 1x1 convolution {last_name!r} is not the last layer with parameters "
            f"({names[-1]!r} follows it)"
        )
    return last


class ClassifierFeatures:
    """Capture the classifier input of every forward pass of ``network``.

    Usage::

        tap = ClassifierFeatures(net)
        logits = net(x)            # [B, C, *S]
        a = tap.features           # [B, A, *S], the input of the final 1×1 convolution (with grad)
        w, b = tap.weight, tap.bias  # [C, A], [C]

    The hook holds only the most recent forward pass; ``remove()`` detaches it.
    """

    def __init__(self, network: nn.Module) -> None:
        self.classifier = find_classifier(network)
        self.features: torch.Tensor | None = None
        self._handle = self.classifier.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        self.features = inputs[0]

    @property
    def weight(self) -> torch.Tensor:
        """Classifier weight as ``[C, A]``."""
        w = self.classifier.weight
        return w.reshape(w.shape[0], w.shape[1])

    @property
    def bias(self) -> torch.Tensor:
        """Classifier bias ``[C]`` (zeros when the layer has none)."""
        b = self.classifier.bias
        return b if b is not None else self.weight.new_zeros(self.weight.shape[0])

    def remove(self) -> None:
        self._handle.remove()
        self.features = None


class LayerFeatures:
    """Capture the output of the submodule ``layer`` (a name from ``named_modules()``) on every forward pass.

    Used for deep encoder features, e.g. ``"down_4"`` of ``BasicUNet`` or ``"block_five"`` of ``ssmis.networks.VNet``:
    ``tap.features`` is ``[B, A, *S']`` after each forward.
    """

    def __init__(self, network: nn.Module, layer: str) -> None:
        modules = dict(unwrap_module(network).named_modules())
        if layer not in modules:
            raise ValueError(f"{type(unwrap_module(network)).__name__} has no layer {layer!r}")
        self.features: torch.Tensor | None = None
        self._handle = modules[layer].register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        self.features = output

    def remove(self) -> None:
        self._handle.remove()
        self.features = None
