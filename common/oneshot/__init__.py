"""``retia.oneshot``: one-shot NAS on the user's own Lightning evaluator (also ``retia.strategy.DARTS``, ...).

One trial trains a weight-sharing supernet with the user's module wrapped, not rewritten, and
reports the architecture it prefers; ``Experiment(space, evaluator, DARTS()).run()`` runs it on a
worker like any trial. ``InheritedWeights`` is SPOS's second stage. See docs/oneshot.md.
"""

from __future__ import annotations

from .base import Algorithm, OneShotStrategy, arch_from_metric, arch_metrics
from .differentiable import DARTS, GumbelDARTS
from .enas import ENAS
from .evaluator import ARCHITECTURE_FILE, OneShotEvaluator, Supernet, supernet_of
from .inherit import SUPERNET_FILE, InheritedWeights, supernet_weights
from .module import OneShotModule
from .proxyless import Proxyless
from .sampling import RandomOneShot

__all__ = [
    "ARCHITECTURE_FILE",
    "DARTS",
    "ENAS",
    "SUPERNET_FILE",
    "Algorithm",
    "GumbelDARTS",
    "InheritedWeights",
    "OneShotEvaluator",
    "OneShotModule",
    "OneShotStrategy",
    "Proxyless",
    "RandomOneShot",
    "Supernet",
    "arch_from_metric",
    "arch_metrics",
    "supernet_of",
    "supernet_weights",
]
