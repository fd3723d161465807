"""One small real experiment for the dashboard's tests (a package-scoped cluster of two CPU workers)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from retia import Experiment, FunctionalEvaluator
from retia.client.backend import Backend
from retia.strategy import GridSearch

from ...clusters import fast_cluster, on_cluster, processes
from .dash_fits import TinySpace, dashboard_fit


@dataclass(frozen=True)
class Ran:
    """The experiment's directory, the cluster it ran on and a client credential file of that cluster."""

    path: Path
    backend: Backend
    credential: Path


@pytest.fixture(scope="package")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ran]:
    home = tmp_path_factory.mktemp("dashboard")
    with fast_cluster(workers=2, home=home / "cluster") as backend:
        exp = Experiment(TinySpace(), FunctionalEvaluator(dashboard_fit), GridSearch(), path=home / "exp")
        exp.run(max_trials=6, concurrency=2, dashboard=0, **on_cluster(backend))
        assert exp.dashboard_url is not None and exp.dashboard_url.startswith("http://127.0.0.1:")
        port = int(exp.dashboard_url.rsplit(":", 1)[1].strip("/"))
        with pytest.raises(ConnectionRefusedError):  # run(dashboard=) served it only while it ran
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        yield Ran(home / "exp", backend, processes(backend).home / "credentials" / "client.json")
