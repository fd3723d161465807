"""Choice expressions: values derived from ValueChoices by arithmetic, comparisons and functions.

``a * 2``, ``a + b``, ``a > 16``, ``ValueChoice.max(a, b)``, ``ValueChoice.condition(a > 16, x, y)``
build a :class:`ChoiceExpression`, which is no decision of its own: its leaves (the ValueChoices it
reads) are. ``expr.evaluate({label: value})`` gives the value one architecture makes of it; under
``fixed_arch`` the leaves are plain values already, so the same code computes plain values.

In a supernet an int, float or str expression is also an ``int`` / ``float`` / ``str`` (like a
ValueChoice), holding its *supernet value*: the largest value it takes over every combination of
its leaves' options (a ``Linear(64, a * 2)`` then holds the weights of every candidate), or, for
values that are not all numbers, its value at the leaves' own supernet values.

A choice has no single value before an architecture is chosen, so in user code ``bool()``,
``int()``, ``float()`` and everything that needs one (``if``, ``max()``, a comparison tested by
``if``) raise :class:`~retia.errors.ChoiceNotFixedError`. Code of torch (and of the few
packages in :data:`PLAIN_PACKAGES`) receives these holders as layer arguments and treats them as the
plain supernet value they hold: ``nn.Conv2d`` checks ``in_channels % groups != 0`` that way.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import math
import operator
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from ..errors import ChoiceNotFixedError

__all__ = ["ChoiceExpression", "PLAIN_PACKAGES", "apply", "is_choice"]

_log = logging.getLogger(__name__)

#: Packages whose code reads a choice as the plain supernet value it holds (a layer's constructor
#: checking or combining its arguments) instead of building expressions or raising.
PLAIN_PACKAGES = ("torch", "torchvision", "torchaudio", "torchtext", "lightning", "pytorch_lightning")
# retia's own modules that compare or encode values generically (options, arguments, payloads).
_PLAIN_MODULES = frozenset(
    ("retia.arch", "retia.serializer", "retia.evaluator", "retia.codec", "json.encoder")
)

#: The most combinations of leaf options enumerated to find an expression's supernet value; above
#: it the value at the leaves' own supernet values is used (and a warning logged).
MAX_COMBINATIONS = 100_000

_OPERAND_TYPES = (int, float, complex, str, bytes)


def is_choice(value: Any) -> bool:
    """True for a ValueChoice or an expression of some (what has no value until a choice is made)."""
    return isinstance(value, ChoiceExpression)


def _plain_caller(depth: int = 2) -> bool:
    """True when the code ``depth`` frames up is torch's (or another package of PLAIN_PACKAGES)."""
    name = sys._getframe(depth).f_globals.get("__name__", "")
    return name in _PLAIN_MODULES or name.partition(".")[0] in PLAIN_PACKAGES


def _plain(value: Any) -> Any:
    return value.supernet_value if isinstance(value, ChoiceExpression) else value


class ChoiceExpression:
    """Base of ValueChoice and of the expressions built from ValueChoices (NNI's ValueChoiceX).

    Subclasses give :meth:`inner_choices`, :meth:`evaluate` and ``supernet_value``.
    """

    supernet_value: Any

    def inner_choices(self) -> list[Any]:
        """The ValueChoices this value depends on, one per label, in order of first use."""
        raise NotImplementedError

    def evaluate(self, sample: Mapping[str, Any]) -> Any:
        """The value architecture ``sample`` (``{label: value}``, extra labels ignored) makes of this."""
        raise NotImplementedError

    def freeze(self, sample: Mapping[str, Any]) -> Any:
        """NNI 3.0's name of :meth:`evaluate`."""
        return self.evaluate(sample)

    def all_options(self) -> list[Any]:
        """Every value this can take, each once, in the order the leaves' options enumerate them."""
        values: list[Any] = []
        for value in _enumerate(self):
            if not any(type(value) is type(v) and value == v for v in values):
                values.append(value)
        return values

    # Conversions to one plain value: refused in user code, the supernet value inside torch.
    def __bool__(self) -> bool:
        if _plain_caller():
            return bool(self.supernet_value)
        raise _not_fixed(
            self,
            "bool() (an if, while, and/or/not, assert, or a comparison Python tests, "
            "as in max(), min(), sorted() or `in`)",
        )

    def __int__(self) -> int:
        if _plain_caller():
            return int(self.supernet_value)
        raise _not_fixed(self, "int()", "ValueChoice.to_int(x) for an int-valued expression")

    def __float__(self) -> float:
        if _plain_caller():
            return float(self.supernet_value)
        raise _not_fixed(self, "float()", "ValueChoice.to_float(x) for a float-valued expression")

    def __complex__(self) -> complex:
        if _plain_caller():
            return complex(self.supernet_value)
        raise _not_fixed(self, "complex()")

    __hash__ = object.__hash__


