"""Traced objects: real instances that also remember how to rebuild themselves.

``trace(cls)`` returns a class: a subclass of ``cls`` with the same name, whose ``__init__``
records the call's arguments as a :class:`Recipe` on the instance before running ``cls``'s own,
so :func:`retia.dump` can ship a few hundred bytes instead of the object. ``isinstance``,
subclassing (a subclass's instances record their own arguments), ``pickle`` and ``copy`` work
as for any class. ``trace(function)`` returns a :class:`Traced` callable whose results carry
the recipe where they can. Instances expose NNI's names: ``trace_symbol``, ``trace_args``,
``trace_kwargs``, ``trace_copy()`` and ``get()``.
"""

from __future__ import annotations

import functools
import inspect
import logging
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

__all__ = ["Recipe", "Traced", "trace", "get_recipe", "is_traced", "is_traceable", "is_wrapped_with_trace"]

_log = logging.getLogger(__name__)
_RECIPE_ATTR = "__retia_recipe__"
_WRAPS_ATTR = "__retia_traces__"  # in a trace class's own __dict__: (original, kw_only)
_KW_ONLY_ATTR = "__retia_kw_only__"  # inherited: how a traced class and its subclasses record
_HOOKED_ATTR = "__retia_recording__"  # on a recording __init__, so it is never wrapped twice
T = TypeVar("T")
_C = TypeVar("_C", bound=Callable[..., Any])


