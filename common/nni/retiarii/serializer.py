"""NNI 2.x's ``nni.retiarii.serializer``: ``basic_unit``, ``serialize``, ``serialize_cls``,
``model_wrapper``, ``is_basic_unit``, ``is_model_wrapped``.

NNI's graph engine parses a model into a graph and stops at a ``@basic_unit`` module (a
primitive node, tuned through its constructor arguments). retia has no graph engine: every
model runs as Python, so a basic unit works exactly as the class does. ``basic_unit`` traces it
(its instances record their arguments and ship by recipe, as NNI's do) and marks it as one.
"""

from __future__ import annotations

import inspect
import warnings
from typing import Any, TypeVar, cast

from torch import nn

from retia.nn.space import ModelSpace
from retia.trace import is_wrapped_with_trace, trace

__all__ = [
    "basic_unit",
    "is_basic_unit",
    "is_model_wrapped",
    "model_wrapper",  # noqa: F822 (module __getattr__: imported on use)
    "serialize",
    "serialize_cls",
]

T = TypeVar("T")
M = TypeVar("M", bound=type[nn.Module])
BASIC_UNIT_ATTR = "_nni_basic_unit"  # NNI's flag on a basic-unit class


def basic_unit(cls: M, basic_unit_tag: bool = True) -> M:
    """NNI 2.x's ``@basic_unit``: ``cls`` traced and marked as a primitive (``is_basic_unit``), and
    otherwise the class as it is; ``basic_unit_tag=False`` traces it without the mark."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"@basic_unit decorates an nn.Module class, got {cls!r}")
    if is_basic_unit(cls) and is_wrapped_with_trace(cls):
        return cls
    if issubclass(cls, ModelSpace):
        raise TypeError(
            f"{cls.__qualname__} is a model space (model_wrapper / ModelSpace), which cannot be a "
            "basic unit: a basic unit is one module of a space, tuned by its arguments"
        )
    if is_wrapped_with_trace(cls):
        raise TypeError(
            f"{cls.__qualname__} is already wrapped with nni.trace; cannot rewrap it with basic_unit "
            "(decorate the original class with @basic_unit only)"
        )
    traced = cast(M, trace(cls))
    setattr(traced, BASIC_UNIT_ATTR, basic_unit_tag)
    return traced


def is_basic_unit(cls_or_instance: Any) -> bool:
    """Whether a class (or an instance's class) is marked by ``@basic_unit``."""
    cls = cls_or_instance if inspect.isclass(cls_or_instance) else type(cls_or_instance)
    return bool(getattr(cls, BASIC_UNIT_ATTR, False))


def is_model_wrapped(cls_or_instance: Any) -> bool:
    """Whether a class (or an instance's class) is a model space (``@model_wrapper``, ModelSpace)."""
    cls = cls_or_instance if inspect.isclass(cls_or_instance) else type(cls_or_instance)
    return issubclass(cls, ModelSpace)


def serialize(cls: type[T], *args: Any, **kwargs: Any) -> T:
    """NNI 2.x's deprecated ``serialize(cls, *args, **kwargs)``: ``nni.trace(cls)(*args, **kwargs)``."""
    warnings.warn(
        "serialize() is deprecated, as in NNI: use retia.nni.trace(cls)(...)",
        DeprecationWarning,
        stacklevel=2,
    )
    built: T = trace(cls)(*args, **kwargs)
    return built


def serialize_cls(cls: type[T]) -> type[T]:
    """NNI 2.x's deprecated ``serialize_cls(cls)``: ``nni.trace(cls)``."""
    warnings.warn(
        "serialize_cls() is deprecated, as in NNI: use retia.nni.trace(cls)", DeprecationWarning, stacklevel=2
    )
    traced: type[T] = trace(cls)
    return traced


def __getattr__(name: str) -> Any:
    """``model_wrapper``: ``retia.nni.retiarii``'s (imported on use: that package imports this module)."""
    if name == "model_wrapper":
        from retia.nni.retiarii import model_wrapper

        return model_wrapper
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
