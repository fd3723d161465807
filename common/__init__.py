"""retia: distributed model evaluators for neural architecture search.

Importing retia loads neither torch nor pytorch_lightning; the parts that need them
(``retia.nn``, ``retia.lightning``, ``original_state_dict_hooks``, ...) and the client side
load on first use (PEP 562).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .arch import fixed_arch
from .errors import (
    AuthenticationError,
    InvalidArchitectureError,
    PayloadTooLarge,
    PlacementError,
    ProtocolError,
    RetiaError,
    SerializationError,
    TrialFailedError,
    WorkerLostError,
)
from .evaluator import EvaluationResult, Evaluator, FunctionalEvaluator
from .protocol import TrialState
from .reporting import report_final_result, report_intermediate_result
from .serializer import dump, load
from .trace import get_recipe, is_traced, trace

if TYPE_CHECKING:
    from .client.backend import Backend, Trial, connect, wait
    from .client.cluster import local_cluster
    from .client.experiment import Experiment, RetiariiExperiment
    from .nn.space import original_state_dict_hooks

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "Backend",
    "EvaluationResult",
    "Evaluator",
    "Experiment",
    "FunctionalEvaluator",
    "InvalidArchitectureError",
    "PayloadTooLarge",
    "PlacementError",
    "ProtocolError",
    "RetiaError",
    "RetiariiExperiment",
    "SerializationError",
    "Trial",
    "TrialFailedError",
    "TrialState",
    "WorkerLostError",
    "connect",
    "dump",
    "fixed_arch",
    "get_recipe",
    "is_traced",
    "load",
    "local_cluster",
    "original_state_dict_hooks",
    "report_final_result",
    "report_intermediate_result",
    "trace",
    "wait",
]

_LAZY = {
    "connect": "retia.client.backend",
    "wait": "retia.client.backend",
    "Backend": "retia.client.backend",
    "Trial": "retia.client.backend",
    "local_cluster": "retia.client.cluster",
    "Experiment": "retia.client.experiment",
    "RetiariiExperiment": "retia.client.experiment",
    "original_state_dict_hooks": "retia.nn.space",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retia' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
