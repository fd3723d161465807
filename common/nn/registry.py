"""The label registry of model spaces under construction: what ``space.search_space()`` is made of.

A choice registers its label and options with every open space, so a space knows all of
them, value choices included. A space is open while its ``__init__`` runs (checked on the
frame stack, so no ``__init__`` is wrapped), and nested spaces share one label namespace.
The stack of open spaces is a context variable, not a mutable global.

Two choices with one label are one decision (NNI's shared labels): the second gets the first's
spec, and must have the same kind and options. Labels a choice does not give are generated in
construction order, in the :class:`LabelStyle` of the space class (retia's, NNI 2.x's or 3.0's),
so that an architecture exported by NNI for the same space loads as it is.

:class:`label_scope` (NNI 3.0's) is a ``with`` block whose choices are labelled ``scope/name``
(``scope/1``, ``scope/width``); scopes nest (``outer/inner/1``), in any space or outside one.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import enum
import sys
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from ..arch import MISSING, ChoiceSpec, match_option

__all__ = ["LabelStyle", "begin_space", "composite_scope", "label_scope", "register_choice"]


class LabelStyle(enum.Enum):
    """How a space names the choices created without a label."""

    RETIA = "retia"  # layerchoice_1, valuechoice_2: one counter for a space and its nested spaces
    NNI2 = "nni2"  # model_1, model_2; a nested space takes the next number, numbers inside: model_3_1
    NNI3 = "nni3"  # label_prefix: prefix/1, prefix/label; no prefix: every label must be given


@dataclass
class _Build:
    """Label namespace shared by a space and every space nested in it."""

    counter: int = 0
    specs: dict[str, ChoiceSpec] = field(default_factory=dict)


@dataclass
class _Scope:
    """Where one open space puts the labels it generates (NNI 2.x namespace, NNI 3.0 label scope)."""

    style: LabelStyle
    path: tuple[str, ...]  # NNI2: ("model", "3") is model_3; NNI3: ("model", "sub") is model/sub
    strict: bool = False  # NNI3 without a label_prefix: auto labels refused
    counter: int = 0

    def next_number(self) -> int:
        self.counter += 1
        return self.counter


class _OpenSpace:
    """A model space whose ``__init__`` is running; choices created now register with it."""

    def __init__(self, space: Any, build: _Build, specs: dict[str, ChoiceSpec], scope: _Scope) -> None:
        self.ref = weakref.ref(space)
        self.build = build
        self.specs = specs
        self.scope = scope

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


@dataclass
class _Entered:
    """A label_scope entered by ``with``, and the innermost space open when it was."""

    scope: _Scope
    space: _OpenSpace | None
    owner: label_scope


_SCOPES: contextvars.ContextVar[tuple[_Entered, ...]] = contextvars.ContextVar(
    "retia_label_scopes", default=()
)


def _enclosing(stack: tuple[_OpenSpace, ...]) -> _Scope | None:
    """The innermost scope now: a label_scope entered in the innermost open space (or, outside every
    space, at top level), else that space's own scope."""
    top = stack[-1] if stack else None
    entered = _SCOPES.get()
    if entered and entered[-1].space is top:
        return entered[-1].scope
    return top.scope if top is not None else None


def _scope_for(space: Any, parent: _OpenSpace | None, stack: tuple[_OpenSpace, ...]) -> _Scope:
    """The label scope of a space being built: its class's style, nested in its parent's scope
    (an NNI 3.0 space also in a label_scope it is built in)."""
    style: LabelStyle = getattr(type(space), "_retia_label_style", LabelStyle.RETIA)
    enclosing = _enclosing(stack) if style is LabelStyle.NNI3 else (parent.scope if parent else None)
    outer = enclosing if enclosing is not None and enclosing.style is style else None
    if style is LabelStyle.NNI2:
        # NNI 2.x's ModelNamespace: a nested model_wrapper takes its parent's next number.
        if outer is None:
            return _Scope(style, ("model",))
        return _Scope(style, (*outer.path, str(outer.next_number())))
    if style is LabelStyle.NNI3:
        # NNI 3.0's label_scope(label_prefix); without a prefix, a strict scope adding no part.
        prefix: str | None = getattr(type(space), "_retia_label_prefix", None)
        base = outer.path if outer is not None else ()
        if prefix is None:
            return _Scope(style, base, strict=True)
        return _Scope(style, (*base, prefix))
    return _Scope(style, ())


