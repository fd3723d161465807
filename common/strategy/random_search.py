"""Random search: uniform over the space, by default never the same architecture twice."""

from __future__ import annotations

import logging
import random

from ..arch import Arch
from .base import EarlyStop, Index, SpaceCodec, Strategy

__all__ = ["Random", "sample_unseen"]

_log = logging.getLogger(__name__)
_REJECTION_TRIES = 64


def sample_unseen(codec: SpaceCodec, seen: set[Index], rng: random.Random) -> Index | None:
    """A uniformly random architecture not in ``seen``; None when every one is seen."""
    if len(seen) >= codec.size:
        return None
    for _ in range(_REJECTION_TRIES):
        index = tuple(rng.randrange(len(opts)) for opts in codec.options)
        if index not in seen:
            return index
    # The space is nearly all seen, hence small: pick among the unseen ranks directly.
    taken = {codec.rank(i) for i in seen}
    free = [r for r in range(codec.size) if r not in taken]
    return codec.unrank(rng.choice(free))


class Random(Strategy):
    """Uniform random sampling; with ``dedup`` (NNI's default) without repetition, exhausted after
    ``space size`` archs; without, each draw independent of the others (never exhausted)."""

    def __init__(
        self, *, dedup: bool = True, seed: int | None = None, early_stop: EarlyStop | None = None
    ) -> None:
        super().__init__(seed=seed, early_stop=early_stop)
        self.dedup = dedup
        self._rng = random.Random(seed)

    def ask(self, key: int) -> Arch | None:
        if not self.dedup:
            return self._issue(tuple(self._rng.randrange(len(opts)) for opts in self.codec.options))
        index = sample_unseen(self.codec, self._book.seen, self._rng)
        if index is None:
            _log.info("random search exhausted the space after %d architectures", len(self._book.seen))
            return None
        return self._issue(index)
