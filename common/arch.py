"""Architectures: the ``{label: choice}`` dict, its canonical form and validation, and models built from one.

An architecture is plain JSON, each label of a model space mapped to the option chosen for it.
Model spaces (``retia.nn``), search strategies (``retia.strategy``) and the client all go
through this module, which imports no torch:

* :func:`canonical`, :func:`option_index`: options compare by value as after a JSON round trip
  (tuples are lists), and ``True`` is not ``1``;
* :func:`validate_arch`, :func:`arch_indices`: every missing, unknown or invalid label at once;
* :func:`fixed_arch`: the context in which a model space builds one concrete model (a context
  variable, not a mutable global; its choices ask :func:`fixed_choice`);
* :func:`build_frozen` and :class:`FrozenModel`: the one way to turn (space, architecture) into
  a model, now or, shipped as a recipe, later on a worker.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

from .errors import ConfigError, InvalidArchitectureError

__all__ = [
    "Arch",
    "ArchLike",
    "SearchSpace",
    "ChoiceSpec",
    "canonical",
    "option_index",
    "match_option",
    "load_arch",
    "arch_indices",
    "validate_arch",
    "merge_spaces",
    "valid_draw",
    "MAX_VALID_DRAWS",
    "fixed_arch",
    "current_fixed_arch",
    "fixed_derived",
    "coerce_choice",
    "normalize_arch",
    "build_frozen",
    "FrozenModel",
]

_log = logging.getLogger(__name__)
T = TypeVar("T")

Arch = dict[str, Any]
ArchLike = Union[Mapping[str, Any], str, "os.PathLike[str]"]
SearchSpace = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class ChoiceSpec:
    """One decision of a space: its label, kind, JSON-able options, the supernet's default, and the
    weights strategies sample its options by (a ValueChoice's ``prior``; None: uniform)."""

    label: str
    kind: str
    options: tuple[Any, ...]
    default: Any
    prior: tuple[float, ...] | None = None


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


# ---------------------------------------------------------------------------- comparison


def canonical(value: Any) -> Any:
    """``value`` as after a JSON round trip: tuples become lists (new ones), so options compare by value."""
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) != isinstance(b, bool):
        return False  # True == 1 in Python, but not as an architecture choice
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, list) or isinstance(b, list):
        return False
    try:
        return bool(a == b)
    except Exception:  # exotic values with array-like __eq__
        return False


def option_index(options: Sequence[Any], value: Any) -> int | None:
    """The position of the option equal to ``value`` (lists and tuples compare alike), or None."""
    canon = canonical(value)
    for i, option in enumerate(options):
        if _same(canonical(option), canon):
            return i
    return None


def match_option(options: Sequence[Any], value: Any) -> Any:
    """The option equal to ``value`` (lists and tuples compare alike), or MISSING."""
    i = option_index(options, value)
    return MISSING if i is None else options[i]


# ---------------------------------------------------------------------------- validation


def load_arch(arch: ArchLike) -> Arch:
    """A plain dict from a dict or from the path of a JSON file holding one."""
    if isinstance(arch, (str, os.PathLike)):
        path = Path(arch)
        try:
            loaded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidArchitectureError(f"cannot read architecture JSON {str(path)!r}: {exc}") from exc
        arch = loaded
    if not isinstance(arch, Mapping):
        raise InvalidArchitectureError(
            f"an architecture must be a dict {{label: choice}}, got {type(arch).__name__}"
        )
    bad = [k for k in arch if not isinstance(k, str)]
    if bad:
        raise InvalidArchitectureError(f"architecture labels must be strings, got {bad!r}")
    return dict(arch)


def arch_indices(search_space: SearchSpace, arch: Mapping[str, Any]) -> dict[str, int]:
    """Each label's option index; InvalidArchitectureError listing every problem of ``arch`` at once."""
    if not isinstance(arch, Mapping):
        raise InvalidArchitectureError(
            f"an architecture must be a dict {{label: choice}}, got {type(arch).__name__}"
        )
    problems = []
    indices: dict[str, int] = {}
    for label, options in search_space.items():
        if label not in arch:
            problems.append(f"missing label {label!r} (options: {list(options)!r})")
            continue
        index = option_index(options, arch[label])
        if index is None:
            problems.append(f"label {label!r} has value {arch[label]!r}, not one of {list(options)!r}")
        else:
            indices[label] = index
    unknown = [label for label in arch if label not in search_space]
    if unknown:
        problems.append(f"unknown label(s) {unknown!r} (valid labels: {list(search_space)!r})")
    if problems:
        raise InvalidArchitectureError("invalid architecture: " + "; ".join(problems))
    return indices


def validate_arch(search_space: SearchSpace, arch: Mapping[str, Any]) -> None:
    """Raise InvalidArchitectureError listing every missing, unknown or invalid label of ``arch``."""
    arch_indices(search_space, arch)


