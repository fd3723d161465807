"""The evaluation a one-shot trial runs on a worker: the user's Lightning evaluator, around a supernet.

``OneShotEvaluator(evaluator, strategy)`` ships as any evaluator does, with :class:`Supernet` (the
space's recipe) as the model. In the trial it builds the supernet, attaches it to a copy of the
user's module, wraps that in a :class:`~retia.oneshot.module.OneShotModule` driven by the
strategy's algorithm, and fits it with the evaluator's own data and trainer.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import torch
from torch import nn

from .. import _lightning_support as support
from .. import checkpoint
from ..errors import ConfigError
from ..evaluator import Evaluator
from ..lightning import Lightning
from ..trace import get_recipe, trace
from .base import OneShotStrategy
from .inherit import SUPERNET_FILE
from .module import OneShotModule
from .supernet import decisions

__all__ = ["ARCHITECTURE_FILE", "OneShotEvaluator", "Supernet", "supernet_of"]

_log = logging.getLogger(__name__)

ARCHITECTURE_FILE = "architecture.json"  # in the trial's output directory, rewritten each validation
EPOCH_CHECKPOINT = "last-epoch.ckpt"  # Lightning's checkpoint of each training epoch, before it is kept


class _Supernet:
    """A model space's class and arguments; calling it builds the supernet (never under fixed_arch)."""

    def __init__(
        self,
        space: Callable[..., nn.Module],
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.space = space
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})

    def __call__(self) -> nn.Module:
        return self.space(*self.args, **self.kwargs)


Supernet = trace(_Supernet)


def supernet_of(space: Any) -> Any:
    """The model a one-shot trial ships for ``space`` (a ModelSpace instance): its recipe, rebuilt
    on the worker as the supernet."""
    recipe = get_recipe(space)
    if recipe is None:
        raise ConfigError(
            "one-shot strategies need a retia.nn.ModelSpace instance as the model space, got "
            f"{type(space).__name__}"
        )
    return Supernet(recipe.target, recipe.args, recipe.kwargs)


class OneShotEvaluator(Evaluator):
    """Train the supernet with ``strategy`` and the user's ``evaluator`` (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, strategy: OneShotStrategy) -> None:
        check(evaluator, strategy)
        self.evaluator = cast(Lightning, evaluator)
        self.strategy = strategy
        self._record(evaluator, strategy)

    def _run(self, model_factory: Callable[[], Any]) -> None:
        supernet = model_factory()
        decisions(supernet)  # a retia ModelSpace built as a supernet, or a ConfigError saying so
        user = copy.deepcopy(self.evaluator.module)
        user.set_model(supernet)
        algorithm = self.strategy.algorithm(supernet)
        module = _ReportingModule(user, algorithm)
        train = None
        if algorithm.needs_validation_batches:
            train = _Pairs(self.evaluator.train_dataloaders, self.evaluator.val_dataloaders)
        resume = checkpoint.restore()  # a previous attempt's (its worker died): the epochs it did stay done
        if resume is not None:
            _log.info("resuming the supernet's training from %s", resume)
        ckpt_path = None if resume is None else str(resume)
        self.evaluator._fit_module(module, train_dataloaders=train, report=True, ckpt_path=ckpt_path)

    def __repr__(self) -> str:
        return f"OneShotEvaluator({self.evaluator!r}, {self.strategy!r})"


class _Pairs:
    """Each training batch with a validation batch, ``{'train': ..., 'val': ...}`` (the validation
    data cycled), for the strategies that step the architecture on validation data."""

    def __init__(self, train: Any, val: Any) -> None:
        self.train: Iterable[Any] = train
        self.val: Iterable[Any] = val

    def __len__(self) -> int:
        return len(self.train)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        val = iter(self.val)
        for batch in self.train:
            try:
                other = next(val)
            except StopIteration:
                val = iter(self.val)
                other = next(val)
            yield {"train": batch, "val": other}


class _ReportingModule(OneShotModule):
    """Also writes the preferred architecture to the trial's directory at each validation, a
    checkpoint at the end of each training epoch (the dispatcher keeps it: a retry resumes from it),
    and the trained supernet's weights at the end (the files come home with the trial's)."""

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.trainer.is_global_zero:
            path = support.output_dir(self.trainer) / EPOCH_CHECKPOINT
            self.trainer.save_checkpoint(path, weights_only=False)  # with the optimizers: a resume goes on
            checkpoint.save(path)
            path.unlink()  # kept once, as the trial's checkpoint

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            path = support.output_dir(self.trainer) / ARCHITECTURE_FILE
            path.write_text(json.dumps(self.algorithm.export(), indent=1) + "\n")

    def on_fit_end(self) -> None:
        super().on_fit_end()
        if self.trainer.is_global_zero:
            torch.save(self.supernet.state_dict(), support.output_dir(self.trainer) / SUPERNET_FILE)


def check(evaluator: Any, strategy: Any) -> None:
    """What a one-shot run needs, checked before anything is sent (each refusal says what to change)."""
    if not isinstance(strategy, OneShotStrategy):
        raise ConfigError(f"expected a one-shot strategy (DARTS(), RandomOneShot(), ...), got {strategy!r}")
    if not isinstance(evaluator, Lightning):
        raise ConfigError(
            f"one-shot strategies train the supernet inside a Lightning evaluator (Classification, "
            f"Regression, or Lightning with your module); got {type(evaluator).__name__}. A "
            "FunctionalEvaluator's fit cannot be driven step by step"
        )
    if evaluator.search_space():
        raise ConfigError(
            f"the evaluator holds choice(s) {evaluator.search_space()!r}; one-shot strategies search "
            "the model only: fix them with evaluator.freeze({label: value})"
        )
    name = type(strategy).__name__
    if evaluator.val_dataloaders is None:
        raise ConfigError(
            f"{name} validates the architecture it prefers each epoch: pass val_dataloaders= to the "
            "evaluator (a datamodule is not supported by one-shot strategies yet)"
        )
    if evaluator.train_dataloaders is None:
        raise ConfigError(f"{name} trains the supernet: pass train_dataloaders= to the evaluator")
    for given in ("train_dataloaders", "val_dataloaders"):
        if not isinstance(getattr(evaluator, given), torch.utils.data.DataLoader):
            raise ConfigError(f"{name} takes one DataLoader as {given}, not a list of them")
    recipe = get_recipe(evaluator.trainer) if evaluator.trainer is not None else None
    options = {**evaluator.trainer_kwargs, **(recipe.kwargs if recipe is not None else {})}
    for option, harmless in (("accumulate_grad_batches", 1), ("gradient_clip_val", None)):
        if options.get(option, harmless) not in (harmless, 0):
            raise ConfigError(
                f"{name} drives the optimizers itself (Lightning's manual optimization), where the "
                f"trainer's {option}={options[option]!r} does not apply: leave it out"
            )
