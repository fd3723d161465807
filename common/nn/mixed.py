"""Mixed operations: a supernet layer built with choices among its arguments runs the active values
as a slice of its largest weight (the weight sharing of one-shot NAS; NNI's "mixed operations").

``nn.Linear(32, ValueChoice([16, 32, 64]))`` in a supernet holds a 64 x 32 weight. Once the
space is activated (:meth:`ModelSpace.activate`), the layer is a :class:`MixedLinear` (its class is
swapped in place; its parameters stay the same objects) running ``weight[:16]`` for width 16. The
model frozen with width 16 has exactly that slice as its weight, which is what
:func:`take` cuts when ``original_state_dict_hooks`` loads a supernet checkpoint into it, and what
:func:`embed` writes back when a frozen model's weights are loaded into the supernet.

Which part of a weight a smaller value takes, per layer:

- ``Linear``: the first ``out_features`` rows and the first ``in_features`` columns;
- ``Conv1d/2d/3d``: the first ``out_channels`` filters, the first ``in_channels // groups`` input
  channels, and the *centre* ``kernel_size`` of the kernel (a 3x3 kernel is the middle of the 7x7);
  stride, padding and dilation are used as chosen;
- ``BatchNorm1d/2d/3d``: the first ``num_features`` of weight, bias and running statistics (a
  training step updates those in the supernet's buffers);
- ``LayerNorm``: the leading ``normalized_shape`` of weight and bias;
- ``MultiheadAttention``: ``embed_dim`` and ``num_heads``; the first ``embed_dim`` rows of each of
  the query, key and value projections, and of the output projection;
- ``Dropout``: the chosen ``p``.

Only these exact classes are mixed: a subclass with its own ``forward`` keeps running its
supernet (largest) values, and :meth:`ModelSpace.activate` refuses a smaller value for it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from .expressions import ChoiceExpression

__all__ = [
    "MixedBatchNorm1d",
    "MixedBatchNorm2d",
    "MixedBatchNorm3d",
    "MixedConv1d",
    "MixedConv2d",
    "MixedConv3d",
    "MixedDropout",
    "MixedLayerNorm",
    "MixedLinear",
    "MixedMultiheadAttention",
    "MixedOperation",
    "activate_mixed",
    "choice_labels",
    "embed",
    "install_mixed",
    "take",
]

_log = logging.getLogger(__name__)

Shape = tuple[int, ...]
Index = tuple[slice, ...]


# ---------------------------------------------------------------------------- which labels a value reads


def choice_labels(value: Any, depth: int = 0) -> Iterator[str]:
    """The labels of the choices in ``value``: a ValueChoice, an expression of some (its leaves),
    or up to three levels of lists, tuples, sets and dicts of them."""
    if isinstance(value, ChoiceExpression):
        for leaf in value.inner_choices():
            yield leaf.label
    elif depth < 3 and isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from choice_labels(item, depth + 1)
    elif depth < 3 and isinstance(value, dict):
        for item in value.values():
            yield from choice_labels(item, depth + 1)


def _plain(value: Any) -> Any:
    """The supernet value of ``value`` (a choice, or a tuple holding some), as plain Python."""
    if isinstance(value, ChoiceExpression):
        return value.supernet_value
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


def _evaluate(value: Any, arch: Mapping[str, Any]) -> Any:
    """The value architecture ``arch`` gives ``value`` (plain values stay as they are)."""
    if isinstance(value, ChoiceExpression):
        return value.evaluate(arch)
    if isinstance(value, tuple):
        return tuple(_evaluate(v, arch) for v in value)
    return value


# ---------------------------------------------------------------------------- the slice of a weight


def _index_pairs(module: nn.Module, name: str, full: Shape, small: Shape) -> list[tuple[Index, Index]]:
    """``(index into the full tensor, index into the small one)`` pairs that map the small tensor of
    parameter ``name`` of ``module`` onto the part of the full one it is (see the module docstring)."""
    if isinstance(module, nn.MultiheadAttention) and name in ("in_proj_weight", "in_proj_bias"):
        big, part = full[0] // 3, small[0] // 3  # query, key and value projections, stacked
        rest = tuple(slice(0, s) for s in small[1:])
        whole = tuple(slice(None) for _ in small[1:])
        return [
            ((slice(i * big, i * big + part), *rest), (slice(i * part, (i + 1) * part), *whole))
            for i in range(3)
        ]
    kernel = isinstance(module, _ConvNd) and name == "weight"
    index: list[slice] = []
    for dim, (f, s) in enumerate(zip(full, small)):
        start = (f - s) // 2 if kernel and dim >= 2 else 0
        index.append(slice(start, start + s))
    return [(tuple(index), tuple(slice(None) for _ in small))]


def slices_of(module: nn.Module, name: str, full: Shape, small: Shape) -> bool:
    """True when a ``small`` tensor of parameter ``name`` is a part of a ``full`` one under the rules
    above (same rank, no dimension larger; the attention projections in thirds)."""
    if len(full) != len(small) or any(s > f for f, s in zip(full, small)) or full == small:
        return False
    if isinstance(module, nn.MultiheadAttention) and name in ("in_proj_weight", "in_proj_bias"):
        return full[0] % 3 == 0 and small[0] % 3 == 0
    return isinstance(module, _SLICEABLE)


def take(module: nn.Module, name: str, full: torch.Tensor, small: Shape) -> torch.Tensor:
    """The part of shape ``small`` of the full tensor ``full`` (a view where it is one slice, so a
    training step through it updates the supernet's weight)."""
    pairs = _index_pairs(module, name, tuple(full.shape), small)
    if len(pairs) == 1:
        return full[pairs[0][0]]
    return torch.cat([full[src] for src, _ in pairs], dim=0)


def embed(module: nn.Module, name: str, full: torch.Tensor, small: torch.Tensor) -> torch.Tensor:
    """A copy of ``full`` with its part of ``small``'s shape replaced by ``small`` (the rest kept)."""
    out = full.detach().clone()
    for src, dst in _index_pairs(module, name, tuple(full.shape), tuple(small.shape)):
        out[src] = small[dst]
    return out


# ---------------------------------------------------------------------------- the mixed layers


class MixedOperation(nn.Module):
    """Mixin of the mixed layers: the choices among the layer's arguments and their active values."""

    #: The constructor arguments (kept as attributes of the same name) that may be choices.
    CHOICE_ATTRS: ClassVar[tuple[str, ...]] = ()

    _retia_choices: dict[str, Any]  # attribute -> its value as built (a choice, or a tuple with some)
    _retia_values: dict[str, Any]  # attribute -> the plain value the active architecture gives it
    _retia_full: bool  # the active values are the supernet's own: the layer runs as it was built

    def active(self, attr: str) -> Any:
        """The value of argument ``attr`` in the active architecture."""
        return self._retia_values[attr]

    def _active_shapes(self) -> dict[str, Shape]:
        """Parameter or buffer name -> its shape for the active values (those that are sliced)."""
        raise NotImplementedError

    def _sliced(self, name: str) -> torch.Tensor | None:
        tensor = getattr(self, name)
        if tensor is None:
            return None
        assert isinstance(tensor, torch.Tensor)
        shape = self._active_shapes().get(name)
        return tensor if shape is None or tuple(tensor.shape) == shape else take(self, name, tensor, shape)

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A frozen model's smaller weight is written into its part of the supernet's (the rest kept).
        for name, tensor in [*self._parameters.items(), *self._buffers.items()]:
            key = prefix + name
            value = state_dict.get(key)
            if tensor is None or not isinstance(value, torch.Tensor):
                continue
            if slices_of(self, name, tuple(tensor.shape), tuple(value.shape)):
                state_dict[key] = embed(self, name, tensor, value)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        text = super().extra_repr()
        if self._retia_full:
            return text
        changed = ", ".join(
            f"{attr}={self._retia_values[attr]!r}"
            for attr in self._retia_choices
            if attr in self._retia_values
        )
        return f"{text}, active: {changed}"


class MixedLinear(MixedOperation, nn.Linear):
    """``nn.Linear`` with a choice of ``in_features`` / ``out_features``."""

    CHOICE_ATTRS = ("in_features", "out_features")

    def _active_shapes(self) -> dict[str, Shape]:
        out, inn = self.active("out_features"), self.active("in_features")
        return {"weight": (out, inn), "bias": (out,)}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._retia_full:
            return super().forward(input)
        weight = self._sliced("weight")
        assert weight is not None
        return F.linear(input, weight, self._sliced("bias"))


class MixedOutProjection(MixedLinear, NonDynamicallyQuantizableLinear):
    """The output projection of a ``MultiheadAttention`` whose ``embed_dim`` is a choice."""


class _MixedConv(MixedOperation, _ConvNd):
    CHOICE_ATTRS = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups")
    _functional: ClassVar[Any]

    def _active_shapes(self) -> dict[str, Shape]:
        out, inn, groups = self.active("out_channels"), self.active("in_channels"), self.active("groups")
        if inn % groups or out % groups:
            raise ValueError(
                f"{type(self).__name__}: the active in_channels={inn} and out_channels={out} must be "
                f"multiples of groups={groups}"
            )
        return {"weight": (out, inn // groups, *self.active("kernel_size")), "bias": (out,)}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._retia_full:
            full: torch.Tensor = super().forward(input)
            return full
        weight = self._sliced("weight")
        padding = self.active("padding")
        if self.padding_mode != "zeros" and not isinstance(padding, str):
            pad = [p for p in reversed(padding) for _ in range(2)]
            input, padding = F.pad(input, pad, mode=self.padding_mode), 0
        result: torch.Tensor = self._functional(
            input,
            weight,
            self._sliced("bias"),
            self.active("stride"),
            padding,
            self.active("dilation"),
            self.active("groups"),
        )
        return result


class MixedConv1d(_MixedConv, nn.Conv1d):
    """``nn.Conv1d`` with choices of channels, kernel size, stride, padding, dilation, groups."""

    _functional = staticmethod(F.conv1d)


class MixedConv2d(_MixedConv, nn.Conv2d):
    """``nn.Conv2d`` with choices of channels, kernel size, stride, padding, dilation, groups."""

    _functional = staticmethod(F.conv2d)


class MixedConv3d(_MixedConv, nn.Conv3d):
    """``nn.Conv3d`` with choices of channels, kernel size, stride, padding, dilation, groups."""

    _functional = staticmethod(F.conv3d)


class _MixedBatchNorm(MixedOperation, _BatchNorm):
    CHOICE_ATTRS = ("num_features",)

    def _active_shapes(self) -> dict[str, Shape]:
        n = (self.active("num_features"),)
        return {"weight": n, "bias": n, "running_mean": n, "running_var": n}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._retia_full:
            return super().forward(input)
        self._check_input_dim(input)  # type: ignore[no-untyped-call]  # torch's, untyped
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_stats = not self.training or self.track_running_stats
        # running statistics: views of the supernet's buffers, updated in place by a training step
        return F.batch_norm(
            input,
            self._sliced("running_mean") if keep_stats else None,
            self._sliced("running_var") if keep_stats else None,
            self._sliced("weight"),
            self._sliced("bias"),
            use_batch_stats,
            factor,
            self.eps,
        )


class MixedBatchNorm1d(_MixedBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` with a choice of ``num_features``."""


class MixedBatchNorm2d(_MixedBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` with a choice of ``num_features``."""


class MixedBatchNorm3d(_MixedBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` with a choice of ``num_features``."""


class MixedLayerNorm(MixedOperation, nn.LayerNorm):
    """``nn.LayerNorm`` with a choice in ``normalized_shape``."""

    CHOICE_ATTRS = ("normalized_shape",)

    def _active_shapes(self) -> dict[str, Shape]:
        shape = tuple(self.active("normalized_shape"))
        return {"weight": shape, "bias": shape}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if self._retia_full:
            return super().forward(input)
        shape = tuple(self.active("normalized_shape"))
        return F.layer_norm(input, shape, self._sliced("weight"), self._sliced("bias"), self.eps)


class MixedDropout(MixedOperation, nn.Dropout):
    """``nn.Dropout`` with a choice of ``p``."""

    CHOICE_ATTRS = ("p",)

    def _active_shapes(self) -> dict[str, Shape]:
        return {}

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.dropout(input, self.active("p"), self.training, self.inplace)


class MixedMultiheadAttention(MixedOperation, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with choices of ``embed_dim`` and ``num_heads`` (query, key and
    value of the same size)."""

    CHOICE_ATTRS = ("embed_dim", "num_heads")

    def _active_shapes(self) -> dict[str, Shape]:
        e = self.active("embed_dim")
        return {"in_proj_weight": (3 * e, e), "in_proj_bias": (3 * e,)}

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        key_padding_mask: torch.Tensor | None = None,
        need_weights: bool = True,
        attn_mask: torch.Tensor | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._retia_full:
            return super().forward(
                query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights, is_causal
            )
        e, heads = self.active("embed_dim"), self.active("num_heads")
        if e % heads:
            raise ValueError(
                f"MultiheadAttention: the active embed_dim={e} must be a multiple of num_heads={heads}"
            )
        if self.batch_first:
            query, key, value = (t.transpose(1, 0) for t in (query, key, value))
        out_proj = self.out_proj
        assert isinstance(out_proj, MixedLinear)
        out_weight, out_bias = out_proj._sliced("weight"), out_proj._sliced("bias")
        assert out_weight is not None
        output, weights = F.multi_head_attention_forward(
            query,
            key,
            value,
            e,
            heads,
            self._sliced("in_proj_weight"),
            self._sliced("in_proj_bias"),
            None if self.bias_k is None else self.bias_k[..., :e],
            None if self.bias_v is None else self.bias_v[..., :e],
            self.add_zero_attn,
            self.dropout,
            out_weight,
            out_bias,
            training=self.training,
            key_padding_mask=key_padding_mask,
            need_weights=need_weights,
            attn_mask=attn_mask,
            average_attn_weights=average_attn_weights,
            is_causal=is_causal,
        )
        if self.batch_first:
            output = output.transpose(1, 0)
        return output, weights


#: The torch layer (exact class) -> its mixed form.
MIXED: dict[type[nn.Module], type[MixedOperation]] = {
    nn.Linear: MixedLinear,
    NonDynamicallyQuantizableLinear: MixedOutProjection,
    nn.Conv1d: MixedConv1d,
    nn.Conv2d: MixedConv2d,
    nn.Conv3d: MixedConv3d,
    nn.BatchNorm1d: MixedBatchNorm1d,
    nn.BatchNorm2d: MixedBatchNorm2d,
    nn.BatchNorm3d: MixedBatchNorm3d,
    nn.LayerNorm: MixedLayerNorm,
    nn.Dropout: MixedDropout,
    nn.MultiheadAttention: MixedMultiheadAttention,
}
# The layers whose weights original_state_dict_hooks cuts to a frozen model's smaller shape.
_SLICEABLE = (nn.Linear, _ConvNd, _BatchNorm, nn.LayerNorm, nn.MultiheadAttention)


# ---------------------------------------------------------------------------- install and activate


@dataclass(frozen=True)
class MixedReport:
    """What :func:`install_mixed` found: the labels mixed layers run at any value, and the places a
    choice is kept where only its supernet value can run (label -> a module path and attribute)."""

    mixed_labels: frozenset[str]
    fixed_uses: dict[str, str]


def install_mixed(root: nn.Module) -> MixedReport:
    """Turn every layer of ``root`` built with choices among its arguments into its mixed form
    (idempotent; parameters stay the same objects), and say which labels run at any value."""
    mixed: set[str] = set()
    fixed: dict[str, str] = {}
    for path, module in root.named_modules():
        cls = MIXED.get(type(module))
        if cls is not None:
            choices = {
                attr: getattr(module, attr)
                for attr in cls.CHOICE_ATTRS
                if any(True for _ in choice_labels(getattr(module, attr, None)))
            }
            if choices:
                module.__class__ = cls
                module.__dict__["_retia_choices"] = choices
                module.__dict__["_retia_values"] = {a: _plain(getattr(module, a)) for a in cls.CHOICE_ATTRS}
                module.__dict__["_retia_full"] = True
        if isinstance(module, MixedOperation):
            for value in module._retia_choices.values():
                mixed.update(choice_labels(value))
            continue
        for name, value in vars(module).items():
            if name.startswith(("_retia", "__retia")) or name in ("_modules", "_parameters", "_buffers"):
                continue
            for label in choice_labels(value):
                fixed.setdefault(label, f"{path or type(root).__name__}.{name}")
    return MixedReport(frozenset(mixed), fixed)


def activate_mixed(root: nn.Module, arch: Mapping[str, Any]) -> None:
    """Give every mixed layer of ``root`` the values of architecture ``arch`` (a validated, complete one)."""
    for module in root.modules():
        if isinstance(module, MixedOperation):
            values = {
                attr: _evaluate(module._retia_choices.get(attr, plain), arch)
                for attr, plain in module._retia_values.items()
            }
            module.__dict__["_retia_values"] = values
            module.__dict__["_retia_full"] = all(
                values[attr] == _plain(choice) for attr, choice in module._retia_choices.items()
            )
