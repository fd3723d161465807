"""The three kinds of decision in a model space: LayerChoice, InputChoice, ValueChoice.

Each one registers ``(label, options)`` with the space under construction. Under
:func:`~retia.nn.fixed_arch` its ``__new__`` returns the chosen thing itself (a module, a
fixed input selector, a plain value); otherwise it is the supernet form, in which every
candidate is present and :meth:`activate` picks the path that forward takes.
"""

from __future__ import annotations

import builtins
import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import torch
from torch import nn

from ..arch import MISSING, ChoiceSpec, fixed_choice, match_option
from ..errors import InvalidArchitectureError
from .expressions import ChoiceExpression, apply, condition
from .registry import register_choice

__all__ = ["LayerChoice", "InputChoice", "ValueChoice", "ChoiceExpression", "ChosenInputs", "REDUCTIONS"]

_log = logging.getLogger(__name__)

T = TypeVar("T")
REDUCTIONS = ("sum", "mean", "concat", "none")
CHOSEN_ATTR = "_retia_chosen_from"  # on a module a frozen LayerChoice picked: [(label, key, all keys), ...]


def _check_active(spec: ChoiceSpec, value: Any) -> Any:
    chosen = match_option(spec.options, value)
    if chosen is MISSING:
        raise InvalidArchitectureError(
            f"label {spec.label!r} has value {value!r}, not one of {list(spec.options)!r}"
        )
    return chosen


class LayerChoice(nn.Module):
    """Choose one of several candidate modules (a list, or an ordered dict of named modules).

    The architecture value is the candidate's index for a list and its name for a dict. As in
    NNI, the candidates are this module's own children, named ``'0'``, ``'1'``, ... or by the
    dict's keys, so supernet state-dict keys read ``block.0.weight`` / ``block.conv3x3.weight``.
    Under ``fixed_arch`` constructing a LayerChoice returns the chosen module itself.
    """

    label: str
    names: list[Any]  # the candidates' architecture values: indices for a list, names for a dict

    def __new__(cls, candidates: Any = MISSING, *, label: str | None = None) -> Any:
        if candidates is MISSING:  # unpickling and deepcopy call __new__ without arguments
            return super().__new__(cls)
        items = _candidate_items(candidates)
        options: list[Any] = list(range(len(items))) if not _is_mapping(candidates) else [k for k, _ in items]
        spec = register_choice("layerchoice", label, options, options[0])
        chosen = fixed_choice(spec)
        if chosen is not MISSING:
            key = str(chosen)
            module = dict(items)[key]
            keys = tuple(k for k, _ in items)
            module.__dict__.setdefault(CHOSEN_ATTR, []).append((spec.label, key, keys))
            return module
        obj = super().__new__(cls)
        obj.__dict__["_retia_spec"] = spec
        return obj

    def __init__(
        self, candidates: Sequence[nn.Module] | Mapping[str, nn.Module], *, label: str | None = None
    ) -> None:
        spec: ChoiceSpec = self.__dict__.pop("_retia_spec")
        super().__init__()
        self.spec = spec
        self.label = spec.label
        self.names = list(spec.options)
        self.active: Any = spec.default
        for key, module in _candidate_items(candidates):
            self.add_module(key, module)

    @property
    def options(self) -> list[Any]:
        return list(self.spec.options)

    @property
    def candidates(self) -> list[nn.Module] | dict[str, nn.Module]:
        """The candidates as passed in: a list for a list LayerChoice, else a dict by name."""
        if all(isinstance(name, int) for name in self.names):
            return list(self)
        return {str(name): self[name] for name in self.names}

    def activate(self, value: Any) -> None:
        """Make forward use the candidate ``value`` (an index for a list, a name for a dict)."""
        self.active = _check_active(self.spec, value)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self[str(self.active)](*args, **kwargs)

    def _child_name(self, key: int | str) -> str:
        """The child-module name of candidate ``key``: a position (int) or a name (str, ``'0'`` too)."""
        if isinstance(key, int) and not isinstance(key, bool):
            if not -len(self.names) <= key < len(self.names):
                raise IndexError(
                    f"LayerChoice {self.label!r} has {len(self.names)} candidates, no index {key}"
                )
            return str(self.names[key])
        if isinstance(key, str) and key in self._modules:
            return key
        raise KeyError(
            f"LayerChoice {self.label!r} has no candidate {key!r}; "
            f"its candidates are {self.names!r} (positions 0..{len(self.names) - 1} also work)"
        )

    def __getitem__(self, key: int | str) -> nn.Module:
        module = self._modules[self._child_name(key)]
        assert module is not None
        return module

    def __setitem__(self, key: int | str, module: nn.Module) -> None:
        """Replace an existing candidate (adding one would change the search space, which is fixed)."""
        if not isinstance(module, nn.Module):
            raise TypeError(f"a LayerChoice candidate must be an nn.Module, got {type(module).__name__}")
        setattr(self, self._child_name(key), module)

    def __delitem__(self, key: int | str) -> None:
        self._child_name(key)  # an unknown key says so first
        raise NotImplementedError(
            f"deleting candidate {key!r} from LayerChoice {self.label!r} is not supported: its "
            "candidates are the options of the search space, fixed when it is built; build the "
            "LayerChoice with only the candidates you want"
        )

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[nn.Module]:
        return (self[name] for name in self.names)

    def extra_repr(self) -> str:
        return f"label={self.label!r}, active={self.active!r}"


