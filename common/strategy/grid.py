"""Grid search: every distinct architecture once, in a stable order (last label fastest), then None.

Architectures that differ only in labels their path does not reach are one: the first met is proposed.
Priors are ignored."""

from __future__ import annotations

import random

from ..arch import Arch, SearchSpace
from ..errors import ConfigError
from .base import EarlyStop, Strategy

__all__ = ["GridSearch"]

_MAX_SHUFFLED = 10_000_000


class GridSearch(Strategy):
    """Enumerate the cartesian product in label/option order, or in a seeded shuffled order."""

    def __init__(
        self, *, shuffle: bool = False, seed: int | None = None, early_stop: EarlyStop | None = None
    ) -> None:
        super().__init__(seed=seed, early_stop=early_stop)
        self.shuffle = shuffle
        self._order: list[int] | None = None
        self._cursor = 0

    def attach(self, search_space: SearchSpace) -> None:
        super().attach(search_space)
        self._cursor = 0
        if self.shuffle:
            if self.codec.product > _MAX_SHUFFLED:
                raise ConfigError(
                    f"GridSearch(shuffle=True) supports at most {_MAX_SHUFFLED} architectures, "
                    f"this space has {self.codec.product}"
                )
            self._order = list(range(self.codec.product))
            random.Random(self.seed).shuffle(self._order)

    def ask(self, key: int) -> Arch | None:
        codec = self.codec
        while self._cursor < codec.product and not super().exhausted:
            rank = self._order[self._cursor] if self._order is not None else self._cursor
            self._cursor += 1
            index = codec.canonical(codec.unrank(rank))
            # skip archs replayed from an earlier run, the same again, and those the space refuses
            if index not in self._book.seen and codec.valid(index):
                return self._issue(index)
        return None

    @property
    def exhausted(self) -> bool:
        return super().exhausted or (self._codec is not None and self._cursor >= self._codec.product)
