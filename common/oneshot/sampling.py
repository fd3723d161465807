"""RandomOneShot (SPOS's first stage): every step trains one uniformly sampled path of the supernet."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..arch import Arch
from ..nn.space import ModelSpace
from .base import Algorithm, OneShotStrategy

if TYPE_CHECKING:
    from .module import OneShotModule

__all__ = ["RandomOneShot"]


class _RandomPaths(Algorithm):
    def __init__(self, supernet: ModelSpace, seed: int | None) -> None:
        super().__init__(supernet, seed)
        self._validated: Arch = self.sample()

    def training_step(self, module: OneShotModule, batch: Any, batch_idx: int) -> None:
        self.supernet.activate(self.sample())
        loss = module.user_loss(batch, batch_idx)
        if loss is not None:
            module.weight_step(loss)

    def fix_for_validation(self, module: OneShotModule) -> None:
        self._validated = self.sample()
        self.supernet.activate(self._validated)

    def export(self) -> Arch:
        return dict(self._validated)


class RandomOneShot(OneShotStrategy):
    """Single-path one-shot (SPOS, Guo et al. 2020): each step activates an architecture drawn by
    each label's prior (uniform without) and trains its weights, so every path shares them.

    Every layer-argument choice (a width, a kernel) is sampled too, as a slice of the largest
    weight. Each validation scores a newly drawn architecture; the search among subnets comes
    after, with a multi-trial strategy over the trained weights (the second stage of SPOS).
    """

    def algorithm(self, supernet: ModelSpace) -> Algorithm:
        return _RandomPaths(supernet, self.seed)
