"""The MobileNetV3 search space of TuNAS (Bender et al., 2020, https://arxiv.org/abs/2008.06120).

Unlike ProxylessNAS, the decisions sit inside the layers' arguments: each stage's width is a
ValueChoice of width multipliers (one label per stage, shared by every layer of that width, so the
stage stays consistent), each block's expansion ratio and kernel size are ValueChoices, each stage's
depth is a ``Repeat``, and a squeeze-excite layer may be a LayerChoice ``identity`` / ``se``.
Labels follow NNI's hub (``s1_width_mult``, ``s1_i0_exp``, ``s1_i0_ks``, ``s1_i0_se``,
``s1_depth``, ``stem_ks``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..choices import LayerChoice, ValueChoice
from ..repeat import Repeat
from ..space import ModelSpace
from .proxylessnas import (
    ConvBNReLU,
    DepthwiseSeparableConv,
    InvertedResidual,
    MaybeChoice,
    _check_length,
    init_weights,
    make_divisible,
)

__all__ = ["MobileNetV3Space", "SqueezeExcite"]

_log = logging.getLogger(__name__)

SEMode = Literal["force", "optional", "none"]
Activation = Literal["hswish", "swish", "relu"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "hswish": lambda: nn.Hardswish(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "relu": lambda: nn.ReLU(inplace=True),
}


def _activation(name: str) -> Callable[[], nn.Module]:
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; use one of {sorted(_ACTIVATIONS)}") from None


class SqueezeExcite(nn.Module):
    """Squeeze-and-excite: the channels' global means through a 1x1 bottleneck (a quarter of the
    channels, rounded to 8) and a hard-sigmoid gate, which rescales each channel."""

    def __init__(self, channels: MaybeChoice, reduction_ratio: float = 0.25) -> None:
        super().__init__()
        reduced = make_divisible(channels * reduction_ratio, 8)
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act1 = nn.ReLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        out: torch.Tensor = x * self.gate(scale)
        return out


class MobileNetV3Space(ModelSpace):
    """TuNAS's MobileNetV3 space: a stem, a depthwise-separable stage 0, searched MBConv stages
    1..n-3, and a head (1x1 conv, pooling, a 1x1 conv without normalization, a linear classifier).

    - ``base_widths``: the stem's, each stage's and the head's two widths (``n + 1`` for ``n`` blocks of
      the body: 9 by default). Each is multiplied by a ValueChoice of ``width_multipliers`` labelled
      ``s<i>_width_mult`` (the stem shares stage 0's) and rounded to a multiple of 8; a float
      ``width_multipliers`` fixes them.
    - ``expand_ratios`` (``s<i>_i<j>_exp``) and ``kernel_sizes`` (``s<i>_i<j>_ks``, the stem's
      ``stem_ks`` from ``stem_kernel_sizes``) per block.
    - ``squeeze_excite``: per stage 0..n-3, ``'force'`` (always an SE layer), ``'optional'`` (a
      LayerChoice ``s<i>_i<j>_se`` of ``identity`` / ``se``) or ``'none'``.
    - ``depth_range``: ``(min, max)`` for every searched stage, or one per stage (``s<i>_depth``).
    - ``stride`` and ``activation``: per stem, stage and head layer (``n + 1``).

    The defaults are the paper's ImageNet space; for 8x8 digits use ``in_channels=1``, small
    widths and strides of 1 but for two stages.
    """

    def __init__(
        self,
        num_labels: int = 1000,
        base_widths: Sequence[int] = (16, 16, 16, 32, 64, 128, 256, 512, 1024),
        width_multipliers: Sequence[float] | float = (0.5, 0.625, 0.75, 1.0, 1.25, 1.5, 2.0),
        expand_ratios: Sequence[float] = (1.0, 2.0, 3.0, 4.0, 5.0, 6.0),
        squeeze_excite: Sequence[SEMode] = ("none", "none", "optional", "none", "optional", "optional"),
        depth_range: Sequence[tuple[int, int]] | tuple[int, int] = (1, 4),
        stride: Sequence[int] = (2, 1, 2, 2, 2, 1, 2, 1, 1),
        activation: Sequence[Activation] = (
            "hswish",
            "relu",
            "relu",
            "relu",
            "hswish",
            "hswish",
            "hswish",
            "hswish",
            "hswish",
        ),
        se_from_exp: bool = True,
        dropout_rate: float = 0.2,
        bn_eps: float = 1e-3,
        bn_momentum: float = 0.1,
        *,
        in_channels: int = 3,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        stem_kernel_sizes: Sequence[int] = (3, 5),
    ) -> None:
        super().__init__()
        num_blocks = len(base_widths) - 1
        if num_blocks < 4:
            raise ValueError(f"MobileNetV3Space needs at least 5 base_widths, got {len(base_widths)}")
        _check_length("MobileNetV3Space stride", stride, num_blocks + 1)
        _check_length("MobileNetV3Space activation", activation, num_blocks + 1)
        _check_length("MobileNetV3Space squeeze_excite", squeeze_excite, num_blocks - 2)
        for mode in squeeze_excite:
            if mode not in ("force", "optional", "none"):
                raise ValueError(f"squeeze_excite entries are 'force', 'optional' or 'none', got {mode!r}")
        self.depth_range = _depth_ranges(depth_range, num_blocks - 3)
        self.expand_ratios = list(expand_ratios)
        self.kernel_sizes = list(kernel_sizes)
        self.se_from_exp = se_from_exp
        self.num_blocks = num_blocks

        searched = not isinstance(width_multipliers, (int, float))
        # The decision of each width, so a residual is added exactly where both ends are always equal.
        self._width_keys: list[tuple[Any, int]] = []
        widths: list[MaybeChoice] = []  # (not kept: the layers hold them, so activate runs any)
        for i, base in enumerate(base_widths):
            if isinstance(width_multipliers, (int, float)):
                width = make_divisible(base * width_multipliers, 8)
                self._width_keys.append((None, width))
            else:
                label = f"s{max(i - 1, 0)}_width_mult"  # the stem and stage 0 share one (as TuNAS)
                width = make_divisible(ValueChoice(list(width_multipliers), label=label) * base, 8)
                self._width_keys.append((label, base))
            widths.append(width)
        _log.debug("MobileNetV3Space: %d blocks, widths searched: %s", num_blocks, searched)

        self.stem = ConvBNReLU(
            in_channels,
            widths[0],
            ValueChoice(list(stem_kernel_sizes), label="stem_ks"),
            stride[0],
            activation_layer=_activation(activation[0]),
        )
        blocks: list[nn.Module] = [
            DepthwiseSeparableConv(
                widths[0],
                widths[1],
                ValueChoice(list(kernel_sizes), label="s0_i0_ks"),
                stride[1],
                squeeze_excite=self._se_factory(squeeze_excite[0], "s0_i0_se", from_exp=False),
                activation_layer=_activation(activation[1]),
                residual=self._same_width(0, 1),
            )
        ]
        for i in range(1, num_blocks - 2):
            blocks.append(
                self._make_stage(i, widths, squeeze_excite[i], stride[i + 1], _activation(activation[i + 1]))
            )
        last = num_blocks
        blocks += [
            ConvBNReLU(
                widths[last - 2],
                widths[last - 1],
                1,
                stride[last - 1],
                activation_layer=_activation(activation[last - 1]),
            ),
            nn.AdaptiveAvgPool2d(1),
            ConvBNReLU(
                widths[last - 1],
                widths[last],
                1,
                stride[last],
                norm_layer=_no_norm,
                activation_layer=_activation(activation[last]),
            ),
        ]
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Dropout(dropout_rate), nn.Linear(widths[last], num_labels))
        init_weights(self, bn_momentum=bn_momentum, bn_eps=bn_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x)).flatten(1)
        logits: torch.Tensor = self.classifier(x)
        return logits

    def _same_width(self, i: int, j: int) -> bool:
        """Whether widths ``i`` and ``j`` are equal in every architecture (the same decision and base)."""
        return self._width_keys[i] == self._width_keys[j]

    def _se_factory(self, mode: str, label: str, from_exp: bool) -> Callable[[Any, Any], nn.Module] | None:
        if mode == "none":
            return None

        def build(hidden: MaybeChoice, inp: MaybeChoice) -> nn.Module:
            se = SqueezeExcite(hidden if from_exp else inp)
            if mode == "force":
                return se
            return LayerChoice({"identity": nn.Identity(), "se": se}, label=label)

        return build

    def _make_stage(
        self, stage: int, widths: list[MaybeChoice], se: str, stride: int, act: Callable[[], nn.Module]
    ) -> nn.Module:
        inp, oup = widths[stage], widths[stage + 1]

        def block(index: int) -> nn.Module:
            prefix = f"s{stage}_i{index}"
            return InvertedResidual(
                inp if index == 0 else oup,
                oup,
                ValueChoice(self.expand_ratios, label=f"{prefix}_exp"),
                ValueChoice(self.kernel_sizes, label=f"{prefix}_ks"),
                stride if index == 0 else 1,  # only a stage's first block changes the resolution
                squeeze_excite=self._se_factory(se, f"{prefix}_se", from_exp=self.se_from_exp),
                activation_layer=act,
                residual=index > 0 or self._same_width(stage, stage + 1),
            )

        return Repeat(block, self.depth_range[stage - 1], label=f"s{stage}_depth")


def _no_norm(_channels: Any) -> nn.Module:
    return nn.Identity()


def _depth_ranges(depth_range: Any, stages: int) -> list[tuple[int, int]]:
    """One ``(min, max)`` per searched stage, checked."""
    ranges = (
        [tuple(depth_range)] * stages if isinstance(depth_range[0], int) else [tuple(d) for d in depth_range]
    )
    if len(ranges) != stages:
        raise ValueError(f"depth_range needs one (min, max) or {stages} of them, got {depth_range!r}")
    for r in ranges:
        if len(r) != 2 or not 1 <= r[0] <= r[1]:  # a stage's first block changes the width: at least 1
            raise ValueError(f"each depth range is (min, max) with 1 <= min <= max, got {r!r}")
    return [(int(r[0]), int(r[1])) for r in ranges]