def _not_fixed(choice: Any, used_as: str, instead: str | None = None) -> ChoiceNotFixedError:
    advice = instead or (
        "ValueChoice.condition(pred, if_true, if_false) for a value that depends on it, "
        "ValueChoice.max(...) / ValueChoice.min(...) instead of max() / min()"
    )
    return ChoiceNotFixedError(
        f"{choice!r} has no single value until an architecture is chosen, so it cannot be used in "
        f"{used_as}. Write {advice}; or choice.evaluate({{label: value}}) for the value of one "
        "architecture (the supernet value is choice.supernet_value)"
    )


# ---------------------------------------------------------------------------- composite expressions


class _Expression(ChoiceExpression):
    """An operation on operands of which at least one is a choice."""

    fn: Callable[..., Any]
    symbol: str
    operands: tuple[Any, ...]

    def inner_choices(self) -> list[Any]:
        seen: dict[str, Any] = {}
        for operand in self.operands:
            if isinstance(operand, ChoiceExpression):
                for leaf in operand.inner_choices():
                    seen.setdefault(leaf.label, leaf)
        return list(seen.values())

    def evaluate(self, sample: Mapping[str, Any]) -> Any:
        values = [o.evaluate(sample) if isinstance(o, ChoiceExpression) else o for o in self.operands]
        return self.fn(*values)

    def __repr__(self) -> str:
        parts = [repr(o) for o in self.operands]
        if self.symbol.isidentifier():
            return f"{self.symbol}({', '.join(parts)})"
        if len(parts) == 1:
            return f"({self.symbol}{parts[0]})"
        return f"({parts[0]} {self.symbol} {parts[1]})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (apply, (self.fn, self.symbol, self.operands))


class _IntExpression(_Expression, int):
    __str__ = int.__repr__
    __hash__ = int.__hash__


class _FloatExpression(_Expression, float):
    __str__ = float.__repr__
    __hash__ = float.__hash__


class _StrExpression(_Expression, str):
    __str__ = str.__str__
    __hash__ = str.__hash__


class _PlainExpression(_Expression):
    """An expression whose supernet value is no int, float or str (a bool, a tuple): no holder."""

    def __index__(self) -> int:
        if _plain_caller():
            return operator.index(self.supernet_value)
        raise _not_fixed(self, "an index", "ValueChoice.to_int(x)")


_EXPRESSION_HOLDERS: dict[type, type[_Expression]] = {
    int: _IntExpression,
    float: _FloatExpression,
    str: _StrExpression,
}


def apply(fn: Callable[..., Any], symbol: str, operands: tuple[Any, ...]) -> Any:
    """``fn(*operands)``: computed now when no operand is a choice, else an expression of them."""
    if not any(isinstance(o, ChoiceExpression) for o in operands):
        return fn(*operands)
    probe = _PlainExpression()
    probe.fn, probe.symbol, probe.operands = fn, symbol, tuple(operands)
    value = _supernet_value(probe)
    holder = _EXPRESSION_HOLDERS.get(type(value))
    expr: _Expression = probe if holder is None else holder.__new__(holder, value)  # type: ignore[call-arg]
    expr.fn, expr.symbol, expr.operands = fn, symbol, tuple(operands)
    expr.supernet_value = value
    return expr


def _enumerate(expr: ChoiceExpression) -> Iterator[Any]:
    leaves = expr.inner_choices()
    for values in itertools.product(*(leaf.options for leaf in leaves)):
        yield expr.evaluate({leaf.label: v for leaf, v in zip(leaves, values)})


