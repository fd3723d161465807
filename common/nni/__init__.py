"""``retia.nni``: NNI's module paths over retia's own objects, so code written for NNI runs with only
its import lines changed: ``import nni`` becomes ``import retia.nni as nni``, ``from nni.retiarii...``
(2.x) ``from retia.nni.retiarii...``, ``from nni.nas...`` (3.0) ``from retia.nni.nas...``.

The adapters are thin: each re-exports retia's object, or a subclass where NNI's semantics differ
(3.0's FunctionalEvaluator passes the model itself, 2.x exports ONNX by default, a single-metric
evaluator reports a bare number). ``docs/coming-from-nni.md`` maps every name.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from retia.reporting import report_final_result, report_intermediate_result
from retia.serializer import dump, load
from retia.trace import is_traceable, is_wrapped_with_trace
from retia.trace import trace as _trace

if TYPE_CHECKING:
    from . import mutable, nas, retiarii

__all__ = [
    "choice",
    "dump",
    "is_traceable",
    "is_wrapped_with_trace",
    "load",
    "mutable",
    "nas",
    "report_final_result",
    "report_intermediate_result",
    "retiarii",
    "trace",
]

T = TypeVar("T")


def trace(cls_or_func: Any = None, *, kw_only: bool = True, inheritable: bool = False) -> Any:
    """NNI's ``nni.trace``: retia's, which traces a traced class's subclasses always (``inheritable``
    is accepted for NNI's code and changes nothing)."""
    if cls_or_func is None:
        return _trace(kw_only=kw_only)
    return _trace(cls_or_func, kw_only=kw_only)


def choice(label: str, choices: Sequence[T]) -> T:
    """NNI 3.0's ``nni.choice(label, choices)``: a :class:`retia.nn.ValueChoice` (label first)."""
    from retia.nn import ValueChoice

    return ValueChoice(choices, label=label)


def __getattr__(name: str) -> Any:
    """``nni.retiarii``, ``nni.nas``, ``nni.mutable`` as attributes after ``import retia.nni as nni``
    (as in NNI)."""
    if name in ("retiarii", "nas", "mutable"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'retia.nni' has no attribute {name!r}")
