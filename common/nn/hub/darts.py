"""The DARTS search space (Liu et al., 2019, https://arxiv.org/abs/1806.09055), and the
ReLU-conv-BN operations of the cell spaces (DARTS, NAS-Bench-201).

A stem, three stages of :class:`~retia.nn.Cell` (each later stage opens with a reduction cell, which
halves the resolution and doubles the width) over the two previous cells' outputs, global pooling
and a linear classifier. Every cell has 4 nodes of 2 ops, each op a LayerChoice over DARTS's
candidates; all normal cells share one decision (``normal/op_2_0``, ``normal/input_2_0``, ...) and
all reduction cells another (``reduce/...``), NNI's hub's labels, so its architectures load as they
are. Frozen, a cell builds only the chosen ops, and the model drops what the chosen cells never
read (a preprocessor of an unused predecessor, a cell whose output no later cell takes), so every
parameter of the frozen model is trained.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..cell import Cell
from ..choices import ChosenInputs
from ..space import UNUSED_ATTR, ModelSpace

__all__ = ["DARTS", "DilConv", "FactorizedReduce", "ReLUConvBN", "SepConv", "Zero"]

_log = logging.getLogger(__name__)

NUM_NODES = 4
NUM_OPS_PER_NODE = 2
NUM_PREDECESSORS = 2


class ReLUConvBN(nn.Sequential):
    """ReLU, a conv without bias, a batch norm: the cell spaces' pre-activation conv."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class DilConv(nn.Sequential):
    """ReLU, a depthwise (dilated) conv, a pointwise conv, a batch norm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, dilation: int
    ) -> None:
        super().__init__(
            nn.ReLU(inplace=False),
            nn.Conv2d(
                in_channels,
                in_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                groups=in_channels,
                bias=False,
            ),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )


class SepConv(nn.Sequential):
    """Two depthwise-separable convs (the first takes the stride), as DARTS's ``sep_conv``."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int
    ) -> None:
        first = DilConv(in_channels, in_channels, kernel_size, stride, padding, 1)
        second = DilConv(in_channels, out_channels, kernel_size, 1, padding, 1)
        super().__init__(*first, *second)


class Zero(nn.Module):
    """The ``none`` op: zeros of the output's shape (strided like the input would be), kept on the
    autograd graph of its input."""

    def __init__(self, stride: int = 1) -> None:
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return x.mul(0.0)