#: How many draws a sampler makes for one architecture that its space's check accepts before giving up.
MAX_VALID_DRAWS = 1000


def valid_draw(draw: Callable[[], T], check: Callable[[T], object] | None, tries: int = MAX_VALID_DRAWS) -> T:
    """``draw()`` again until ``check`` (raising InvalidArchitectureError) accepts it, at most ``tries``
    times; the first draw when there is no check. InvalidArchitectureError with the last reason after."""
    first = draw()
    if check is None:
        return first
    reason: InvalidArchitectureError | None = None
    for attempt in range(tries):
        candidate = first if attempt == 0 else draw()
        try:
            check(candidate)
            return candidate
        except InvalidArchitectureError as exc:
            reason = exc
    raise InvalidArchitectureError(
        f"no valid architecture in {tries} random draws: the space's own check refused every one "
        f"(the last: {reason}); loosen the constraint (e.g. a NasBench101Cell's max_num_edges) or "
        "give the architectures yourself"
    )


def merge_spaces(model: SearchSpace, evaluator: SearchSpace) -> dict[str, list[Any]]:
    """A model's choices and its evaluator's as one search space (the model's first). A label both
    use is one decision, taken once for both: its options must be the same."""
    merged = {label: [canonical(o) for o in options] for label, options in model.items()}
    for label, options in evaluator.items():
        mine = [canonical(o) for o in options]
        if label in merged and merged[label] != mine:
            raise ConfigError(
                f"label {label!r} is a choice of the model space ({merged[label]}) and of the "
                f"evaluator ({mine}) with other options: use one label per decision, or the same options"
            )
        merged.setdefault(label, mine)
    return merged


# ---------------------------------------------------------------------------- fixed_arch


# Where a built space's choices are: (labels found anywhere, labels found on the path that ``arch``
# selects). A label of the first set missing from the second is not reached by ``arch``.
Locator = Callable[[Mapping[str, Any]], "tuple[set[str], set[str]]"]


@dataclass
class _Fixed:
    arch: Arch
    consumed: dict[str, ChoiceSpec] = field(default_factory=dict)
    spaces_built: int = 0
    provisional: dict[str, ChoiceSpec] = field(default_factory=dict)  # missing, maybe not reached
    locators: list[Locator] = field(default_factory=list)  # one per top-level space built
    derived: set[str] = field(default_factory=set)  # labels read by fixed_derived (no choice's)


_FIXED: contextvars.ContextVar[_Fixed | None] = contextvars.ContextVar("retia_fixed_arch", default=None)


def current_fixed_arch() -> Arch | None:
    """The architecture of the innermost :func:`fixed_arch` block, or None (a supernet is built)."""
    state = _FIXED.get()
    return None if state is None else state.arch


def _missing_message(spec: ChoiceSpec) -> str:
    return f"missing label {spec.label!r} ({spec.kind}; options: {list(spec.options)!r})"


@contextlib.contextmanager
def fixed_arch(arch: ArchLike, verbose: bool = True) -> Iterator[Arch]:
    """Within this block, model spaces build the concrete model ``arch`` (a dict or a JSON file path).

    An invalid value raises at once; labels of ``arch`` that no choice used raise when the
    block ends. A missing label raises when the block ends too, unless the choice is not
    reached by ``arch`` (it sits in a LayerChoice candidate that ``arch`` does not choose, or in
    a block beyond a Repeat's depth): NNI 3.0's ``freeze`` does not ask for those either, and
    such a label given is no error.
    """
    state = _Fixed(load_arch(arch))
    if verbose:
        _log.info("fixed architecture: %s", state.arch)
    token = _FIXED.set(state)
    try:
        yield state.arch
    finally:
        _FIXED.reset(token)
    unknown = [label for label in state.arch if label not in state.consumed and label not in state.derived]
    located: set[str] = set()
    reached: set[str] = set()
    if state.provisional or (unknown and state.locators):  # (a supernet is built only then)
        located, reached = _locate(state)
    if state.provisional:
        _check_unreached(state, located, reached)
    if state.spaces_built or state.consumed:
        # a label of a choice that arch does not reach (a block beyond a Repeat's depth) is no typo
        unknown = [label for label in unknown if label not in located or label in reached]
        if unknown:
            valid = {label: list(spec.options) for label, spec in state.consumed.items()}
            raise InvalidArchitectureError(
                f"invalid architecture: unknown label(s) {unknown!r}; the model space has {valid!r}"
            )


def _locate(state: _Fixed) -> tuple[set[str], set[str]]:
    """(labels of the choices in the supernets of the spaces built, those ``state.arch`` reaches)."""
    located: set[str] = set()
    reached: set[str] = set()
    token = _FIXED.set(None)  # the locators build supernets
    try:
        for locate in state.locators:
            found, on_path = locate(state.arch)
            located |= found
            reached |= on_path
    finally:
        _FIXED.reset(token)
    return located, reached


