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

from .arch import ArchLike, ChoiceSpec, canonical, load_arch, match_option, validate_arch
from .errors import ConfigError, InvalidArchitectureError, PayloadTooLarge, SerializationError
from .reporting import CollectingReporter, Metric, Reporter, use_reporter
from .seeding import check_seed, seeded
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
        seed: int | None = None,
    ) -> EvaluationResult:
        """Train and score one concrete model in this process.

        ``model`` is a model class, a zero-argument callable returning a model, or an instance.
        ``output_dir`` defaults to a fresh directory under ``./retia-runs/`` (or ``$RETIA_RUNS_DIR``).
        ``seed`` seeds the model's initialization and random operations (see :mod:`retia.seeding`:
        the same seed gives the same result here, on a worker, packed); None seeds nothing.
        """
        if seed is not None:
            check_seed(seed)
        choices = self.search_space()
        if choices:
            raise ConfigError(
                f"{type(self).__name__} still holds choice(s) {choices!r} among its arguments: "
                "search them in an Experiment, or evaluate evaluator.freeze({label: value, ...})"
            )
        factory = model_factory(model)
        out = Path(os.path.abspath(output_dir if output_dir is not None else _fresh_run_dir()))
        if not out.is_dir():  # a worker's trial process created it already
            out.mkdir(parents=True, exist_ok=True)
        collector: CollectingReporter | None = None
        if reporter is None:
            reporter = collector = CollectingReporter()
        start = time.perf_counter()
        with _output_dir_env(out), use_reporter(reporter), seeded(seed):
            self._run(factory)
        duration = time.perf_counter() - start
        if collector is None:
            return EvaluationResult(None, [], duration, out)
        return EvaluationResult(collector.final_value, list(collector.intermediates), duration, out)

    def _run(self, model_factory: Callable[[], Any]) -> None:
        raise NotImplementedError

    def unpackable(self) -> str:
        """Why this evaluator's trials cannot share one process ("" when they can; see
        :mod:`retia.packing`)."""
        return (
            f"a {type(self).__name__} runs the user's own training loop, which cannot be shared "
            "(only retia.lightning evaluators pack)"
        )

    def search_space(self) -> dict[str, list[Any]]:
        """``{label: [options]}`` of the ValueChoices among this evaluator's arguments (NNI 3.0's
        mutable evaluators): a keyword, a Lightning evaluator's argument, or inside a traced one (a
        DataLoader's ``batch_size``). Searched beside the model's choices; empty for most evaluators."""
        return _space(self._choices())

    def freeze(self, arch: ArchLike) -> Evaluator:
        """This evaluator with each of its choices fixed at ``arch``'s value (labels of ``arch`` that
        are not its own, a model's, are ignored); itself when it holds no choice."""
        choices = self._choices()
        if not choices:
            return self
        loaded, space = load_arch(arch), _space(choices)
        missing = [label for label in choices if label not in loaded]
        if missing:
            raise InvalidArchitectureError(
                f"{type(self).__name__} needs a value for its choice(s) {missing!r}; it has {space!r}"
            )
        validate_arch(space, {label: loaded[label] for label in choices})
        recipe = get_recipe(self)
        assert recipe is not None  # a choice was found in it
        sample = {label: match_option(spec.options, loaded[label]) for label, spec in choices.items()}
        frozen: Evaluator = Recipe(
            recipe.target, _fixed(recipe.args, sample), _fixed(recipe.kwargs, sample)
        ).build()
        return frozen

    def _choices(self) -> dict[str, ChoiceSpec]:
        recipe = get_recipe(self)
        if recipe is None or _EXPRESSIONS not in sys.modules:  # no choice was ever made
            return {}
        found: dict[str, ChoiceSpec] = {}
        for path, choice in _choices_in([*recipe.args, *recipe.kwargs.values()]):
            seen = found.setdefault(choice.label, choice.spec)
            if seen.options != choice.spec.options:
                raise ConfigError(
                    f"{type(self).__name__} has two choices labelled {choice.label!r} with different "
                    f"options ({list(seen.options)} and {list(choice.spec.options)}, at {path}): "
                    "give each decision its own label"
                )
        return found

    def _record(self, *args: Any, **kwargs: Any) -> None:
        """Attach this evaluator's recipe and check it serializes now, not on a worker later."""
        args, kwargs = _name_positionals(type(self), args, kwargs)
        _attach(self, Recipe(type(self), args, kwargs))
        if not rebuilding():  # checked on the client already; a worker must not pay for it per trial
            self._choices()
            dump(self, blobs={})  # large values will travel as blobs, so only check that they can


def _space(choices: dict[str, ChoiceSpec]) -> dict[str, list[Any]]:
    return {label: [canonical(o) for o in spec.options] for label, spec in choices.items()}


_DEPTH = 3  # how deep choices are looked for: a DataLoader of a Dataset of a transform


_EXPRESSIONS = "retia.nn.expressions"  # ValueChoice and the expressions of choices (imports torch)


def _choices_in(values: list[Any], path: str = "", depth: int = _DEPTH) -> Iterator[tuple[str, Any]]:
    """(where, choice) of every ValueChoice in ``values``: themselves, the leaves of an expression of
    choices (``lr=ValueChoice(...) * 2``), or inside a list, a tuple, a dict or a traced object's
    arguments, ``depth`` levels down."""
    expression = sys.modules[_EXPRESSIONS].ChoiceExpression
    for i, value in enumerate(values):
        where = f"{path}[{i}]"
        if isinstance(value, expression):
            yield from ((where, leaf) for leaf in value.inner_choices())
        elif depth > 0:
            yield from _choices_in(_inner(value), where, depth - 1)


def _inner(value: Any) -> list[Any]:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, dict):
        return list(value.values())
    recipe = get_recipe(value)
    return [*recipe.args, *recipe.kwargs.values()] if recipe is not None else []


def _fixed(value: Any, sample: dict[str, Any], depth: int = _DEPTH + 1) -> Any:
    """``value`` with each choice replaced by its option in ``sample``; what holds none is kept as is
    (the same object), a traced object that holds one is built again from its fixed recipe."""
    if depth < 0 or not any(True for _ in _choices_in([value], depth=depth)):
        return value
    if isinstance(value, sys.modules[_EXPRESSIONS].ChoiceExpression):
        return value.evaluate(sample)  # a ValueChoice's option, or what an expression makes of them
    if isinstance(value, tuple):
        return tuple(_fixed(v, sample, depth - 1) for v in value)
    if isinstance(value, list):
        return [_fixed(v, sample, depth - 1) for v in value]
    if isinstance(value, dict):
        return {k: _fixed(v, sample, depth - 1) for k, v in value.items()}
    recipe = get_recipe(value)
    assert recipe is not None  # _choices_in found a choice in it
    return Recipe(
        recipe.target, _fixed(recipe.args, sample, depth), _fixed(recipe.kwargs, sample, depth)
    ).build()


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
