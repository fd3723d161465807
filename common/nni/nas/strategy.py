"""NNI 3.0's ``nni.nas.strategy``: the multi-trial strategies retia has (the one-shot ones, DARTS,
ENAS, Proxyless, are not in retia yet)."""

from __future__ import annotations

from retia.strategy import TPE, GridSearch, Random, RegularizedEvolution, Strategy

TPEStrategy = TPE

__all__ = ["TPE", "GridSearch", "Random", "RegularizedEvolution", "Strategy", "TPEStrategy"]
