"""Random search: each label drawn by its prior (uniform without), by default never the same
architecture twice (archs differing only in labels their path does not reach are the same)."""

from __future__ import annotations

import logging
import random

from ..arch import Arch
from .base import EarlyStop, Index, SpaceCodec, Strategy

__all__ = ["Random", "sample_unseen"]

_log = logging.getLogger(__name__)
_REJECTION_TRIES = 64


def sample_unseen(codec: SpaceCodec, seen: set[Index], rng: random.Random) -> Index | None:
    """A random (by the priors) canonical architecture not in ``seen`` that the space accepts
    (:meth:`SpaceCodec.valid`); None when every one is seen."""
    if len(seen) >= codec.size:
        return None
    for _ in range(_REJECTION_TRIES):
        index = codec.sample(rng)
        if index not in seen:
            return index
    # The space is nearly all seen, hence small: pick among the unseen ones directly.
    free = list(dict.fromkeys(codec.canonical(codec.unrank(r)) for r in range(codec.product)))
    free = [index for index in free if index not in seen and codec.valid(index)]
    return rng.choice(free) if free else None


class Random(Strategy):
    """Random sampling by the priors; with ``dedup`` (NNI's default) without repetition, exhausted after
    ``space size`` archs; without, each draw independent of the others (never exhausted)."""

    def __init__(
        self, *, dedup: bool = True, seed: int | None = None, early_stop: EarlyStop | None = None
    ) -> None:
        super().__init__(seed=seed, early_stop=early_stop)
        self.dedup = dedup
        self._rng = random.Random(seed)

    def ask(self, key: int) -> Arch | None:
        if not self.dedup:
            return self._issue(self.codec.sample(self._rng))
        index = sample_unseen(self.codec, self._book.seen, self._rng)
        if index is None:
            _log.info("random search exhausted the space after %d architectures", len(self._book.seen))
            return None
        return self._issue(index)