def _supernet_value(expr: _Expression) -> Any:
    """The largest value ``expr`` takes over every combination of its leaves' options, when all
    are numbers (the supernet then holds every candidate); else its value at the leaves' own
    supernet values. Evaluating every combination also reports now an expression some fails."""
    leaves = expr.inner_choices()
    at_leaves = expr.evaluate({leaf.label: leaf.supernet_value for leaf in leaves})
    if math.prod(len(leaf.options) for leaf in leaves) > MAX_COMBINATIONS:
        _log.warning(
            "%r: over %d combinations of options, so the supernet uses its value at its leaves' "
            "supernet values, %r, which may be smaller than its largest",
            expr,
            MAX_COMBINATIONS,
            at_leaves,
        )
        return at_leaves
    values = list(_enumerate(expr))
    if all(isinstance(v, (int, float)) for v in values):
        best = builtins.max(values)
        return float(best) if any(isinstance(v, float) for v in values) else best
    return at_leaves


# ---------------------------------------------------------------------------- operators


def _condition(pred: Any, if_true: Any, if_false: Any) -> Any:
    return if_true if pred else if_false


def condition(pred: Any, if_true: Any, if_false: Any) -> Any:
    """``if_true`` where ``pred`` holds, else ``if_false`` (each may be a choice or a plain value)."""
    return apply(_condition, "condition", (pred, if_true, if_false))


def _binary(fn: Callable[..., Any], symbol: str) -> tuple[Any, Any]:
    def forward(self: Any, other: Any) -> Any:
        if not isinstance(other, (*_OPERAND_TYPES, ChoiceExpression)):
            return NotImplemented
        if _plain_caller():  # what the plain supernet value does (torch's code reading a holder)
            return fn(self.supernet_value, _plain(other))
        return apply(fn, symbol, (self, other))

    def reflected(self: Any, other: Any) -> Any:
        if not isinstance(other, (*_OPERAND_TYPES, ChoiceExpression)):
            return NotImplemented
        if _plain_caller():
            return fn(other, _plain(self))
        return apply(fn, symbol, (other, self))

    return forward, reflected


def _unary(fn: Callable[..., Any], symbol: str) -> Any:
    def method(self: Any) -> Any:
        if _plain_caller():
            return fn(self.supernet_value)
        return apply(fn, symbol, (self,))

    return method


def _round(value: Any, ndigits: Any = None) -> Any:
    return builtins.round(value, ndigits)


def _round_method(self: Any, ndigits: Any = None) -> Any:
    if _plain_caller():
        return builtins.round(self.supernet_value, ndigits)
    return apply(_round, "round", (self, ndigits))


def _getitem(self: Any, key: Any) -> Any:
    if _plain_caller():
        return self.supernet_value[_plain(key)]
    return apply(operator.getitem, "getitem", (self, key))


_Ops = dict[str, tuple[Callable[..., Any], str]]
_BINARY: _Ops = {
    "add": (operator.add, "+"),
    "sub": (operator.sub, "-"),
    "mul": (operator.mul, "*"),
    "truediv": (operator.truediv, "/"),
    "floordiv": (operator.floordiv, "//"),
    "mod": (operator.mod, "%"),
    "pow": (operator.pow, "**"),
    "and": (operator.and_, "&"),
    "or": (operator.or_, "|"),
    "xor": (operator.xor, "^"),
    "lshift": (operator.lshift, "<<"),
    "rshift": (operator.rshift, ">>"),
}
_COMPARISONS: _Ops = {
    "lt": (operator.lt, "<"),
    "le": (operator.le, "<="),
    "gt": (operator.gt, ">"),
    "ge": (operator.ge, ">="),
    "eq": (operator.eq, "=="),
    "ne": (operator.ne, "!="),
}
_UNARY: _Ops = {
    "neg": (operator.neg, "-"),
    "pos": (operator.pos, "+"),
    "abs": (builtins.abs, "abs"),
    "invert": (operator.invert, "~"),
    "trunc": (math.trunc, "trunc"),
    "floor": (math.floor, "floor"),
    "ceil": (math.ceil, "ceil"),
}


def _install() -> None:
    for name, (fn, symbol) in _BINARY.items():
        forward, reflected = _binary(fn, symbol)
        setattr(ChoiceExpression, f"__{name}__", forward)
        setattr(ChoiceExpression, f"__r{name}__", reflected)
    for name, (fn, symbol) in _COMPARISONS.items():
        setattr(ChoiceExpression, f"__{name}__", _binary(fn, symbol)[0])
    for name, (fn, symbol) in _UNARY.items():
        setattr(ChoiceExpression, f"__{name}__", _unary(fn, symbol))
    for special, method in {"__round__": _round_method, "__getitem__": _getitem}.items():
        setattr(ChoiceExpression, special, method)


_install()
