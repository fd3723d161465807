"""Search strategies: pure ask/tell algorithms over architecture dicts (no torch, no network), and
the one-shot strategies of :mod:`retia.oneshot` (loaded on first use: they need torch)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..arch import Arch, SearchSpace
from .base import EarlyStop, MedianStop, Strategy
from .evolution import RegularizedEvolution
from .grid import GridSearch
from .pruning import OptunaPruner
from .random_search import Random
from .tpe import TPE

if TYPE_CHECKING:
    from ..oneshot import DARTS, ENAS, GumbelDARTS, Proxyless, RandomOneShot

__all__ = [
    "DARTS",
    "ENAS",
    "TPE",
    "Arch",
    "EarlyStop",
    "GridSearch",
    "GumbelDARTS",
    "MedianStop",
    "OptunaPruner",
    "Proxyless",
    "Random",
    "RandomOneShot",
    "RegularizedEvolution",
    "SearchSpace",
    "Strategy",
]

_ONE_SHOT = ("DARTS", "ENAS", "GumbelDARTS", "Proxyless", "RandomOneShot")


def one_shot(name: str, module: str = __name__) -> Any:
    """The one-shot strategy ``name``, imported on first use (the PEP 562 ``__getattr__`` of this
    module and of NNI's strategy paths under retia.nni, named by ``module``)."""
    if name in _ONE_SHOT:
        return getattr(importlib.import_module("retia.oneshot"), name)
    raise AttributeError(f"module {module!r} has no attribute {name!r}")


def __getattr__(name: str) -> Any:
    return one_shot(name)
