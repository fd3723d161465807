"""Regularized (aging) evolution, Real et al. 2019: tournament, one-label mutation, FIFO population."""

from __future__ import annotations

import collections
import logging
import random

from ..arch import Arch
from ..errors import ConfigError
from .base import EarlyStop, Index, Strategy
from .random_search import sample_unseen

__all__ = ["RegularizedEvolution"]

_log = logging.getLogger(__name__)
_MUTATION_RETRIES = 8


class RegularizedEvolution(Strategy):
    """Aging evolution over architecture dicts.

    The first ``population_size`` archs are random (by the priors); then each child mutates the
    best of ``sample_size`` population members, among the labels its path reaches.
    ``mutation_prob=None`` changes exactly one label; a float resamples each label with that
    probability (at least one label changes).
    """

    def __init__(
        self,
        *,
        population_size: int = 20,
        sample_size: int = 5,
        mutation_prob: float | None = None,
        seed: int | None = None,
        early_stop: EarlyStop | None = None,
    ) -> None:
        super().__init__(seed=seed, early_stop=early_stop)
        if population_size < 1 or not 1 <= sample_size <= population_size:
            raise ConfigError(
                f"need 1 <= sample_size <= population_size, got {sample_size} and {population_size}"
            )
        if mutation_prob is not None and not 0.0 <= mutation_prob <= 1.0:
            raise ConfigError(f"mutation_prob must be in [0, 1], got {mutation_prob}")
        self.population_size = population_size
        self.sample_size = sample_size
        self.mutation_prob = mutation_prob
        self._rng = random.Random(seed)
        self._population: collections.deque[tuple[Index, float]] = collections.deque(maxlen=population_size)

    @property
    def population(self) -> list[tuple[Arch, float]]:
        """The current population, oldest first, as (arch, value)."""
        return [(self.codec.decode(i), v) for i, v in self._population]

    def _observe(self, key: int, index: Index, value: float | None) -> None:
        if value is not None:
            self._population.append((index, value))  # the deque drops the oldest: aging

    def ask(self, key: int) -> Arch | None:
        if self.exhausted:
            return None
        if len(self._population) < self.population_size:
            index = sample_unseen(self.codec, self._book.seen, self._rng)
            return None if index is None else self._issue(index)
        child = self._evolve()
        for _ in range(_MUTATION_RETRIES):
            if child not in self._book.seen and self.codec.valid(child):
                break
            child = self._evolve()
        else:
            if not self.codec.valid(child):  # the space's own check refused every mutation tried
                _log.debug("trial %d: no mutation tried was valid; proposing a valid random one", key)
                return self._issue(self.codec.sample(self._rng))
            _log.debug("trial %d: every mutation tried was seen before; proposing a repeat", key)
        return self._issue(child)

    def _evolve(self) -> Index:
        """Tournament of ``sample_size``, then mutate the winner."""
        contestants = self._rng.sample(list(self._population), self.sample_size)
        parent = max(contestants, key=lambda iv: iv[1])[0]
        return self._mutate(parent)

    def _mutate(self, parent: Index) -> Index:
        """Change labels the parent reaches (each new option drawn by the prior); labels the change
        newly reaches are drawn afresh, those it leaves are reset (the index stays canonical)."""
        codec = self.codec
        mutable = [i for i, opts in enumerate(codec.options) if len(opts) > 1 and codec.reached(parent, i)]
        if not mutable:
            return parent
        child = list(parent)
        if self.mutation_prob is None:
            chosen = [self._rng.choice(mutable)]
        else:
            chosen = [i for i in mutable if self._rng.random() < self.mutation_prob]
            chosen = chosen or [self._rng.choice(mutable)]
        for i in chosen:
            child[i] = codec.sample_option(i, self._rng, exclude=parent[i])
        for i in range(len(child)):  # (gates come before what they gate in codec.order)
            p = codec.order[i]
            if not codec.reached(parent, p) and codec.reached(tuple(child), p):
                child[p] = codec.sample_option(p, self._rng)
        return codec.canonical(tuple(child))
