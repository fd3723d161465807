"""NNI 2.x's ``nni.retiarii``: ``fixed_arch``, ``model_wrapper``, ``basic_unit``, the serializer helpers."""

from __future__ import annotations

from typing import TypeVar

from torch import nn

from retia.arch import fixed_arch
from retia.nn.registry import LabelStyle
from retia.nn.space import wrap_model_class

from .serializer import basic_unit, serialize, serialize_cls

__all__ = ["basic_unit", "fixed_arch", "model_wrapper", "serialize", "serialize_cls"]

M = TypeVar("M", bound=nn.Module)


def model_wrapper(cls: type[M]) -> type[M]:
    """NNI 2.x's ``@model_wrapper``: the class as a retia model space whose choices without a label
    are named as NNI 2.x names them (``model_1``, ``model_2``, ...; ``model_3_1`` inside a nested
    wrapped module that took number 3), so an architecture exported by NNI loads as it is."""
    wrapped: type[M] = wrap_model_class(cls, LabelStyle.NNI2)  # type: ignore[assignment]
    return wrapped
