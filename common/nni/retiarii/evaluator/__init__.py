"""NNI 2.x's ``nni.retiarii.evaluator``: ``FunctionalEvaluator`` (``fit(model_cls, **kwargs)``, as
retia's own), and the Lightning evaluators of ``.pytorch`` by their short names (as NNI does)."""

from __future__ import annotations

import importlib
from typing import Any

from retia.evaluator import Evaluator, FunctionalEvaluator

__all__ = ["Evaluator", "FunctionalEvaluator"]


def __getattr__(name: str) -> Any:
    """``Classification``, ``Lightning``, ... from ``.pytorch``, imported on first use (Lightning is slow)."""
    return getattr(importlib.import_module(f"{__name__}.pytorch"), name)
