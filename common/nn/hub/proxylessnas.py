"""The ProxylessNAS search space (Cai et al., 2019, https://arxiv.org/abs/1812.00332), and the
MobileNet building blocks the hub's spaces share.

Each searched layer is an MBConv (inverted-residual) block whose kernel size and expansion ratio
are one LayerChoice over every combination (``'k3e6'``: kernel 3, expansion 6), as in the paper,
where each combination is its own path with its own weights; each stage's depth is a ``Repeat``.
Labels follow NNI's hub (``s2_depth``, ``s2_i0``), so its published architectures load as they are.
Widths, strides, depths and the candidate lists are constructor arguments, which scale the space
down to 8x8 grey digits.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ..choices import LayerChoice, ValueChoice
from ..expressions import is_choice
from ..repeat import Repeat
from ..space import ModelSpace

__all__ = [
    "ConvBNReLU",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "ProxylessNAS",
    "init_weights",
    "make_divisible",
]

_log = logging.getLogger(__name__)

# A width, a kernel size or a ratio: a plain number, a ValueChoice or an expression of choices.
MaybeChoice = Any
NormFactory = Callable[[Any], nn.Module]
ActFactory = Callable[[], nn.Module]


def make_divisible(value: MaybeChoice, divisor: int = 8, min_value: int | None = None) -> MaybeChoice:
    """``value`` rounded to a multiple of ``divisor`` (at least ``min_value``), never more than 10%
    below it: MobileNet's channel rule. A choice gives an expression of it, a number a number."""
    floor = divisor if min_value is None else min_value
    rounded = ValueChoice.max(floor, round(value + divisor / 2) // divisor * divisor)
    return ValueChoice.condition(rounded < 0.9 * value, rounded + divisor, rounded)


def _same_padding(kernel_size: MaybeChoice, dilation: int = 1) -> MaybeChoice:
    return (kernel_size - 1) // 2 * dilation


class ConvBNReLU(nn.Sequential):
    """Conv2d, then a normalization (BatchNorm2d unless told; the conv has a bias only without one),
    then an activation (ReLU6 unless told). Channels and kernel size may be choices."""

    def __init__(
        self,
        in_channels: MaybeChoice,
        out_channels: MaybeChoice,
        kernel_size: MaybeChoice = 3,
        stride: int = 1,
        groups: MaybeChoice = 1,
        norm_layer: NormFactory | None = None,
        activation_layer: ActFactory | None = None,
    ) -> None:
        norm = (norm_layer or nn.BatchNorm2d)(out_channels)
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                _same_padding(kernel_size),
                groups=groups,
                bias=isinstance(norm, nn.Identity),
            )
        ]
        if not isinstance(norm, nn.Identity):
            layers.append(norm)
        activation = (activation_layer or _relu6)()
        if not isinstance(activation, nn.Identity):
            layers.append(activation)
        super().__init__(*layers)


def _relu6() -> nn.Module:
    return nn.ReLU6(inplace=True)


def _identity() -> nn.Module:
    return nn.Identity()


class _Residual(nn.Sequential):
    """A sequence of layers that adds its input to its output when ``residual`` (same shape both ends).

    Built as MobileNetV2's blocks end: the ``head`` layers, a depthwise ``kernel_size`` conv at ``hidden``
    channels, an optional ``squeeze_excite(hidden, in_channels)``, a linear 1x1 projection to
    ``out_channels``; ``residual`` holds only at stride 1.
    """

    residual: bool

    def __init__(
        self,
        head: list[nn.Module],
        hidden: MaybeChoice,
        in_channels: MaybeChoice,
        out_channels: MaybeChoice,
        kernel_size: MaybeChoice,
        stride: int,
        squeeze_excite: Callable[[Any, Any], nn.Module] | None,
        activation_layer: ActFactory | None,
        residual: bool,
    ) -> None:
        layers = [
            *head,
            ConvBNReLU(hidden, hidden, kernel_size, stride, groups=hidden, activation_layer=activation_layer),
        ]
        if squeeze_excite is not None:
            layers.append(squeeze_excite(hidden, in_channels))
        layers.append(ConvBNReLU(hidden, out_channels, 1, activation_layer=_identity))
        super().__init__(*layers)
        self.residual = residual and stride == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self:
            out = layer(out)
        return x + out if self.residual else out


class DepthwiseSeparableConv(_Residual):
    """Depthwise conv, an optional squeeze-excite, a pointwise linear conv (MobileNetV2's block with
    expansion 1). ``residual`` is decided by the space, from its arguments (never from the value of a
    choice, so the supernet and every frozen model agree)."""

    def __init__(
        self,
        in_channels: MaybeChoice,
        out_channels: MaybeChoice,
        kernel_size: MaybeChoice = 3,
        stride: int = 1,
        squeeze_excite: Callable[[Any, Any], nn.Module] | None = None,
        activation_layer: ActFactory | None = None,
        residual: bool = False,
    ) -> None:
        super().__init__(
            [],
            in_channels,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            squeeze_excite,
            activation_layer,
            residual,
        )


class InvertedResidual(_Residual):
    """MBConv (MobileNetV2): a 1x1 expansion to ``in_channels * expand_ratio`` channels (rounded to a
    multiple of 8), a depthwise ``kernel_size`` conv, an optional squeeze-excite, a 1x1 projection.

    ``squeeze_excite(hidden_channels, in_channels)`` builds the SE layer. Any of the channels, the
    ratio and the kernel size may be choices.
    """

    def __init__(
        self,
        in_channels: MaybeChoice,
        out_channels: MaybeChoice,
        expand_ratio: MaybeChoice,
        kernel_size: MaybeChoice = 3,
        stride: int = 1,
        squeeze_excite: Callable[[Any, Any], nn.Module] | None = None,
        activation_layer: ActFactory | None = None,
        residual: bool = False,
    ) -> None:
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual stride must be 1 or 2, got {stride!r}")
        hidden = make_divisible(in_channels * expand_ratio, 8)
        expand = ConvBNReLU(in_channels, hidden, 1, activation_layer=activation_layer)
        super().__init__(
            [expand],
            hidden,
            in_channels,
            out_channels,
            kernel_size,
            stride,
            squeeze_excite,
            activation_layer,
            residual,
        )


