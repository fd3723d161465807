"""NNI 3.0's ``nni.nas.strategy``: retia's multi-trial strategies, and the one-shot ones
(``DARTS``, ``GumbelDARTS``, ``ENAS``, ``Proxyless``, ``RandomOneShot``: retia.oneshot, loaded on
first use)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from retia.strategy import TPE, GridSearch, Random, RegularizedEvolution, Strategy, one_shot

if TYPE_CHECKING:
    from retia.oneshot import DARTS, ENAS, GumbelDARTS, Proxyless, RandomOneShot

TPEStrategy = TPE

__all__ = [
    "DARTS",
    "ENAS",
    "TPE",
    "GridSearch",
    "GumbelDARTS",
    "Proxyless",
    "Random",
    "RandomOneShot",
    "RegularizedEvolution",
    "Strategy",
    "TPEStrategy",
]


def __getattr__(name: str) -> Any:
    """The one-shot strategies, from retia.strategy (imported on first use: they need torch)."""
    return one_shot(name, __name__)
