"""Clusters for end-to-end tests: real dispatcher and worker processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from retia.dispatcher.client import Backend
from retia.dispatcher.cluster import LocalCluster, local_cluster

FAST = {"heartbeat_interval": 0.2, "liveness": 5}  # a peer is declared dead after 1 s of silence


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Two CPU workers shared by a test module (read-only use: do not kill its processes)."""
    with local_cluster(workers=2, home=tmp_path_factory.mktemp("cluster"), **FAST) as backend:  # type: ignore[arg-type]
        yield backend


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Backend]:
    """A private two-worker cluster for tests that kill or stop its processes."""
    with local_cluster(workers=2, home=tmp_path / "cluster", **FAST) as backend:  # type: ignore[arg-type]
        yield backend


def processes(backend: Backend) -> LocalCluster:
    return backend.cluster  # type: ignore[attr-defined, no-any-return]


def worker_index(backend: Backend, worker_id: str) -> int:
    return int(worker_id.split("-")[1])


def journal_path(backend: Backend) -> Path:
    return processes(backend).home / "journal.sqlite"
