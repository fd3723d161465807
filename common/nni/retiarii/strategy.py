"""NNI 2.x's ``nni.retiarii.strategy``: the multi-trial strategies retia has (the one-shot ones,
DARTS, ENAS, Proxyless, are not in retia yet)."""

from __future__ import annotations

from retia.strategy import TPE, GridSearch, Random, RegularizedEvolution
from retia.strategy import Strategy as BaseStrategy

TPEStrategy = TPE

__all__ = ["TPE", "BaseStrategy", "GridSearch", "Random", "RegularizedEvolution", "TPEStrategy"]
