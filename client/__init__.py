"""The user's side of a cluster: connect to a dispatcher, submit trials, run experiments.

It meets the head-node service (``retia.dispatcher``) and the workers (``retia.worker``)
only on the wire; ``local_cluster`` starts them as processes.
"""

from .backend import ALL_COMPLETED, FIRST_COMPLETED, Backend, Trial, connect, query_status, wait
from .cluster import LocalCluster, local_cluster
from .experiment import Experiment, RetiariiExperiment

__all__ = [
    "ALL_COMPLETED",
    "Backend",
    "Experiment",
    "FIRST_COMPLETED",
    "LocalCluster",
    "RetiariiExperiment",
    "Trial",
    "connect",
    "local_cluster",
    "query_status",
    "wait",
]