# Names a candidate may not take: LayerChoice's own attributes, which its children would shadow.
_RESERVED_NAMES = frozenset({"spec", "label", "names", "active"})


def _is_mapping(candidates: Any) -> bool:
    return isinstance(candidates, (Mapping, nn.ModuleDict))


def _candidate_items(candidates: Any) -> list[tuple[str, nn.Module]]:
    if _is_mapping(candidates):
        items = list(candidates.items())
    elif isinstance(candidates, (Sequence, nn.ModuleList)) and not isinstance(candidates, (str, bytes)):
        items = [(str(i), m) for i, m in enumerate(candidates)]
    else:
        raise TypeError(
            f"LayerChoice candidates must be a list or a dict of modules, got {type(candidates).__name__}"
        )
    if not items:
        raise ValueError("LayerChoice needs at least one candidate")
    for key, module in items:
        if not isinstance(key, str) or not key or "." in key:
            raise ValueError(
                f"LayerChoice candidate names must be non-empty strings without '.', got {key!r}"
            )
        if key in _RESERVED_NAMES or hasattr(LayerChoice, key) or hasattr(_PLAIN_MODULE, key):
            raise ValueError(
                f"LayerChoice candidate name {key!r} is an attribute of LayerChoice itself; rename it"
            )
        if not isinstance(module, nn.Module):
            raise TypeError(f"LayerChoice candidate {key!r} is a {type(module).__name__}, not an nn.Module")
    return items


_PLAIN_MODULE = nn.Module()  # its instance attributes (training, _parameters, ...) are reserved too


class InputChoice(nn.Module):
    """Choose ``n_chosen`` of ``n_candidates`` input tensors and reduce them.

    The architecture value is an index when ``n_chosen == 1``, else a sorted list of indices.
    Under ``fixed_arch`` constructing one returns a :class:`ChosenInputs`.
    """

    label: str

    def __new__(
        cls,
        n_candidates: Any = MISSING,
        n_chosen: int = 1,
        reduction: str = "sum",
        *,
        label: str | None = None,
    ) -> Any:
        if n_candidates is MISSING:  # unpickling and deepcopy
            return super().__new__(cls)
        _check_input_args(n_candidates, n_chosen, reduction)
        if n_chosen == 1:
            options: list[Any] = list(range(n_candidates))
        else:
            options = [list(c) for c in itertools.combinations(range(n_candidates), n_chosen)]
        spec = register_choice("inputchoice", label, options, options[0])
        chosen = fixed_choice(spec)
        if chosen is not MISSING:
            return ChosenInputs(chosen, reduction)
        obj = super().__new__(cls)
        obj.__dict__["_retia_spec"] = spec
        return obj

    def __init__(
        self, n_candidates: int, n_chosen: int = 1, reduction: str = "sum", *, label: str | None = None
    ) -> None:
        spec: ChoiceSpec = self.__dict__.pop("_retia_spec")
        super().__init__()
        self.spec = spec
        self.label = spec.label
        self.n_candidates = n_candidates
        self.n_chosen = n_chosen
        self.reduction = reduction
        self.active: Any = spec.default

    @property
    def options(self) -> list[Any]:
        return [list(o) if isinstance(o, list) else o for o in self.spec.options]

    def activate(self, value: Any) -> None:
        """Make forward use the inputs ``value`` (an index, or a list of indices)."""
        self.active = _check_active(self.spec, value)

    def forward(self, candidate_inputs: Sequence[torch.Tensor]) -> Any:
        if len(candidate_inputs) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(candidate_inputs)}"
            )
        return _select(candidate_inputs, self.active, self.reduction)

    def extra_repr(self) -> str:
        return (
            f"label={self.label!r}, n_candidates={self.n_candidates}, n_chosen={self.n_chosen}, "
            f"reduction={self.reduction!r}, active={self.active!r}"
        )