def _check_unreached(state: _Fixed, located: set[str], reached: set[str]) -> None:
    """Raise for the missing labels of a fixed build that ``state.arch`` reaches (or may reach)."""
    demanded = [spec for label, spec in state.provisional.items() if label in reached or label not in located]
    if demanded:
        raise InvalidArchitectureError(
            "invalid architecture: " + "; ".join(_missing_message(spec) for spec in demanded)
        )
    _log.debug("labels not reached by the architecture, built at their defaults: %s", list(state.provisional))


def coerce_choice(spec: ChoiceSpec, value: Any) -> Any:
    """The option of ``spec`` that ``value`` stands for, or MISSING; also NNI's forms of an option:
    NNI 2.x names the candidates of a list LayerChoice ``'0'``, ``'1'``, ... (retia: 0, 1, ...), and
    NNI writes the one input an ``n_chosen=1`` InputChoice picks as a list, ``[0]`` (retia: 0)."""
    chosen = match_option(spec.options, value)
    integral = all(isinstance(o, int) and not isinstance(o, bool) for o in spec.options)
    if chosen is MISSING and integral and spec.kind == "layerchoice":
        if isinstance(value, str) and value.isdecimal():
            chosen = match_option(spec.options, int(value))
    elif chosen is MISSING and integral and spec.kind == "inputchoice":
        if isinstance(value, (list, tuple)) and len(value) == 1:
            chosen = match_option(spec.options, value[0])
    return chosen


def normalize_arch(specs: Mapping[str, ChoiceSpec], arch: Mapping[str, Any]) -> Arch:
    """``arch`` with each value of a known label as its canonical option (NNI's forms accepted);
    other values are kept, for :func:`validate_arch` to report."""
    normalized = dict(arch)
    for label, value in arch.items():
        spec = specs.get(label)
        if spec is not None:
            chosen = coerce_choice(spec, value)
            if chosen is not MISSING:
                normalized[label] = canonical(chosen)
    return normalized


def fixed_choice(spec: ChoiceSpec) -> Any:
    """The option chosen for ``spec`` by the current fixed architecture, or MISSING outside one.

    A missing label gives the supernet's default for now: the block's end checks that the
    choice is not reached (see :func:`fixed_arch`).
    """
    state = _FIXED.get()
    if state is None:
        return MISSING
    if spec.label not in state.arch:
        state.provisional[spec.label] = spec
        return spec.default
    chosen = coerce_choice(spec, state.arch[spec.label])
    if chosen is MISSING:
        raise InvalidArchitectureError(
            f"invalid architecture: label {spec.label!r} has value {state.arch[spec.label]!r}, "
            f"not one of {list(spec.options)!r}"
        )
    state.consumed[spec.label] = spec
    return chosen


def fixed_derived(label: str) -> Any:
    """The value of ``label`` in the current fixed architecture (MISSING if absent or outside one), for
    a label that is no choice but a record derived from the others (NNI 3.0's ``<cell>/final``): the
    module reading it checks it, and it is then no unknown label."""
    state = _FIXED.get()
    if state is None or label not in state.arch:
        return MISSING
    state.derived.add(label)
    return state.arch[label]


def note_space_built(locate: Locator | None = None) -> None:
    """Count a model space built in the current :func:`fixed_arch` block: its unused labels then raise.
    ``locate`` (for a top-level space) tells which labels the architecture reaches."""
    state = _FIXED.get()
    if state is not None:
        state.spaces_built += 1
        if locate is not None:
            state.locators.append(locate)


# ---------------------------------------------------------------------------- (space, arch) -> model


def build_frozen(
    space: Callable[..., T], arch: Arch, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
) -> T:
    """``space(*args, **kwargs)`` under ``fixed_arch(arch)``: the concrete model ``arch`` of a space.

    The recipe of every frozen model (``space.freeze(arch)``, or a space built in a
    ``fixed_arch`` block), so a dumped one is rebuilt the same way.
    """
    with fixed_arch(arch, verbose=False):
        return space(*args, **(kwargs or {}))


class FrozenModel:
    """A space, its arguments and an architecture; calling it builds the concrete model.

    The zero-argument model factory the client ships for ``submit(space, ..., arch=...)``
    (traced, so it travels as a recipe): the worker builds the model inside fit, after
    the evaluator has seeded everything, with :func:`build_frozen`.
    """

    def __init__(
        self,
        space: Callable[..., Any],
        arch: Arch,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.space = space
        self.arch = arch
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def __call__(self) -> Any:
        return build_frozen(self.space, self.arch, self.args, self.kwargs)

    def __repr__(self) -> str:
        return f"FrozenModel({getattr(self.space, '__qualname__', self.space)}, {self.arch})"
