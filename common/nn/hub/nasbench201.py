"""The NAS-Bench-201 network (Dong and Yang, 2020, https://arxiv.org/abs/2001.00326).

A stem, three stacks of :class:`~retia.nn.NasBench201Cell` joined by two residual reduction blocks
(stride 2, twice the width), then batch norm, ReLU, pooling and a linear classifier. Every cell is
labelled ``cell``, as in NNI's hub, so all cells share one decision per edge (``cell/0_1`` ...
``cell/2_3``) over ``none``, ``skip_connect``, ``conv_1x1``, ``conv_3x3``, ``avg_pool_3x3``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn

from ..nasbench import NasBench201Cell
from ..space import ModelSpace
from .darts import ReLUConvBN, Zero

__all__ = ["NasBench201", "ResNetBasicBlock"]

_log = logging.getLogger(__name__)


class _Pool(nn.Sequential):
    """3x3 average pooling, after a 1x1 ReLU-conv-BN when the width changes."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        layers: list[nn.Module] = []
        if in_channels != out_channels:
            layers.append(ReLUConvBN(in_channels, out_channels, 1))
        layers.append(nn.AvgPool2d(3, 1, padding=1, count_include_pad=False))
        super().__init__(*layers)


# (in_features, out_features) -> module; in this network a cell's edges keep width and resolution
_OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda c_in, c_out: Zero(),
    "skip_connect": lambda c_in, c_out: nn.Identity(),
    "conv_1x1": lambda c_in, c_out: ReLUConvBN(c_in, c_out, 1),
    "conv_3x3": lambda c_in, c_out: ReLUConvBN(c_in, c_out, 3, padding=1),
    "avg_pool_3x3": _Pool,
}


class ResNetBasicBlock(nn.Module):
    """Two 3x3 ReLU-conv-BNs (the first with ``stride``) plus a shortcut: the input itself, or average
    pooling and a 1x1 conv where the block halves the resolution, or a 1x1 ReLU-conv-BN where only
    the width changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetBasicBlock stride must be 1 or 2, got {stride!r}")
        self.conv_a = ReLUConvBN(in_channels, out_channels, 3, stride, 1)
        self.conv_b = ReLUConvBN(out_channels, out_channels, 3, 1, 1)
        self.downsample: nn.Module | None = None
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(2, 2), nn.Conv2d(in_channels, out_channels, 1, bias=False)
            )
        elif in_channels != out_channels:
            self.downsample = ReLUConvBN(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out: torch.Tensor = shortcut + self.conv_b(self.conv_a(x))
        return out


class NasBench201(ModelSpace):
    """NAS-Bench-201's network: a 3x3 conv stem to ``stem_out_channels``, ``num_modules_per_stack``
    cells per stack at 1, 2 and 4 times that width, a ResNetBasicBlock halving the resolution between
    stacks, then batch norm, ReLU, global pooling and a ``num_labels`` classifier.

    The defaults are NNI's (CIFAR: 16 channels, 5 cells per stack, 10 labels); for 8x8 digits use
    ``in_channels=1``, 8 channels and one cell per stack.
    """

    def __init__(
        self,
        stem_out_channels: int = 16,
        num_modules_per_stack: int = 5,
        num_labels: int = 10,
        *,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        for name, value in (
            ("stem_out_channels", stem_out_channels),
            ("num_modules_per_stack", num_modules_per_stack),
            ("in_channels", in_channels),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"NasBench201 {name} must be an int >= 1, got {value!r}")
        c, n = stem_out_channels, num_modules_per_stack
        self.channels, self.num_modules, self.num_labels = c, n, num_labels
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.cells = nn.ModuleList()
        prev = c
        for stack in range(3):
            width = c * 2**stack
            if stack > 0:
                self.cells.append(ResNetBasicBlock(prev, width, 2))
            for _ in range(n):
                self.cells.append(NasBench201Cell(_OPS, width, width, label="cell"))
            prev = width
        self.lastact = nn.Sequential(nn.BatchNorm2d(prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.stem(x)
        for cell in self.cells:
            feature = cell(feature)
        logits: torch.Tensor = self.classifier(self.global_pooling(self.lastact(feature)).flatten(1))
        return logits