def _check_input_args(n_candidates: Any, n_chosen: Any, reduction: Any) -> None:
    if not isinstance(n_candidates, int) or isinstance(n_candidates, bool) or n_candidates < 1:
        raise ValueError(f"InputChoice n_candidates must be a positive int, got {n_candidates!r}")
    if not isinstance(n_chosen, int) or isinstance(n_chosen, bool) or not 1 <= n_chosen <= n_candidates:
        raise ValueError(f"InputChoice n_chosen must be an int in [1, {n_candidates}], got {n_chosen!r}")
    if reduction not in REDUCTIONS:
        raise ValueError(f"InputChoice reduction must be one of {REDUCTIONS}, got {reduction!r}")


class ChosenInputs(nn.Module):
    """A fixed input selector: what an InputChoice becomes under ``fixed_arch``."""

    def __init__(self, chosen: int | list[int], reduction: str = "sum") -> None:
        super().__init__()
        self.chosen = chosen
        self.reduction = reduction

    def forward(self, candidate_inputs: Sequence[torch.Tensor]) -> Any:
        return _select(candidate_inputs, self.chosen, self.reduction)

    def extra_repr(self) -> str:
        return f"chosen={self.chosen!r}, reduction={self.reduction!r}"


def _select(inputs: Sequence[torch.Tensor], chosen: int | Sequence[int], reduction: str) -> Any:
    picked = [inputs[chosen]] if isinstance(chosen, int) else [inputs[i] for i in chosen]
    if reduction == "none":
        return picked
    if len(picked) == 1:
        return picked[0]
    if reduction == "concat":
        return torch.cat(picked, dim=1)
    total = picked[0]
    for tensor in picked[1:]:
        total = total + tensor
    return total / len(picked) if reduction == "mean" else total


# ---------------------------------------------------------------------------- ValueChoice


class ValueChoice(ChoiceExpression):
    """Choose one of several plain values, usable as an argument of ordinary layers (NNI's ValueChoice,
    3.0's Categorical).

    Under ``fixed_arch`` constructing one returns the chosen value itself. In a supernet it
    returns an ``int`` / ``float`` / ``str`` subclass holding the largest numeric option
    (the first option for strings), with ``label``, ``options`` and ``prior`` attached, so
    ``nn.Linear(64, ValueChoice([16, 32]))`` builds at width 32. Other option types build
    with their first option as a plain value. Arithmetic and comparisons on a choice give a
    :class:`~retia.nn.expressions.ChoiceExpression`; ``prior`` (weights of the options) is part of
    the decision: random search and evolution sample by it, TPE starts from it, grid ignores it.
    """

    spec: ChoiceSpec
    label: str
    options: list[Any]
    prior: list[float] | None

    # Typed as returning an option, which it does (the chosen one, or a holder that subclasses
    # its type), so ``nn.Linear(64, ValueChoice([16, 32]))`` type-checks; mypy wants an instance.
    def __new__(  # type: ignore[misc]
        cls,
        candidates: Sequence[T] = MISSING,
        *,
        label: str | None = None,
        prior: Sequence[float] | None = None,
    ) -> T:
        if candidates is MISSING:
            raise TypeError("ValueChoice() needs a list of values: ValueChoice([...], label=...)")
        options = _check_values(candidates)
        weights = _check_prior(prior, options)
        default: T = _supernet_default(options)
        spec = register_choice("valuechoice", label, options, default, weights)
        chosen: T = fixed_choice(spec)
        if chosen is not MISSING:
            return chosen
        holder = _HOLDERS.get(type(default))
        if holder is None:
            _log.debug("ValueChoice %r: the supernet uses its first option %r as is", spec.label, default)
            return default
        held: T = _make_holder(holder, default, spec, weights)
        return held

    # No __init__: everything happens in __new__ (int/float/str.__init__ ignore the arguments).

    # ValueChoice.max(a, b), .min, .condition, .to_int, .to_float: expressions of choices (or plain
    # values where no argument is a choice, as under fixed_arch).
    @staticmethod
    def max(arg0: Any, *args: Any) -> Any:
        """The largest of the arguments (or of one iterable): ``max()`` for choices."""
        values = tuple(arg0) if not args and _iterable(arg0) else (arg0, *args)
        return apply(builtins.max, "max", values)

    @staticmethod
    def min(arg0: Any, *args: Any) -> Any:
        """The smallest of the arguments (or of one iterable): ``min()`` for choices."""
        values = tuple(arg0) if not args and _iterable(arg0) else (arg0, *args)
        return apply(builtins.min, "min", values)

    @staticmethod
    def condition(pred: Any, true: Any, false: Any) -> Any:
        """``true`` where ``pred`` holds, else ``false``: ``true if pred else false`` for choices."""
        return condition(pred, true, false)

    @staticmethod
    def to_int(obj: Any) -> Any:
        """``int(obj)`` for a choice (an expression of it), or for a plain value."""
        return apply(int, "int", (obj,))

    @staticmethod
    def to_float(obj: Any) -> Any:
        """``float(obj)`` for a choice (an expression of it), or for a plain value."""
        return apply(float, "float", (obj,))

    def inner_choices(self) -> list[Any]:
        return [self]

    def evaluate(self, sample: Mapping[str, Any]) -> Any:
        """The option ``sample[label]`` picks (InvalidArchitectureError if it is missing or invalid)."""
        if not isinstance(sample, Mapping):
            raise InvalidArchitectureError(
                f"evaluate() takes an architecture dict {{label: value}}, got {type(sample).__name__}"
            )
        if self.label not in sample:
            raise InvalidArchitectureError(
                f"missing label {self.label!r} (valuechoice; options: {self.options!r})"
            )
        return _check_active(self.spec, sample[self.label])

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_holder, (type(self), self.supernet_value, self.spec, self.prior))

    def __repr__(self) -> str:
        return f"ValueChoice({list(self.options)!r}, label={self.label!r})"


