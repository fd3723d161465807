"""The worker agent (one per GPU) and the trial processes it forks from a preloaded server.

Names load on first use (PEP 562): the fork server imports ``retia.worker.runner`` and must
not pull the agent's socket code into every trial process.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .agent import Agent
    from .config import WorkerConfig

__all__ = ["Agent", "WorkerConfig"]

_LAZY = {"Agent": "retia.worker.agent", "WorkerConfig": "retia.worker.config"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'retia.worker' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
