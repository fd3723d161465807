"""Traced objects: real instances that also remember how to rebuild themselves.

``trace(cls)(*args, **kw)`` calls ``cls`` normally and attaches a :class:`Recipe` (the
callable plus its arguments, positional ones named where the signature allows) to the
result, so :func:`retia.dump` can ship a few hundred bytes instead of the object. No
metaclass and no patched ``__init__``: the instance is exactly what ``cls`` returns.
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, overload

__all__ = ["Recipe", "trace", "get_recipe", "is_traced"]

_log = logging.getLogger(__name__)
_RECIPE_ATTR = "__retia_recipe__"
T = TypeVar("T")


@dataclass(frozen=True)
class Recipe:
    """How to rebuild an object: ``target(*args, **kwargs)``."""

    target: Callable[..., Any]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        obj = self.target(*self.args, **self.kwargs)
        _attach(obj, self)
        return obj


class Traced(Generic[T]):
    """A callable wrapper whose results carry their recipe; see :func:`trace`."""

    __slots__ = ("__wrapped__", "__dict__")
    __wrapped__: Callable[..., T]
    __name__: str  # these two are copied from the target by functools.update_wrapper
    __qualname__: str

    def __init__(self, target: Callable[..., T]) -> None:
        if isinstance(target, Traced):
            target = target.__wrapped__
        if not callable(target):
            raise TypeError(f"trace() needs a class or a function, got {type(target).__name__}")
        self.__wrapped__ = target
        functools.update_wrapper(self, target, updated=())

    def __call__(self, *args: Any, **kwargs: Any) -> T:
        args, kwargs = _name_positionals(self.__wrapped__, args, kwargs)
        obj = self.__wrapped__(*args, **kwargs)  # as Recipe.build, keeping the type
        _attach(obj, Recipe(self.__wrapped__, args, kwargs))
        return obj

    def __repr__(self) -> str:
        return f"trace({_qualname(self.__wrapped__)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Traced, (self.__wrapped__,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Traced) and other.__wrapped__ is self.__wrapped__

    def __hash__(self) -> int:
        return hash(self.__wrapped__)


@overload
def trace(target: type[T]) -> Traced[T]: ...
@overload
def trace(target: Callable[..., T]) -> Traced[T]: ...
@overload
def trace(target: Callable[..., T], *args: Any, **kwargs: Any) -> T: ...


def trace(target: Any, *args: Any, **kwargs: Any) -> Any:
    """``trace(cls)`` returns a traced callable; ``trace(cls, *args, **kw)`` builds a traced instance now."""
    traced = Traced(target)
    if args or kwargs:
        return traced(*args, **kwargs)
    return traced


def get_recipe(obj: Any) -> Recipe | None:
    """The recipe attached to ``obj`` by :func:`trace`, or None."""
    recipe = getattr(obj, _RECIPE_ATTR, None) if not isinstance(obj, type) else None
    return recipe if isinstance(recipe, Recipe) else None


def is_traced(obj: Any) -> bool:
    return get_recipe(obj) is not None


def _attach(obj: Any, recipe: Recipe) -> None:
    try:
        object.__setattr__(obj, _RECIPE_ATTR, recipe)
    except (AttributeError, TypeError):
        # Immutable results (ints, tuples, slotted objects) cannot carry a recipe; they are
        # serialized by value instead, which is what such small values want anyway.
        _log.debug("cannot attach a recipe to %s; it will be serialized by value", type(obj).__name__)


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