def init_weights(model: nn.Module, bn_momentum: float = 0.1, bn_eps: float = 1e-3) -> None:
    """He (fan-out) normal convs, small normal linears, unit batch norms with the given momentum and eps:
    the initialization the MobileNet family trains from."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.momentum = bn_momentum
            module.eps = bn_eps
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.01)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def _check_length(name: str, values: Sequence[Any], length: int) -> None:
    if len(values) != length:
        raise ValueError(f"{name} needs {length} entries, got {len(values)}: {list(values)!r}")


class ProxylessNAS(ModelSpace):
    """ProxylessNAS's mobile space: a stem, a fixed depthwise-separable stage, six searched MBConv
    stages, a 1x1 feature-mix conv, pooling and a linear classifier.

    Each block of stages 2..7 is a LayerChoice labelled ``s<stage>_i<index>`` over
    ``k<kernel>e<expansion>`` for every kernel size and expansion ratio; stages 2..6 have a depth
    ``Repeat`` labelled ``s<stage>_depth`` over ``depth_range``, stage 7 one block. With
    ``zero_op=True`` every block but a stage's first (where input and output shapes match) also has
    the paper's ``'zero'`` candidate: the block reduced to its shortcut, the identity.

    ``base_widths`` are the stem's, the seven stages' and the feature mix's widths (9), scaled by
    ``width_mult`` and rounded to multiples of 8; ``downsamples`` says which of the stem and the
    seven stages halve the resolution (8). The defaults are the paper's ImageNet space; for 8x8
    digits use ``in_channels=1``, small widths and two downsamples.
    """

    def __init__(
        self,
        num_labels: int = 1000,
        base_widths: Sequence[int] = (32, 16, 32, 40, 80, 96, 192, 320, 1280),
        dropout_rate: float = 0.0,
        width_mult: float = 1.0,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        *,
        in_channels: int = 3,
        downsamples: Sequence[bool] = (True, False, True, True, True, False, True, False),
        expand_ratios: Sequence[int] = (3, 6),
        kernel_sizes: Sequence[int] = (3, 5, 7),
        depth_range: tuple[int, int] = (1, 4),
        zero_op: bool = False,
    ) -> None:
        super().__init__()
        _check_length("ProxylessNAS base_widths", base_widths, 9)
        _check_length("ProxylessNAS downsamples", downsamples, 8)
        if not expand_ratios or not kernel_sizes:
            raise ValueError("ProxylessNAS needs at least one expansion ratio and one kernel size")
        widths = [make_divisible(w * width_mult, 8) for w in base_widths]
        self.num_labels = num_labels
        self.dropout_rate = dropout_rate

        self.stem = ConvBNReLU(in_channels, widths[0], 3, 2 if downsamples[0] else 1)
        stages: list[nn.Module] = [
            DepthwiseSeparableConv(
                widths[0],
                widths[1],
                3,
                2 if downsamples[1] else 1,
                activation_layer=_relu6,
                residual=widths[0] == widths[1],
            )
        ]
        for stage in range(2, 8):
            builder = _mbconv_choice_builder(
                expand_ratios,
                kernel_sizes,
                2 if downsamples[stage] else 1,
                widths[stage - 1],
                widths[stage],
                f"s{stage}",
                zero_op,
            )
            if stage < 7:
                stages.append(Repeat(builder, depth_range, label=f"s{stage}_depth"))
            else:
                stages.append(builder(0))  # the last stage has one block, not searched in depth
        self.blocks = nn.Sequential(*stages)
        self.feature_mix_layer = ConvBNReLU(widths[7], widths[8], 1)
        self.global_avg_pooling = nn.AdaptiveAvgPool2d(1)
        self.dropout_layer = nn.Dropout(dropout_rate)
        self.classifier = nn.Linear(widths[8], num_labels)
        init_weights(self, bn_momentum=bn_momentum, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_mix_layer(self.blocks(self.stem(x)))
        x = self.global_avg_pooling(x).flatten(1)
        logits: torch.Tensor = self.classifier(self.dropout_layer(x))
        return logits


def _mbconv_choice_builder(
    expand_ratios: Sequence[int],
    kernel_sizes: Sequence[int],
    stride: int,
    stage_in: int,
    stage_out: int,
    label: str,
    zero_op: bool,
) -> Callable[[int], nn.Module]:
    """``index -> LayerChoice`` of the MBConv candidates of block ``index`` of a stage (the first one
    changes the width and takes the stride)."""
    if any(is_choice(w) for w in (stage_in, stage_out)):  # this space's widths are plain numbers
        raise TypeError(f"{label}: ProxylessNAS's widths are plain numbers, not choices")

    def build(index: int) -> nn.Module:
        inp, step = (stage_in, stride) if index == 0 else (stage_out, 1)
        candidates: dict[str, nn.Module] = {
            f"k{k}e{e}": InvertedResidual(inp, stage_out, e, k, step, residual=inp == stage_out)
            for e in expand_ratios
            for k in kernel_sizes
        }
        if zero_op and index > 0:
            candidates["zero"] = nn.Identity()  # zero op + shortcut: the block skipped
        return LayerChoice(candidates, label=f"{label}_i{index}")

    return build
