"""Search strategies: pure ask/tell algorithms over architecture dicts (no torch, no network)."""

from __future__ import annotations

from ..arch import Arch, SearchSpace
from .base import EarlyStop, MedianStop, Strategy
from .evolution import RegularizedEvolution
from .grid import GridSearch
from .pruning import OptunaPruner
from .random_search import Random
from .tpe import TPE

__all__ = [
    "TPE",
    "Arch",
    "EarlyStop",
    "GridSearch",
    "MedianStop",
    "OptunaPruner",
    "Random",
    "RegularizedEvolution",
    "SearchSpace",
    "Strategy",
]
