"""``retia dashboard``: a live, read-only web view of an experiment directory or a dispatcher."""

from .app import create_app
from .server import DashboardServer
from .source import ClusterSource, ExperimentSource

__all__ = ["ClusterSource", "DashboardServer", "ExperimentSource", "create_app"]
