"""One-shot strategies: one trial trains the supernet and ends with the architecture it prefers.

A :class:`OneShotStrategy` is what the user picks (``Experiment(space, evaluator, DARTS())``); to
the experiment loop it is a strategy that asks for one trial. That trial runs on a worker like
any other: the :class:`~retia.oneshot.evaluator.OneShotEvaluator` builds the supernet, and the
strategy's :class:`Algorithm` (its trained state: architecture weights, a controller) drives the
training of the user's module around it. Each validation reports the user's metrics of the
architecture preferred so far, and that architecture as ``arch/<label>`` option indices, so it
reaches the strategy loop, the live view and ``export_top_models`` through the ordinary reports.
"""

from __future__ import annotations

import abc
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..arch import Arch, ChoiceSpec, SearchSpace, option_index, valid_draw
from ..errors import ConfigError
from ..nn.space import ModelSpace
from ..reporting import Metric
from ..searchspace import SpaceDescription
from ..strategy.base import Strategy

if TYPE_CHECKING:
    from .module import OneShotModule

__all__ = [
    "ARCH_PREFIX",
    "Algorithm",
    "OneShotStrategy",
    "arch_from_metric",
    "arch_metrics",
    "check_count",
    "check_positive",
]

ARCH_PREFIX = "arch/"  # reported metric names: arch/<label> = the option's index


def arch_metrics(arch: Mapping[str, Any], specs: Mapping[str, ChoiceSpec]) -> dict[str, float]:
    """``{'arch/<label>': index of the option}`` for every label of ``arch``."""
    out: dict[str, float] = {}
    for label, value in arch.items():
        index = option_index(specs[label].options, value)
        assert index is not None, f"{value!r} is not an option of {label!r}"
        out[f"{ARCH_PREFIX}{label}"] = float(index)
    return out


def arch_from_metric(metric: Metric | None, search_space: Mapping[str, list[Any]]) -> Arch | None:
    """The architecture a one-shot trial reported (None if its metric holds none)."""
    if not isinstance(metric, dict):
        return None
    arch: Arch = {}
    for name, value in metric.items():
        if name.startswith(ARCH_PREFIX):
            label = name[len(ARCH_PREFIX) :]
            options = search_space.get(label)
            index = int(value)
            if options is None or not 0 <= index < len(options) or index != value:
                raise ConfigError(f"the one-shot trial reported {name}={value}, not an option of the space")
            arch[label] = options[index]
    return arch or None


def check_positive(name: str, value: Any) -> float:
    """``value`` as a float (a learning rate, a temperature); ConfigError unless it is > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{name} must be a number > 0, got {value!r}")
    return float(value)


def check_count(name: str, value: Any, least: int) -> int:
    """``value`` (epochs, steps, a size); ConfigError unless it is an int >= ``least``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")
    return value


class Algorithm(nn.Module, abc.ABC):
    """A one-shot strategy's state in the trial (a module: its parameters are checkpointed and
    move to the device with the supernet), and how it trains and validates the supernet."""

    #: Whether each training batch is ``{'train': batch, 'val': batch}`` (DARTS-style strategies
    #: step the architecture on validation data) rather than a training batch.
    needs_validation_batches: ClassVar[bool] = False

    supernet: ModelSpace  # not a child module: the user's module holds it

    def __init__(self, supernet: ModelSpace, seed: int | None) -> None:
        super().__init__()
        self.__dict__["supernet"] = supernet
        self.specs: dict[str, ChoiceSpec] = supernet.simplify()
        self._check = supernet.arch_check()
        self.rng = random.Random(seed)

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The strategy's own optimizers, stepped by it (after the user's in ``optimizers()``)."""
        return []

    @abc.abstractmethod
    def training_step(self, module: OneShotModule, batch: Any, batch_idx: int) -> None:
        """One step: train the weights (through ``module.weight_step``) and the strategy's own state."""

    @abc.abstractmethod
    def export(self) -> Arch:
        """The architecture preferred now."""

    def on_train_epoch_start(self, module: OneShotModule) -> None:
        """Called before each training epoch (a temperature to anneal, say)."""

    def fix_for_validation(self, module: OneShotModule) -> None:
        """Make the supernet run :meth:`export`'s architecture alone, for the validation loop."""
        self.supernet.activate(self.export())

    def after_validation(self, module: OneShotModule) -> None:
        """Called after each validation epoch."""

    def arch_metrics(self) -> dict[str, float]:
        return arch_metrics(self.export(), self.specs)

    def sample(self) -> Arch:
        """A valid architecture drawn by each label's prior (uniform without); drawn again while the
        space's own check refuses it (a NasBench101Cell's graph, say)."""

        def draw() -> Arch:
            arch: Arch = {}
            for label, spec in self.specs.items():
                weights = list(spec.prior) if spec.prior is not None else None
                arch[label] = self.rng.choices(list(spec.options), weights=weights)[0]
            return arch

        return valid_draw(draw, self._check)


class OneShotStrategy(Strategy):
    """A strategy that trains one supernet as one trial (see the module docstring)."""

    trains_supernet = True

    def __init__(self, *, seed: int | None = None) -> None:
        super().__init__(seed=seed)
        self._asked = False

    def attach(self, search_space: SearchSpace | SpaceDescription) -> None:
        super().attach(search_space)
        self._asked = False

    def ask(self, key: int) -> Arch | None:
        """The supernet's trial once (its architecture comes back with its result), then nothing: only
        trial 0 is one (a resumed experiment re-attaches to it, and asks from key 1 on)."""
        if key != 0 or self._asked or self._book.finals:
            return None
        self._asked = True
        return {}

    def tell(self, key: int, arch: Arch, value: float | None) -> None:
        self._book.finals[key] = None if value is None else float(value)

    @property
    def exhausted(self) -> bool:
        return self._asked or bool(self._book.finals)

    @abc.abstractmethod
    def algorithm(self, supernet: ModelSpace) -> Algorithm:
        """This strategy's state for a run on ``supernet``; refuses (ConfigError) a space it cannot search."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
