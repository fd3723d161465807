"""``retia dashboard``: a live, read-only web view of an experiment directory or a dispatcher.

Its names load on first use (PEP 562): ``retia.client.dashboard.cli`` is imported to build the
``retia`` command's parser, and that must not import the web stack (the dispatcher image has none).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import create_app
    from .server import DashboardServer
    from .source import ClusterSource, ExperimentSource

__all__ = ["ClusterSource", "DashboardServer", "ExperimentSource", "create_app"]

_LAZY = {
    "create_app": ".app",
    "DashboardServer": ".server",
    "ClusterSource": ".source",
    "ExperimentSource": ".source",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value