class FactorizedReduce(nn.Module):
    """Halves the resolution without losing a pixel: two stride-2 1x1 convs, one shifted by a pixel,
    each giving half the output channels (``out_channels`` must be even)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"FactorizedReduce needs an even out_channels, got {out_channels}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.conv_2 = nn.Conv2d(in_channels, out_channels // 2, 1, stride=2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)
        self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        shifted = self.pad(x)[:, :, 1:, 1:]
        out: torch.Tensor = self.bn(torch.cat([self.conv_1(x), self.conv_2(shifted)], dim=1))
        return out


# channels, stride -> module
_OPS: dict[str, Callable[[int, int], nn.Module]] = {
    "none": lambda c, stride: Zero(stride),
    "max_pool_3x3": lambda c, stride: nn.MaxPool2d(3, stride, padding=1),
    "avg_pool_3x3": lambda c, stride: nn.AvgPool2d(3, stride, padding=1, count_include_pad=False),
    "skip_connect": lambda c, stride: nn.Identity() if stride == 1 else FactorizedReduce(c, c),
    "sep_conv_3x3": lambda c, stride: SepConv(c, c, 3, stride, 1),
    "sep_conv_5x5": lambda c, stride: SepConv(c, c, 5, stride, 2),
    "dil_conv_3x3": lambda c, stride: DilConv(c, c, 3, stride, 2, 2),
    "dil_conv_5x5": lambda c, stride: DilConv(c, c, 5, stride, 4, 2),
}


class _Preprocessor(nn.Module):
    """Aligns the two predecessors to the cell's width (the first halved by FactorizedReduce when the
    previous cell reduced). A predecessor no chosen op reads passes through unconverted, unbuilt."""

    def __init__(self, pprev: int, prev: int, channels: int, after_reduce: bool, used: set[int]) -> None:
        super().__init__()
        self.pre0: nn.Module | None = None
        self.pre1: nn.Module | None = None
        if 0 in used:
            self.pre0 = FactorizedReduce(pprev, channels) if after_reduce else ReLUConvBN(pprev, channels, 1)
        if 1 in used:
            self.pre1 = ReLUConvBN(prev, channels, 1)
        unused = [name for i, name in enumerate(("pre0", "pre1")) if i not in used]
        if unused:
            self.__dict__[UNUSED_ATTR] = unused

    def forward(self, cells: list[Any]) -> list[Any]:
        pprev, prev = cells
        return [
            pprev if self.pre0 is None else self.pre0(pprev),
            prev if self.pre1 is None else self.pre1(prev),
        ]


def _chain(this_cell: torch.Tensor, predecessors: list[Any]) -> list[Any]:
    """A cell returns [its previous cell's output, its own], the next cell's predecessors."""
    return [predecessors[-1], this_cell]


class _Unused(nn.Module):
    """A frozen cell whose output no later cell reads: it passes the chain on without computing."""

    def forward(self, cells: list[Any]) -> list[Any]:
        return [cells[-1], None]


def _read_predecessors(cell: Cell) -> set[int]:
    """The predecessors (0: the cell before last, 1: the last) that a frozen cell's chosen ops read;
    both in a supernet."""
    read: set[int] = set()
    all_inputs: Any = cell.inputs
    for node_inputs in all_inputs:
        for inp in node_inputs:
            if not isinstance(inp, ChosenInputs):
                return set(range(NUM_PREDECESSORS))
            chosen = inp.chosen if isinstance(inp.chosen, list) else [inp.chosen]
            read.update(i for i in chosen if isinstance(i, int) and i < NUM_PREDECESSORS)
    return read


class DARTS(ModelSpace):
    """DARTS's cell space: a stem (a 3x3 conv to ``3 * width`` channels), ``num_cells`` cells in three
    stages (the second and third open with a reduction cell: stride 2, twice the width), global
    average pooling and a linear classifier.

    Each cell preprocesses its two predecessors to its width, has 4 nodes, each the sum of 2 ops
    over earlier tensors, and concatenates the nodes. The op candidates are NNI's ``DARTS_OPS``:
    max and average pooling 3x3, skip (FactorizedReduce on a reduction cell's predecessors),
    separable convs 3x3 and 5x5, dilated convs 3x3 and 5x5; ``zero_op=True`` adds DARTS's ``none``
    (NNI leaves it to its differentiable strategy). The defaults are the paper's CIFAR search network
    (``width=16``, ``num_cells=8``); for 8x8 digits use ``in_channels=1`` and a few narrow cells.
    Width and depth are numbers here: NNI's searched ``width`` and ``depth`` are not built yet.
    """

    def __init__(
        self,
        width: int = 16,
        num_cells: int = 8,
        num_labels: int = 10,
        *,
        in_channels: int = 3,
        zero_op: bool = False,
    ) -> None:
        super().__init__()
        for name, value, least in (
            ("width", width, 1),
            ("num_cells", num_cells, 3),
            ("in_channels", in_channels, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                raise ValueError(
                    f"DARTS {name} must be an int >= {least}, got {value!r} "
                    "(a searched width or depth, NNI's tuple form, is not supported yet)"
                )
        if width % 2:
            raise ValueError(f"DARTS width must be even (reduction cells halve channels in two), got {width}")
        ops = [op for op in _OPS if zero_op or op != "none"]
        self.num_labels = num_labels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 3 * width, 3, padding=1, bias=False), nn.BatchNorm2d(3 * width)
        )
        pprev = prev = 3 * width
        channels = width
        after_reduce = False
        cells: list[list[Cell]] = []
        reads: list[set[int]] = []
        for stage in range(3):
            depth = (stage + 1) * num_cells // 3 - stage * num_cells // 3
            if stage > 0:
                channels *= 2
            cells.append([])
            for index in range(depth):
                reduce = stage > 0 and index == 0
                cell = Cell(
                    {op: _op_factory(op, channels, reduce) for op in ops},
                    NUM_NODES,
                    NUM_OPS_PER_NODE,
                    NUM_PREDECESSORS,
                    postprocessor=_chain,
                    label="reduce" if reduce else "normal",
                )
                read = _read_predecessors(cell)
                cell.preprocessor = _Preprocessor(pprev, prev, channels, after_reduce, read)
                cells[-1].append(cell)
                reads.append(read)
                pprev, prev, after_reduce = prev, channels * NUM_NODES, reduce
        live = _live_cells(reads)
        self.stages = nn.ModuleList()
        position = 0
        for stage_cells in cells:
            stage_modules = nn.Sequential()
            unused: list[str] = []
            for index, cell in enumerate(stage_cells):
                built: nn.Module = cell
                if not live[position]:  # frozen only: a supernet's cells read both predecessors
                    built, unused = _Unused(), [*unused, str(index)]
                stage_modules.append(built)
                position += 1
            if unused:
                stage_modules.__dict__[UNUSED_ATTR] = unused
            self.stages.append(stage_modules)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(prev, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for stage in self.stages:
            s0, s1 = stage([s0, s1])
        logits: torch.Tensor = self.classifier(self.global_pooling(s1).flatten(1))
        return logits


def _op_factory(op: str, channels: int, reduce: bool) -> Callable[[int, int, int], nn.Module]:
    """Cell's ``(node, op index, input index) -> module``: stride 2 on a reduction cell's predecessors."""

    def make(node: int, k: int, input_index: int) -> nn.Module:
        return _OPS[op](channels, 2 if reduce and input_index < NUM_PREDECESSORS else 1)

    return make


def _live_cells(reads: Sequence[set[int]]) -> list[bool]:
    """Which cells some path to the classifier reads: the last one, and a cell read by the next
    (as its predecessor 1) or the one after (as its predecessor 0) when that one is live."""
    n = len(reads)
    live = [False] * n
    for i in range(n - 1, -1, -1):
        live[i] = (
            i == n - 1
            or (live[i + 1] and 1 in reads[i + 1])
            or (i + 2 < n and live[i + 2] and 0 in reads[i + 2])
        )
    return live
