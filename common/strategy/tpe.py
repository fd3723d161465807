"""TPE through Optuna's TPESampler (ask/tell); each label is a categorical over its option indices.

Labels are asked define-by-run, each after the labels it requires, and only where the path
reaches them (Optuna's conditional search spaces); the startup trials are drawn by the priors."""

from __future__ import annotations

import logging
import random
from typing import Any

from ..arch import Arch, SearchSpace
from ..searchspace import SpaceDescription
from .base import EarlyStop, Index, Strategy

__all__ = ["TPE"]

_log = logging.getLogger(__name__)
_DUPLICATE_RETRIES = 8


class TPE(Strategy):
    """Tree-structured Parzen Estimator; ``sampler_kwargs`` go to ``optuna.samplers.TPESampler``.

    A proposal already seen is told back to the study (its known value, or FAIL while it
    is still running) and sampled again, a few times, so the budget is not spent on repeats.
    """

    def __init__(
        self,
        *,
        seed: int | None = None,
        n_startup_trials: int = 10,
        early_stop: EarlyStop | None = None,
        **sampler_kwargs: Any,
    ) -> None:
        super().__init__(seed=seed, early_stop=early_stop)
        self.n_startup_trials = n_startup_trials
        self.sampler_kwargs = sampler_kwargs
        self._study: Any = None
        self._distributions: dict[str, Any] = {}
        self._trials: dict[int, Any] = {}
        self._values: dict[Index, float | None] = {}
        self._rng = random.Random(seed)

    @property
    def study(self) -> Any:
        """The underlying ``optuna.Study`` (None before attach)."""
        return self._study

    def attach(self, search_space: SearchSpace | SpaceDescription) -> None:
        import optuna

        super().attach(search_space)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        sampler = optuna.samplers.TPESampler(
            seed=self.seed, n_startup_trials=self.n_startup_trials, **self.sampler_kwargs
        )
        self._study = optuna.create_study(direction="maximize", sampler=sampler)
        self._distributions = {
            label: optuna.distributions.CategoricalDistribution(tuple(range(len(opts))))
            for label, opts in zip(self.codec.labels, self.codec.options)
        }

    def _index(self, params: dict[str, int]) -> Index:
        """The canonical index of a trial's params (labels it did not reach: their defaults)."""
        codec = self.codec
        index = [int(params.get(label, d)) for label, d in zip(codec.labels, codec.defaults)]
        return codec.canonical(tuple(index))

    def _ask_trial(self) -> Any:
        """A study trial with a value suggested for each label the path reaches, gates first."""
        codec = self.codec
        if any(p is not None for p in codec.priors) and len(self._study.trials) < self.n_startup_trials:
            drawn = codec.sample(self._rng)  # the startup trials follow the priors
            self._study.enqueue_trial({label: drawn[i] for i, label in enumerate(codec.labels)})
        trial = self._study.ask()
        index = list(codec.defaults)
        for position in codec.order:
            if codec.reached(tuple(index), position):
                label = codec.labels[position]
                index[position] = int(trial.suggest_categorical(label, self._distributions[label].choices))
        return trial

    def ask(self, key: int) -> Arch | None:
        from optuna.trial import TrialState

        if self.exhausted:
            return None
        for attempt in range(_DUPLICATE_RETRIES + 1):
            trial = self._ask_trial()
            index = self._index(trial.params)
            if index not in self._book.seen or attempt == _DUPLICATE_RETRIES:
                break
            known = self._values.get(index)
            if known is None:
                self._study.tell(trial, state=TrialState.FAIL)
            else:
                self._study.tell(trial, known)
        if index in self._book.seen:
            _log.debug("trial %d: TPE kept proposing seen architectures; proposing a repeat", key)
        self._trials[key] = trial
        return self._issue(index)

    def _observe(self, key: int, index: Index, value: float | None) -> None:
        import optuna
        from optuna.trial import TrialState

        if value is not None:
            self._values[index] = value
        trial = self._trials.pop(key, None)
        if trial is not None and self._index(trial.params) == index:
            if value is None:
                self._study.tell(trial, state=TrialState.FAIL)
            else:
                self._study.tell(trial, value)
            return
        if trial is not None:  # told a different arch than asked: drop the asked one
            self._study.tell(trial, state=TrialState.FAIL)
        codec = self.codec
        reached = [label for p, label in enumerate(codec.labels) if codec.reached(index, p)]
        params = {label: index[codec.labels.index(label)] for label in reached}
        state = TrialState.COMPLETE if value is not None else TrialState.FAIL
        frozen = optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={label: self._distributions[label] for label in reached},
        )
        self._study.add_trial(frozen)
