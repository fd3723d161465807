"""The label registry of model spaces under construction: what ``space.search_space()`` is made of.

A choice registers its label and options with every open space, so a space knows all of
them, value choices included. A space is open while its ``__init__`` runs (checked on the
frame stack, so no ``__init__`` is wrapped), and nested spaces share one label namespace.
The stack of open spaces is a context variable, not a mutable global.
"""

from __future__ import annotations

import contextvars
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..arch import ChoiceSpec, note_space_built

__all__ = ["begin_space", "register_choice"]


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
    note_space_built()
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