class _IntValueChoice(ValueChoice, int):
    __str__ = int.__repr__
    __hash__ = int.__hash__


class _FloatValueChoice(ValueChoice, float):
    __str__ = float.__repr__
    __hash__ = float.__hash__


class _StrValueChoice(ValueChoice, str):
    __str__ = str.__str__
    __hash__ = str.__hash__


_HOLDERS: dict[type, type[ValueChoice]] = {
    int: _IntValueChoice,
    float: _FloatValueChoice,
    str: _StrValueChoice,
}


def _make_holder(
    holder: type[ValueChoice], value: Any, spec: ChoiceSpec, prior: list[float] | None = None
) -> Any:
    """An instance of ``holder``: a ValueChoice, and an int, float or str equal to ``value``."""
    base: Any = holder.__mro__[-2]  # int, float or str, whose __new__ makes the holder hold value
    obj: ValueChoice = base.__new__(holder, value)
    obj.spec = spec
    obj.label = spec.label
    obj.options = list(spec.options)
    obj.prior = prior
    obj.supernet_value = value
    return obj


def _rebuild_holder(
    holder: type[ValueChoice], value: Any, spec: ChoiceSpec, prior: list[float] | None = None
) -> Any:
    return _make_holder(holder, value, spec, prior)


def _iterable(value: Any) -> bool:
    return isinstance(value, Iterable) and not isinstance(value, (str, bytes, ChoiceExpression))


def _check_prior(prior: Any, options: list[Any]) -> list[float] | None:
    """``prior`` as weights summing to 1, one per option (None: uniform)."""
    if prior is None:
        return None
    if isinstance(prior, (str, bytes)) or not isinstance(prior, Sequence) or len(prior) != len(options):
        raise ValueError(
            f"ValueChoice prior must be a list of {len(options)} weights, one per option, got {prior!r}"
        )
    weights = [float(w) for w in prior]
    if any(not math.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(
            f"ValueChoice prior weights must be finite, non-negative and not all 0, got {prior!r}"
        )
    total = sum(weights)
    return [w / total for w in weights]


def _check_values(values: Any) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"ValueChoice needs a list of values, got {type(values).__name__}")
    options = [v.item() if hasattr(v, "item") and not isinstance(v, (int, float, str)) else v for v in values]
    nested = [v for v in options if isinstance(v, ChoiceExpression)]
    if nested:
        raise TypeError(
            f"ValueChoice options must be plain values, got the choice {nested[0]!r} among them: "
            "write an expression of it instead (ValueChoice.condition(...), a * 2, ...)"
        )
    if not options:
        raise ValueError("ValueChoice needs at least one value")
    for i, v in enumerate(options):
        if any(match_option([w], v) is not MISSING for w in options[:i]):
            raise ValueError(f"ValueChoice values must be distinct, {v!r} appears twice in {options!r}")
    return options


def _supernet_default(options: list[Any]) -> Any:
    """The largest option when all are numbers (the supernet's widest shape), else the first."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in options)
    if not numeric:
        return options[0]
    best = max(options)
    if any(isinstance(v, float) for v in options):
        return float(best)
    return int(best)
