"""NNI 3.0's ``nni.nas.evaluator``: its ``FunctionalEvaluator`` passes the model itself to
``fit(model, **kwargs)`` (2.x and retia pass a class, to be called); the Lightning evaluators of
``.pytorch`` by their short names (as NNI does)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from retia import evaluator as _evaluator
from retia.evaluator import Evaluator

MutableEvaluator = Evaluator  # every retia evaluator may hold choices: Evaluator.search_space()

__all__ = ["Evaluator", "FunctionalEvaluator", "MutableEvaluator"]


class FunctionalEvaluator(_evaluator.FunctionalEvaluator):
    """``fit(model, **kwargs)``: the model is built (on the worker, after the evaluator's seeding)
    and passed as an instance, as NNI 3.0 does."""

    def _run(self, model_factory: Callable[[], Any]) -> None:
        self.function(model_factory(), **self.arguments)


def __getattr__(name: str) -> Any:
    """``Classification``, ``Lightning``, ... from ``.pytorch``, imported on first use (Lightning is slow)."""
    return getattr(importlib.import_module(f"{__name__}.pytorch"), name)
