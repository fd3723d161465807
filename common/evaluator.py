"""Evaluators: how one concrete model is trained and scored.

``Evaluator.evaluate(model)`` runs in this process, with a fresh output directory exported
as ``RETIA_OUTPUT_DIR`` / ``NNI_OUTPUT_DIR`` and a reporter collecting ``report_*`` calls.
The worker's trial runner calls the very same method, with a reporter that forwards.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import time
import types
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .errors import ConfigError, PayloadTooLarge, SerializationError
from .reporting import CollectingReporter, Metric, Reporter, use_reporter
from .serializer import dump, rebuilding
from .trace import Recipe, Traced, _attach, _name_positionals, get_recipe

__all__ = ["Evaluator", "FunctionalEvaluator", "EvaluationResult", "OUTPUT_DIR_VARS", "model_factory"]

OUTPUT_DIR_VARS = ("RETIA_OUTPUT_DIR", "NNI_OUTPUT_DIR")


@dataclass(frozen=True)
class EvaluationResult:
    """What one evaluation reported, how long it took, and where its files are."""

    final: Metric | None
    intermediates: list[Metric]
    duration: float
    output_dir: Path


class Evaluator:
    """Base class: subclasses implement ``_run(model_factory)`` and record their own recipe."""

    #: Whether a larger 'default' metric is better ("maximize") or worse ("minimize"); strategies
    #: follow it unless the experiment says otherwise.
    direction: ClassVar[str] = "maximize"

    def evaluate(
        self,
        model: Any,
        *,
        output_dir: str | os.PathLike[str] | None = None,
        reporter: Reporter | None = None,
    ) -> EvaluationResult:
        """Train and score one concrete model in this process.

        ``model`` is a model class, a zero-argument callable returning a model, or an instance.
        ``output_dir`` defaults to a fresh directory under ``./retia-runs/`` (or ``$RETIA_RUNS_DIR``).
        """
        factory = model_factory(model)
        out = Path(os.path.abspath(output_dir if output_dir is not None else _fresh_run_dir()))
        if not out.is_dir():  # a worker's trial process created it already
            out.mkdir(parents=True, exist_ok=True)
        collector: CollectingReporter | None = None
        if reporter is None:
            reporter = collector = CollectingReporter()
        start = time.perf_counter()
        with _output_dir_env(out), use_reporter(reporter):
            self._run(factory)
        duration = time.perf_counter() - start
        if collector is None:
            return EvaluationResult(None, [], duration, out)
        return EvaluationResult(collector.final_value, list(collector.intermediates), duration, out)

    def _run(self, model_factory: Callable[[], Any]) -> None:
        raise NotImplementedError

    def _record(self, *args: Any, **kwargs: Any) -> None:
        """Attach this evaluator's recipe and check it serializes now, not on a worker later."""
        args, kwargs = _name_positionals(type(self), args, kwargs)
        if not rebuilding():  # checked on the client already; a worker must not pay for it per trial
            _refuse_choices(
                type(self).__name__, [(f"[{i}]", v) for i, v in enumerate(args)] + list(kwargs.items())
            )
        _attach(self, Recipe(type(self), args, kwargs))
        if not rebuilding():
            dump(self, blobs={})  # large values will travel as blobs, so only check that they can


def _refuse_choices(owner: str, arguments: list[tuple[str, Any]], depth: int = 3) -> None:
    """A ValueChoice among an evaluator's arguments (or inside a traced one, a DataLoader's
    ``batch_size`` say) would be fixed at its supernet value, its largest option, without a word:
    refused, naming it, until such arguments are searched."""
    choices = sys.modules.get("retia.nn.choices")
    if choices is None or depth < 0:  # none was ever made
        return
    for name, value in arguments:
        if isinstance(value, choices.ValueChoice):
            plain = next((t(value) for t in (int, float, str) if isinstance(value, t)), value)
            raise ConfigError(
                f"{owner} argument {name.lstrip('.')} is ValueChoice {value.label!r} "
                f"({value.options}): a choice in an evaluator's arguments is not searched yet, and "
                f"would train every trial at {plain!r}. Pass one value (one experiment per value to "
                "compare them), or make it part of the model space"
            )
        inner: list[tuple[str, Any]] = []
        if isinstance(value, (list, tuple)):
            inner = [(f"{name}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, dict):
            inner = [(f"{name}[{k!r}]", v) for k, v in value.items()]
        elif (recipe := get_recipe(value)) is not None:
            inner = [(f"{name}[{i}]", v) for i, v in enumerate(recipe.args)]
            inner += [(f"{name}.{k}", v) for k, v in recipe.kwargs.items()]
        if inner:
            _refuse_choices(owner, inner, depth - 1)


class FunctionalEvaluator(Evaluator):
    """Evaluate with a plain function: ``fit(model_cls, **kwargs)`` (kwargs are serialized)."""

    def __init__(self, fit: Callable[..., Any], **kwargs: Any) -> None:
        if not callable(fit):
            raise TypeError(f"FunctionalEvaluator needs a callable fit function, got {type(fit).__name__}")
        self.function = fit
        self.arguments = kwargs
        try:
            self._record(fit, **kwargs)
        except PayloadTooLarge as exc:
            raise PayloadTooLarge(
                f"FunctionalEvaluator argument is too large: {exc}", exc.path, exc.size
            ) from exc
        except SerializationError as exc:
            raise SerializationError(
                f"FunctionalEvaluator argument is not serializable: {exc}", exc.path
            ) from exc

    def _run(self, model_factory: Callable[[], Any]) -> None:
        self.function(model_factory, **self.arguments)

    def __repr__(self) -> str:
        name = getattr(self.function, "__qualname__", repr(self.function))
        return f"FunctionalEvaluator({name}, {', '.join(self.arguments)})"


class _ReturnModel:
    """A picklable zero-argument callable that returns an already-built model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __call__(self) -> Any:
        return self.model


def model_factory(model: Any) -> Callable[[], Any]:
    """Normalize a model class, factory or instance to a zero-argument callable."""
    if isinstance(model, (type, Traced, types.FunctionType, types.MethodType, functools.partial)):
        return model
    if callable(model) and not hasattr(model, "parameters"):
        factory: Callable[[], Any] = model
        return factory
    return _ReturnModel(model)


def _fresh_run_dir() -> Path:
    base = Path(os.environ.get("RETIA_RUNS_DIR", "retia-runs"))
    return base / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def _output_dir_env(path: Path) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in OUTPUT_DIR_VARS}
    os.environ.update({name: str(path) for name in OUTPUT_DIR_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