def begin_space(space: Any) -> tuple[dict[str, ChoiceSpec], bool]:
    """Open ``space`` for registration (called from ``ModelSpace.__new__``); returns its spec dict,
    and whether it is a top-level space (not built inside another's ``__init__``)."""
    stack = _open_spaces()
    parent = stack[-1] if stack else None
    build = parent.build if parent is not None else _Build()
    specs: dict[str, ChoiceSpec] = {}
    _OPEN.set(stack + (_OpenSpace(space, build, specs, _scope_for(space, parent, stack)),))
    return specs, parent is None


def _resolve_label(kind: str, label: str | None, stack: tuple[_OpenSpace, ...]) -> str:
    """The full label of a choice: the given one, or the next generated one, in the style of the
    innermost scope (a label_scope's, or the innermost open space's)."""
    if label is not None and (not isinstance(label, str) or not label):
        raise ValueError(f"a choice label must be a non-empty string, got {label!r}")
    scope = _enclosing(stack)
    if scope is None:
        if label is None:
            raise ValueError(
                f"a {kind} created outside a ModelSpace's __init__ needs an explicit label "
                "(or a `with label_scope('name'):` around it)"
            )
        return label
    if scope.style is LabelStyle.NNI3:
        if label is None:
            if scope.strict:
                raise ValueError(
                    f"a {kind} in an NNI 3.0 ModelSpace without a label_prefix needs an explicit "
                    "label (as in NNI): give label=..., or define the class with "
                    "`class Net(ModelSpace, label_prefix='model')`"
                )
            label = str(scope.next_number())
        elif "/" in label:
            raise ValueError(f"an NNI 3.0 label cannot contain '/', got {label!r} (use a label_prefix)")
        return "/".join((*scope.path, label))
    if label is not None:
        return label
    build = stack[-1].build  # a scope not in NNI 3.0's style is an open space's own
    while True:
        if scope.style is LabelStyle.NNI2:
            label = "_".join((*scope.path, str(scope.next_number())))
        else:
            build.counter += 1
            label = f"{kind}_{build.counter}"
        if label not in build.specs:
            return label


def _same_decision(a: ChoiceSpec, b: ChoiceSpec) -> bool:
    """Same kind, same options in the same order (NNI 3.0 compares the values, in order)."""
    return (
        a.kind == b.kind
        and len(a.options) == len(b.options)
        and all(match_option([x], y) is not MISSING for x, y in zip(a.options, b.options))
    )


def register_choice(
    kind: str, label: str | None, options: Sequence[Any], default: Any, prior: Sequence[float] | None = None
) -> ChoiceSpec:
    """Resolve the label (auto-generated in construction order if None) and record the choice.

    A label already registered in this build is the same decision: its spec is returned, so both
    choices take one value; ValueError if the kind or the options differ, or both give a prior and
    the priors differ (one that gives none shares the other's).
    """
    stack = _open_spaces()
    entry = stack[-1] if stack else None
    label = _resolve_label(kind, label, stack)
    spec = ChoiceSpec(label, kind, tuple(options), default, None if prior is None else tuple(prior))
    if entry is not None:
        known = entry.build.specs.get(label)
        if known is not None:
            if not _same_decision(known, spec):
                raise ValueError(
                    f"choice label {label!r} is used by two different choices: a {known.kind} with "
                    f"options {list(known.options)!r} and a {kind} with options {list(options)!r}. "
                    "Choices sharing a label are one decision and need the same kind and the same "
                    "options in the same order; give one of them another label"
                )
            if spec.prior is not None and known.prior is not None and spec.prior != known.prior:
                raise ValueError(
                    f"choice label {label!r} is given two different priors, {list(known.prior)!r} and "
                    f"{list(spec.prior)!r}: choices sharing a label are one decision with one prior; "
                    "give the prior once (or the same one), or use another label"
                )
            upgraded = known.prior is None and spec.prior is not None
            spec = dataclasses.replace(known, prior=spec.prior) if upgraded else known
            if upgraded:  # the first one gave no prior: the decision takes this one's
                entry.build.specs[label] = spec
                for open_space in stack:
                    open_space.specs[label] = spec
        else:
            entry.build.specs[label] = spec
        for open_space in stack:
            open_space.specs.setdefault(label, spec)
    return spec


