"""Architectures, their validation, and the context that choices consult while a space is built.

Two context variables carry the state (no mutable globals):

* the fixed architecture set by :func:`fixed_arch`: when present, every choice returns its
  chosen value instead of a supernet module;
* the stack of model spaces being constructed: a choice registers its label and options
  with every open space, so ``space.search_space()`` knows all of them, value choices
  included. A space is open while its ``__init__`` runs (checked on the frame stack), so
  no ``__init__`` is wrapped and nested spaces share one label namespace.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import sys
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Union

from ..errors import InvalidArchitectureError

__all__ = ["Arch", "ChoiceSpec", "fixed_arch", "load_arch", "validate_arch", "current_fixed_arch"]

_log = logging.getLogger(__name__)

Arch = dict[str, Any]
ArchLike = Union[Mapping[str, Any], str, "os.PathLike[str]"]


@dataclass(frozen=True)
class ChoiceSpec:
    """One decision of a space: its label, kind, JSON-able options, and the supernet's default."""

    label: str
    kind: str
    options: tuple[Any, ...]
    default: Any


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


# ---------------------------------------------------------------------------- comparison


def _canon(value: Any) -> Any:
    """Tuples become lists (as after a JSON round trip), so options compare by value."""
    if isinstance(value, (list, tuple)):
        return [_canon(v) for v in value]
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


def match_option(options: Sequence[Any], value: Any) -> Any:
    """The option equal to ``value`` (lists and tuples compare alike), or MISSING."""
    canon = _canon(value)
    for option in options:
        if _same(_canon(option), canon):
            return option
    return MISSING


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


def validate_arch(search_space: Mapping[str, Sequence[Any]], arch: Mapping[str, Any]) -> None:
    """Raise InvalidArchitectureError listing every missing, unknown or invalid label of ``arch``."""
    if not isinstance(arch, Mapping):
        raise InvalidArchitectureError(
            f"an architecture must be a dict {{label: choice}}, got {type(arch).__name__}"
        )
    problems = []
    for label, options in search_space.items():
        if label not in arch:
            problems.append(f"missing label {label!r} (options: {list(options)!r})")
        elif match_option(options, arch[label]) is MISSING:
            problems.append(f"label {label!r} has value {arch[label]!r}, not one of {list(options)!r}")
    unknown = [label for label in arch if label not in search_space]
    if unknown:
        problems.append(f"unknown label(s) {unknown!r} (valid labels: {list(search_space)!r})")
    if problems:
        raise InvalidArchitectureError("invalid architecture: " + "; ".join(problems))


# ---------------------------------------------------------------------------- fixed_arch


@dataclass
class _Fixed:
    arch: Arch
    consumed: dict[str, ChoiceSpec] = field(default_factory=dict)
    spaces_built: int = 0


_FIXED: contextvars.ContextVar[_Fixed | None] = contextvars.ContextVar("retia_fixed_arch", default=None)


def current_fixed_arch() -> Arch | None:
    """The architecture of the innermost :func:`fixed_arch` block, or None (a supernet is built)."""
    state = _FIXED.get()
    return None if state is None else state.arch


@contextlib.contextmanager
def fixed_arch(arch: ArchLike, verbose: bool = True) -> Iterator[Arch]:
    """Within this block, model spaces build the concrete model ``arch`` (a dict or a JSON file path).

    A choice whose label is missing or whose value is invalid raises at once; labels of
    ``arch`` that no choice used raise when the block ends.
    """
    state = _Fixed(load_arch(arch))
    if verbose:
        _log.info("fixed architecture: %s", state.arch)
    token = _FIXED.set(state)
    try:
        yield state.arch
    finally:
        _FIXED.reset(token)
    if state.spaces_built or state.consumed:
        unknown = [label for label in state.arch if label not in state.consumed]
        if unknown:
            valid = {label: list(spec.options) for label, spec in state.consumed.items()}
            raise InvalidArchitectureError(
                f"invalid architecture: unknown label(s) {unknown!r}; the model space has {valid!r}"
            )


def fixed_choice(spec: ChoiceSpec) -> Any:
    """The option chosen for ``spec`` by the current fixed architecture, or MISSING outside one."""
    state = _FIXED.get()
    if state is None:
        return MISSING
    if spec.label not in state.arch:
        raise InvalidArchitectureError(
            f"invalid architecture: missing label {spec.label!r} "
            f"({spec.kind}; options: {list(spec.options)!r})"
        )
    chosen = match_option(spec.options, state.arch[spec.label])
    if chosen is MISSING:
        raise InvalidArchitectureError(
            f"invalid architecture: label {spec.label!r} has value {state.arch[spec.label]!r}, "
            f"not one of {list(spec.options)!r}"
        )
    state.consumed[spec.label] = spec
    return chosen


# ---------------------------------------------------------------------------- space builds


@dataclass
class _Build:
    """Label namespace shared by a space and every space nested in it."""

    counter: int = 0
    labels: set[str] = field(default_factory=set)


class _OpenSpace:
    """A model space whose ``__init__`` is running; choices created now register with it."""

    def __init__(self, space: Any, build: _Build, specs: dict[str, ChoiceSpec]) -> None:
        self.ref = weakref.ref(space)
        self.build = build
        self.specs = specs

    def is_open(self) -> bool:
        """True while a frame of an ``__init__`` (the space's own, a base's, a decorated one) runs on it."""
        space = self.ref()
        if space is None:
            return False
        frame: FrameType | None = sys._getframe(1)
        while frame is not None:
            code = frame.f_code
            if (
                code.co_name == "__init__"
                and code.co_argcount
                and frame.f_locals.get(code.co_varnames[0]) is space
            ):
                return True
            frame = frame.f_back
        return False


_OPEN: contextvars.ContextVar[tuple[_OpenSpace, ...]] = contextvars.ContextVar(
    "retia_open_spaces", default=()
)


def _open_spaces() -> tuple[_OpenSpace, ...]:
    stack = _OPEN.get()
    n = len(stack)
    while n and not stack[n - 1].is_open():
        n -= 1
    if n != len(stack):
        stack = stack[:n]
        _OPEN.set(stack)
    return stack


def begin_space(space: Any) -> dict[str, ChoiceSpec]:
    """Open ``space`` for registration (called from ``ModelSpace.__new__``); returns its spec dict."""
    stack = _open_spaces()
    build = stack[-1].build if stack else _Build()
    specs: dict[str, ChoiceSpec] = {}
    _OPEN.set(stack + (_OpenSpace(space, build, specs),))
    state = _FIXED.get()
    if state is not None:
        state.spaces_built += 1
    return specs


def register_choice(kind: str, label: str | None, options: Sequence[Any], default: Any) -> ChoiceSpec:
    """Resolve the label (auto-generated in construction order if None) and record the choice."""
    stack = _open_spaces()
    build = stack[-1].build if stack else None
    if label is None:
        if build is None:
            raise ValueError(f"a {kind} created outside a ModelSpace's __init__ needs an explicit label")
        while True:
            build.counter += 1
            label = f"{kind}_{build.counter}"
            if label not in build.labels:
                break
    elif not isinstance(label, str) or not label:
        raise ValueError(f"a choice label must be a non-empty string, got {label!r}")
    spec = ChoiceSpec(label, kind, tuple(options), default)
    if build is not None:
        if label in build.labels:
            raise ValueError(
                f"duplicate choice label {label!r}: labels must be unique within a model space "
                "(to reuse one decision, create the choice once and use the object in several places)"
            )
        build.labels.add(label)
        for entry in stack:
            entry.specs[label] = spec
    return spec
