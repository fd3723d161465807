"""AutoActivation: a searched activation function (Ramachandran et al., "Searching for Activation
Functions"), NNI 2.x's hypermodule.

The activation is ``u0(x)``, then ``unit_num`` times ``b_i(previous, u_i(x))``, each ``u`` a
LayerChoice over unary functions and each ``b`` over binary ones, labelled as NNI 2.x does:
``<label>__unary_0`` ... ``<label>__unary_<unit_num>``, ``<label>__binary_0`` ... The candidates are
in NNI's order, so an architecture exported by NNI (indices) means the same functions here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .choices import LayerChoice
from .registry import composite_scope

__all__ = ["AutoActivation", "UNARY_NAMES", "BINARY_NAMES"]

_EPS = 1e-7


def _unary_table() -> dict[str, Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]]:
    return {
        "identity": lambda x, b: x,
        "negative": lambda x, b: -x,
        "abs": lambda x, b: torch.abs(x),
        "square": lambda x, b: torch.square(x),
        "pow3": lambda x, b: torch.pow(x, 3),
        "sqrt": lambda x, b: torch.sqrt(x),
        "mul": lambda x, b: x * b if b is not None else x,
        "add": lambda x, b: x + b if b is not None else x,
        "logabs": lambda x, b: torch.log(torch.abs(x) + _EPS),
        "exp": lambda x, b: torch.exp(x),
        "sin": lambda x, b: torch.sin(x),
        "cos": lambda x, b: torch.cos(x),
        "sinh": lambda x, b: torch.sinh(x),
        "cosh": lambda x, b: torch.cosh(x),
        "tanh": lambda x, b: torch.tanh(x),
        "atan": lambda x, b: torch.atan(x),
        "max0": lambda x, b: torch.clamp(x, min=0),
        "min0": lambda x, b: torch.clamp(x, max=0),
        "sigmoid": lambda x, b: torch.sigmoid(x),
        "logexp": lambda x, b: torch.log(1 + torch.exp(x)),
        "expsquare": lambda x, b: torch.exp(-torch.square(x)),
        "erf": lambda x, b: torch.erf(x),
    }


def _binary_table() -> dict[str, Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]]:
    return {
        "add": lambda x, y, b: x + y,
        "mul": lambda x, y, b: x * y,
        "minus": lambda x, y, b: x - y,
        "divide": lambda x, y, b: x / (y + _EPS),
        "max": lambda x, y, b: torch.maximum(x, y),
        "min": lambda x, y, b: torch.minimum(x, y),
        "sigmoid": lambda x, y, b: torch.sigmoid(x) * y,
        "expsquare": lambda x, y, b: torch.exp(-(b if b is not None else 1.0) * torch.square(x - y)),
        "expabs": lambda x, y, b: torch.exp(-(b if b is not None else 1.0) * torch.abs(x - y)),
        "paramadd": lambda x, y, b: b * x + (1 - b) * y if b is not None else x,
    }


_UNARY = _unary_table()
_BINARY = _binary_table()
UNARY_NAMES = tuple(_UNARY)  # NNI's UnaryIdentity, UnaryNegative, ... in its order
BINARY_NAMES = tuple(_BINARY)
_UNARY_WITH_BETA = frozenset({"mul", "add"})
_BINARY_WITH_BETA = frozenset({"expsquare", "expabs", "paramadd"})


class Unary(nn.Module):
    """One unary candidate by name (``mul`` and ``add`` hold a trainable scalar ``beta``, as in NNI)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in _UNARY:
            raise ValueError(f"unknown unary function {name!r}; known: {list(_UNARY)}")
        self.name = name
        self.beta = nn.Parameter(torch.tensor(1.0)) if name in _UNARY_WITH_BETA else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _UNARY[self.name](x, self.beta)

    def extra_repr(self) -> str:
        return repr(self.name)


class Binary(nn.Module):
    """One binary candidate by name, applied to a pair ``(x, y)``; some hold a trainable ``beta``."""

    def __init__(self, name: str) -> None:
        super().__init__()
        if name not in _BINARY:
            raise ValueError(f"unknown binary function {name!r}; known: {list(_BINARY)}")
        self.name = name
        self.beta = nn.Parameter(torch.tensor(1.0)) if name in _BINARY_WITH_BETA else None

    def forward(self, pair: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x, y = pair
        return _BINARY[self.name](x, y, self.beta)

    def extra_repr(self) -> str:
        return repr(self.name)


class AutoActivation(nn.Module):
    """A searched activation: ``unit_num`` binary units over unary functions of the input.

    As a supernet every candidate is present; frozen, each unit is the chosen function only.
    Under NNI 3.0's labelling (which has no AutoActivation) the labels are ``<label>/unary_0`` ...
    """

    def __init__(self, unit_num: int = 1, label: str | None = None) -> None:
        super().__init__()
        if not isinstance(unit_num, int) or isinstance(unit_num, bool) or unit_num < 0:
            raise ValueError(f"AutoActivation unit_num must be an int >= 0, got {unit_num!r}")
        self.unit_num = unit_num
        with composite_scope("autoactivation", label) as (full_label, child):
            self.label = full_label
            nni3 = child("x") == "x"  # NNI 3.0 style: the scope prefixes the label already

            def name(kind: str, i: int) -> str:
                return child(f"{kind}_{i}") if nni3 else f"{full_label}__{kind}_{i}"

            self.first_unary = LayerChoice([Unary(n) for n in UNARY_NAMES], label=name("unary", 0))
            self.unaries = nn.ModuleList(
                LayerChoice([Unary(n) for n in UNARY_NAMES], label=name("unary", i + 1))
                for i in range(unit_num)
            )
            self.binaries = nn.ModuleList(
                LayerChoice([Binary(n) for n in BINARY_NAMES], label=name("binary", i))
                for i in range(unit_num)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.first_unary(x)
        for unary, binary in zip(self.unaries, self.binaries):
            out = binary((out, unary(x)))
        return out