@dataclass
class Recipe:
    """How to rebuild an object: ``target(*args, **kwargs)``.

    It is also what ``trace_copy()`` returns (NNI's semantics): the arguments without the object,
    to edit (``trace_kwargs``) and build with ``get()``; :func:`retia.dump` ships it as a recipe.
    """

    target: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        obj = self.target(*self.args, **self.kwargs)
        _attach(obj, self)
        return obj

    def get(self) -> Any:
        """A new object built from these arguments (a copy of the recipe goes with it)."""
        return self.trace_copy().build()

    def trace_copy(self) -> Recipe:
        return Recipe(self.target, tuple(self.args), dict(self.kwargs))

    @property
    def trace_symbol(self) -> Any:
        """The class or function the user traced (for a trace class, the class it wraps)."""
        return _symbol(self.target)

    @trace_symbol.setter
    def trace_symbol(self, symbol: Callable[..., Any]) -> None:
        self.target = symbol

    @property
    def trace_args(self) -> list[Any]:
        """The positional arguments (a new list: assign ``trace_args`` to change them)."""
        return list(self.args)

    @trace_args.setter
    def trace_args(self, args: list[Any]) -> None:
        self.args = tuple(args)

    @property
    def trace_kwargs(self) -> dict[str, Any]:
        """The keyword arguments (the recipe's own dict: editing it edits the recipe)."""
        return self.kwargs

    @trace_kwargs.setter
    def trace_kwargs(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = dict(kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        # A trace class made by trace(SomeoneElsesClass) has the original's name, which names
        # the original: such a target travels as (original, kw_only) and is traced again there.
        return (_recipe, (_class_token(self.target), self.args, self.kwargs))


class Traced(Generic[T]):
    """A traced function (or a class that cannot be subclassed): its results carry their recipe."""

    __slots__ = ("__wrapped__", "__dict__", "_kw_only")
    __wrapped__: Callable[..., T]
    __name__: str  # these two are copied from the target by functools.update_wrapper
    __qualname__: str

    def __init__(self, target: Callable[..., T], kw_only: bool = True) -> None:
        if isinstance(target, Traced):
            target = target.__wrapped__
        if not callable(target):
            raise TypeError(f"trace() needs a class or a function, got {type(target).__name__}")
        self.__wrapped__ = target
        self._kw_only = kw_only
        functools.update_wrapper(self, target, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        args = tuple(_expand(a) for a in args)
        kwargs = {k: _expand(v) for k, v in kwargs.items()}
        args, kwargs = _record_arguments(self.__wrapped__, args, kwargs, self._kw_only)
        obj = self.__wrapped__(*args, **kwargs)  # as Recipe.build, keeping the type
        _attach(obj, Recipe(self.__wrapped__, args, kwargs))
        return obj

    def __repr__(self) -> str:
        return f"trace({_qualname(self.__wrapped__)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Traced, (self.__wrapped__, self._kw_only))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Traced)
            and other.__wrapped__ is self.__wrapped__
            and other._kw_only == self._kw_only
        )

    def __hash__(self) -> int:
        return hash(self.__wrapped__)


@overload
def trace(target: None = None, *, kw_only: bool = True) -> Callable[[_C], _C]: ...
@overload
def trace(target: type[T], *, kw_only: bool = True) -> type[T]: ...  # type: ignore[overload-overlap]
@overload
def trace(target: Callable[..., T], *, kw_only: bool = True) -> Traced[T]: ...
@overload
def trace(target: Callable[..., T], *args: Any, kw_only: bool = True, **kwargs: Any) -> T: ...


def trace(target: Any = None, *args: Any, kw_only: bool = True, **kwargs: Any) -> Any:
    """Trace a class or a function (NNI's ``nni.trace``), as ``@trace``, ``@trace(kw_only=False)``
    or ``trace(cls)``; ``trace(cls, *args, **kw)`` builds a traced instance now.

    ``kw_only=True`` records positional arguments as keywords where the signature allows;
    ``kw_only=False`` records them as passed.
    """
    kw_only = bool(kw_only)
    if target is None:
        if args or kwargs:
            raise TypeError("trace(None, ...): pass the class or function to trace first")
        return functools.partial(trace, kw_only=kw_only)
    traced = _traced(target, kw_only)
    if args or kwargs:
        return traced(*args, **kwargs)
    return traced


def get_recipe(obj: Any) -> Recipe | None:
    """The recipe attached to ``obj`` by :func:`trace`, or None."""
    recipe = getattr(obj, _RECIPE_ATTR, None) if not isinstance(obj, type) else None
    return recipe if isinstance(recipe, Recipe) else None


def is_traced(obj: Any) -> bool:
    return get_recipe(obj) is not None


def is_traceable(obj: Any) -> bool:
    """NNI's ``is_traceable``: a traced object, or a recipe (a ``trace_copy()``), not a class."""
    return is_traced(obj) or isinstance(obj, Recipe)


def is_wrapped_with_trace(cls_or_func: Any) -> bool:
    """NNI's ``is_wrapped_with_trace``: made by :func:`trace` itself (a subclass of one is not)."""
    return isinstance(cls_or_func, Traced) or (
        isinstance(cls_or_func, type) and _WRAPS_ATTR in cls_or_func.__dict__
    )


# --- trace classes ------------------------------------------------------------------------------

_classes: dict[tuple[type, bool], type] = {}  # one trace class per (original, kw_only)
_classes_lock = threading.RLock()  # re-entrant: an __init_subclass__ may trace too


def _traced(target: Any, kw_only: bool) -> Any:
    if isinstance(target, Traced):
        target = target.__wrapped__
    if not isinstance(target, type):
        if not callable(target):
            raise TypeError(f"trace() needs a class or a function, got {type(target).__name__}")
        return Traced(target, kw_only)
    if getattr(target, _KW_ONLY_ATTR, None) is kw_only:
        return target  # a trace class already, or a subclass of one: its instances record
    original = target.__dict__[_WRAPS_ATTR][0] if _WRAPS_ATTR in target.__dict__ else target
    with _classes_lock:
        made = _classes.get((original, kw_only))
        if made is None:
            try:
                made = _make_trace_class(original, kw_only)
            except TypeError as exc:  # bool, a final extension type, an enum with members
                _log.debug("cannot subclass %s (%s); tracing it as a callable", _qualname(original), exc)
                return Traced(original, kw_only)
            _classes[(original, kw_only)] = made
    return made


class _OwnOnly:
    """A class attribute only its own class has: subclasses do not inherit it.

    ``__wrapped__`` is one: ``inspect.signature`` follows it, and a subclass with its own
    ``__init__`` must not be given the traced class's signature.
    """

    def __init__(self, value: Any) -> None:
        self.value = value
        self.owner: type | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self.owner = owner

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if owner is not None and owner is self.owner:
            return self.value
        raise AttributeError("__wrapped__")


def _make_trace_class(original: type, kw_only: bool) -> type:
    """A subclass of ``original`` with its name, recording each instance's constructor call."""
    cls: type

    def next_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init = super(cls, self).__init__  # type: ignore[arg-type]
        if getattr(init, "__objclass__", None) is not object:
            init(*args, **kwargs)
        elif (args or kwargs) and type(self).__new__ is object.__new__:  # type: ignore[comparison-overlap]
            raise TypeError(f"{type(self).__name__}() takes no arguments")  # as without trace
        else:
            init()  # object.__init__: the arguments were __new__'s (a namedtuple's, say)

    def init_subclass(sub: type, **kw: Any) -> None:
        super(cls, sub).__init_subclass__(**kw)  # type: ignore[arg-type]
        own = sub.__dict__.get("__init__")
        if own is not None and not getattr(own, _HOOKED_ATTR, False):
            type.__setattr__(sub, "__init__", _recording_init(own, own))

    def reduce_ex(self: Any, protocol: Any) -> Any:
        reduced = super(cls, self).__reduce_ex__(protocol)  # type: ignore[arg-type]
        if type(self) is not cls or not isinstance(reduced, tuple) or _published(cls):
            return reduced
        # cls has the name of the class it wraps, so pickle would find that one: rebuild through
        # trace(original) instead (what the recipe and the state say stays as pickled).
        func, func_args = reduced[0], reduced[1]
        if func is cls:
            return (_rebuild, (original, kw_only, None, func_args), *reduced[2:])
        if func_args and func_args[0] is cls:
            return (_rebuild, (original, kw_only, func, tuple(func_args[1:])), *reduced[2:])
        return reduced

    def body(ns: dict[str, Any]) -> None:
        ns.update(
            __module__=original.__module__, __qualname__=original.__qualname__, __doc__=original.__doc__
        )
        ns["__wrapped__"] = _OwnOnly(original)
        ns[_WRAPS_ATTR] = (original, kw_only)
        ns[_KW_ONLY_ATTR] = kw_only
        ns["__init__"] = _recording_init(original.__init__, next_init)  # type: ignore[misc]
        ns["__init_subclass__"] = init_subclass
        ns["__reduce_ex__"] = reduce_ex
        for name, value in _NNI_API.items():
            if not hasattr(original, name):  # never hide the class's own (a dict's get, say)
                ns[name] = value

    cls = types.new_class(original.__name__, (original,), {}, body)
    return cls


def _recording_init(signature_of: Any, call: Callable[..., None]) -> Callable[..., None]:
    """An ``__init__`` that records the outermost constructor call, then runs ``call``."""

    @functools.wraps(signature_of)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if _RECIPE_ATTR not in self.__dict__:  # else a subclass's __init__ (or __new__) recorded it
            args = tuple(_expand(a) for a in args)
            kwargs = {k: _expand(v) for k, v in kwargs.items()}
            cls = type(self)
            named_args, named_kwargs = _record_arguments(cls, args, kwargs, getattr(cls, _KW_ONLY_ATTR, True))
            _attach(self, Recipe(cls, named_args, named_kwargs))
        call(self, *args, **kwargs)

    setattr(__init__, _HOOKED_ATTR, True)
    return __init__


def _expand(value: Any) -> Any:
    """A generator argument (``model.parameters()``) becomes a list: recorded and passed once."""
    return list(value) if isinstance(value, types.GeneratorType) else value


def _own_recipe(self: Any) -> Recipe:
    recipe = get_recipe(self)
    if recipe is None:
        raise AttributeError(
            f"this {type(self).__name__} has no recipe: it was made without calling its class "
            "(copied from its state, say); build it by calling the traced class"
        )
    return recipe


def _nni_property(name: str) -> property:
    def fget(self: Any) -> Any:
        return getattr(_own_recipe(self), name)

    def fset(self: Any, value: Any) -> None:
        setattr(_own_recipe(self), name, value)

    return property(fget, fset, doc=f"NNI's ``{name}`` of this object's recipe.")


def _trace_copy(self: Any) -> Recipe:
    """The recipe alone (NNI's ``trace_copy``): edit ``trace_kwargs``, then ``get()`` builds anew."""
    return _own_recipe(self).trace_copy()


def _get(self: Any) -> Any:
    """NNI's ``get()``: a traced object is already the object itself."""
    return self


_NNI_API: dict[str, Any] = {
    "trace_symbol": _nni_property("trace_symbol"),
    "trace_args": _nni_property("trace_args"),
    "trace_kwargs": _nni_property("trace_kwargs"),
    "trace_copy": _trace_copy,
    "get": _get,
}


def _symbol(target: Any) -> Any:
    """What the user traced: the original class for a trace class, else the target itself."""
    if isinstance(target, type) and _WRAPS_ATTR in target.__dict__:
        return target.__dict__[_WRAPS_ATTR][0]
    return target


def _published(cls: type) -> bool:
    """True if pickle finds ``cls`` itself under its module and qualified name."""
    obj: Any = sys.modules.get(cls.__module__)
    for part in cls.__qualname__.split("."):
        obj = getattr(obj, part, None)
    return obj is cls


@dataclass(frozen=True)
class _TraceClassRef:
    """A trace class made by ``trace(original)`` that pickle cannot find by its name."""

    original: type
    kw_only: bool


def _class_token(target: Any) -> Any:
    if isinstance(target, type) and _WRAPS_ATTR in target.__dict__ and not _published(target):
        original, kw_only = target.__dict__[_WRAPS_ATTR]
        return _TraceClassRef(original, kw_only)
    return target


def _recipe(target: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Recipe:
    if isinstance(target, _TraceClassRef):
        target = trace(target.original, kw_only=target.kw_only)
    return Recipe(target, args, kwargs)


def _rebuild(original: type, kw_only: bool, func: Callable[..., Any] | None, args: tuple[Any, ...]) -> Any:
    """Unpickle an instance of ``trace(original)``: through ``func`` (``copyreg.__newobj__``, say)."""
    cls: Any = trace(original, kw_only=kw_only)
    return cls(*args) if func is None else func(cls, *args)


# --- recording arguments ------------------------------------------------------------------------


def _attach(obj: Any, recipe: Recipe) -> None:
    try:
        object.__setattr__(obj, _RECIPE_ATTR, recipe)
    except (AttributeError, TypeError):
        # Immutable results (ints, tuples, slotted objects) cannot carry a recipe; they are
        # serialized by value instead, which is what such small values want anyway.
        _log.debug("cannot attach a recipe to %s; it will be serialized by value", type(obj).__name__)


def _record_arguments(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], kw_only: bool
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The call as recorded: positionals named where allowed (``kw_only``), or as passed."""
    if kw_only:
        return _name_positionals(target, args, kwargs)
    return tuple(args), dict(kwargs)


def _name_positionals(
    target: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Record positional arguments as keywords where the signature allows, so recipes read well."""
    if not args:
        return args, dict(kwargs)
    try:
        params = _parameters(target)
    except (TypeError, ValueError):  # no signature, or an unhashable callable
        return args, dict(kwargs)
    names: list[str] = []
    for name, kind in params:
        if kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD or name in kwargs:
            break
        names.append(name)
    if len(args) > len(names):
        return args, dict(kwargs)  # *args or positional-only: keep the call as written
    return (), {**dict(zip(names, args)), **kwargs}


@functools.lru_cache(maxsize=1024)
def _parameters(target: Callable[..., Any]) -> tuple[tuple[str, Any], ...]:
    """(name, kind) of each parameter; cached: every evaluator rebuilt on a worker asks again."""
    return tuple((p.name, p.kind) for p in inspect.signature(target).parameters.values())


def _qualname(target: Any) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"
