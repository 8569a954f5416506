"""The V-Net of the semi-supervised segmentation literature (UA-MT / SS-Net / BCP variant).

MONAI's ``monai.networks.nets.VNet`` is a different, wider network (about 45 M parameters, residual stages with
PReLU and 5×5×5 kernels). The semi-supervised LA results are all reported with this narrower one: plain 3×3×3
conv–BN–ReLU stages with additive skip connections, 16 base filters, about 9.4 M parameters for two classes. It is
built here from MONAI's ``Convolution`` block because no MONAI network has this exact topology.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from monai.networks.blocks import Convolution
from monai.networks.layers import Conv, Dropout

__all__ = ["VNet"]


def _stage(dims: int, n: int, cin: int, cout: int, norm: str | tuple) -> nn.Sequential:
    """``n`` 3×3(×3) conv–norm–ReLU layers; the first maps ``cin`` to ``cout`` channels."""
    return nn.Sequential(
        *[
            Convolution(dims, cin if i == 0 else cout, cout, kernel_size=3, act="RELU", norm=norm, bias=True)
            for i in range(n)
        ]
    )


def _down(dims: int, cin: int, cout: int, norm: str | tuple) -> Convolution:
    """Stride-2, kernel-2 convolution halving every spatial size."""
    return Convolution(dims, cin, cout, strides=2, kernel_size=2, padding=0, act="RELU", norm=norm, bias=True)


def _up(dims: int, cin: int, cout: int, norm: str | tuple) -> Convolution:
    """Stride-2, kernel-2 transposed convolution doubling every spatial size."""
    return Convolution(
        dims, cin, cout, strides=2, kernel_size=2, padding=0, output_padding=0,
        act="RELU", norm=norm, bias=True, is_transposed=True,
    )


class VNet(nn.Module):
    """Literature V-Net: encoder stages of 1, 2, 3, 3, 3 convolutions, decoder stages of 3, 3, 2, 1.

    Args:
        spatial_dims: 3 (default) or 2.
        in_channels: input channels.
        out_channels: number of classes; the last layer is a 1×1(×1) convolution ``out_conv``.
        features: base filters (16 in the literature); stage ``k`` has ``features·2^k`` channels.
        norm: MONAI norm name, ``"batch"`` as in the literature.
        dropout: dropout probability on the bottleneck and before the classifier (0.5 in UA-MT; 0 disables).

    Input ``[B, in_channels, *S]`` with every size in ``S`` divisible by 16; output logits
    ``[B, out_channels, *S]``.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 2,
        features: int = 16,
        norm: str | tuple = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        d, f = spatial_dims, features
        self.block_one = _stage(d, 1, in_channels, f, norm)
        self.block_one_dw = _down(d, f, 2 * f, norm)
        self.block_two = _stage(d, 2, 2 * f, 2 * f, norm)
        self.block_two_dw = _down(d, 2 * f, 4 * f, norm)
        self.block_three = _stage(d, 3, 4 * f, 4 * f, norm)
        self.block_three_dw = _down(d, 4 * f, 8 * f, norm)
        self.block_four = _stage(d, 3, 8 * f, 8 * f, norm)
        self.block_four_dw = _down(d, 8 * f, 16 * f, norm)
        self.block_five = _stage(d, 3, 16 * f, 16 * f, norm)
        self.block_five_up = _up(d, 16 * f, 8 * f, norm)
        self.block_six = _stage(d, 3, 8 * f, 8 * f, norm)
        self.block_six_up = _up(d, 8 * f, 4 * f, norm)
        self.block_seven = _stage(d, 3, 4 * f, 4 * f, norm)
        self.block_seven_up = _up(d, 4 * f, 2 * f, norm)
        self.block_eight = _stage(d, 2, 2 * f, 2 * f, norm)
        self.block_eight_up = _up(d, 2 * f, f, norm)
        self.block_nine = _stage(d, 1, f, f, norm)
        self.dropout = Dropout[Dropout.DROPOUT, d](p=dropout) if dropout > 0 else nn.Identity()
        self.out_conv = Conv[Conv.CONV, d](f, out_channels, kernel_size=1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encoder features ``[x1, …, x5]``; ``x5`` (the bottleneck, ``16·features`` channels at 1/16 size) is
        the deepest."""
        # four stride-2 stages: otherwise the additive skips fail later with a bare size mismatch
        # (a plain loop and string concatenation: the export compiles this with torch.jit.script)
        for size in x.shape[2:]:
            if size % 16 != 0:
                raise ValueError("VNet: every spatial size of the input must be a multiple of 16, got "
                                 + str(x.shape[2:]) + "; choose a patch_size (and roi size) of multiples of 16")
        x1 = self.block_one(x)
        x2 = self.block_two(self.block_one_dw(x1))
        x3 = self.block_three(self.block_two_dw(x2))
        x4 = self.block_four(self.block_three_dw(x3))
        x5 = self.dropout(self.block_five(self.block_four_dw(x4)))
        return [x1, x2, x3, x4, x5]

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """Decoder: additive skips, then dropout and the 1×1 classifier. Returns logits."""
        x1, x2, x3, x4, x5 = feats
        x = self.block_six(self.block_five_up(x5) + x4)
        x = self.block_seven(self.block_six_up(x) + x3)
        x = self.block_eight(self.block_seven_up(x) + x2)
        x = self.block_nine(self.block_eight_up(x) + x1)
        return self.out_conv(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