class label_scope:  # NNI 3.0's name, lower case
    """NNI 3.0's ``label_scope``: choices created in the ``with`` block are labelled under it.

    ``with label_scope('x'):`` gives ``x/1``, ``x/2`` to choices without a label and ``x/width``
    to ``label='width'``; a scope inside another nests (``x/y/1``), and one without a name takes
    the next number of the scope around it (``x/3/1``: labels and unnamed scopes share one count).
    In an NNI 3.0 ``ModelSpace`` the space's ``label_prefix`` is the outermost scope; in a retia or
    NNI 2.x space, and outside every space, the scope's path starts at its own name. Entering a
    scope restarts its count, as in NNI, so a scope entered twice names its choices alike (the
    same labels: one shared decision each).
    """

    def __init__(self, basename: str | None = None) -> None:
        if basename is not None:
            _check_scope_name(basename)
        self.basename = basename
        self._path: tuple[str, ...] | None = None
        self._tokens: list[contextvars.Token[tuple[_Entered, ...]]] = []

    def __enter__(self) -> label_scope:
        stack = _open_spaces()
        if self._path is None:  # a scope keeps its path when entered again (NNI's)
            outer = _enclosing(stack)
            nni3 = outer if outer is not None and outer.style is LabelStyle.NNI3 else None
            name = self.basename
            if name is None:
                if nni3 is None or nni3.strict:
                    raise ValueError(
                        "label_scope() without a name takes the next number of the label scope "
                        "around it, and there is none here (or it is an NNI 3.0 space without a "
                        "label_prefix, where every label is given): give it a name, "
                        "label_scope('block')"
                    )
                name = str(nni3.next_number())
            self._path = (*(nni3.path if nni3 is not None else ()), name)
        entry = _Entered(_Scope(LabelStyle.NNI3, self._path), stack[-1] if stack else None, self)
        self._tokens.append(_SCOPES.set(_SCOPES.get() + (entry,)))
        return self

    def __exit__(self, *exc: object) -> None:
        _SCOPES.reset(self._tokens.pop())

    @property
    def path(self) -> list[str] | None:
        """The scope's full path (``['x', 'y']``); None before it is first entered."""
        return None if self._path is None else list(self._path)

    @property
    def name(self) -> str:
        """The scope's full name (``'x/y'``), the prefix of the labels made in it."""
        if self._path is None:
            raise ValueError(f"label_scope {self.basename!r} is not entered yet: use it in a `with` block")
        return "/".join(self._path)

    absolute_scope = name

    @classmethod
    def _at(cls, path: tuple[str, ...]) -> label_scope:
        """A scope at a given full path (a Cell's own label, which is a scope in NNI 3.0)."""
        scope = cls(path[-1])
        scope._path = path
        return scope

    @staticmethod
    def current() -> label_scope | None:
        """The innermost label_scope entered by ``with`` in this context, or None."""
        entered = _SCOPES.get()
        return entered[-1].owner if entered else None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, label_scope) and self._path is not None and self._path == other._path

    def __hash__(self) -> int:
        return hash(self._path)

    def __repr__(self) -> str:
        shown = self.basename if self._path is None else "/".join(self._path)
        return f"label_scope({shown!r})"


def _check_scope_name(name: Any) -> None:
    if not isinstance(name, str) or not name or "/" in name:
        raise ValueError(
            f"a label_scope name must be a non-empty string without '/', got {name!r} "
            "(nest scopes for a longer path: with label_scope('a'): with label_scope('b'): ...)"
        )


@contextlib.contextmanager
def composite_scope(kind: str, label: str | None) -> Iterator[tuple[str, Callable[[str], str]]]:
    """The label of a module made of several choices (a Cell), and how to label its choices.

    Yields ``(label, child)``: ``label`` is the given one or the next generated one (``cell_1``,
    NNI 2.x ``model_1``, NNI 3.0 ``model/1``); ``child('op_2_0')`` is the label to give a choice
    of the module, so that it registers as ``<label>/op_2_0`` in every style (in NNI 3.0's, the
    module is a label scope for the block, so choices its candidates create nest under it too).
    """
    stack = _open_spaces()
    full = _resolve_label(kind, label, stack)
    enclosing = _enclosing(stack)
    if enclosing is None or enclosing.style is not LabelStyle.NNI3:
        yield full, lambda name: f"{full}/{name}"
        return
    with label_scope._at(tuple(full.split("/"))):
        yield full, lambda name: name
