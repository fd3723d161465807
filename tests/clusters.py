"""Helpers for tests that drive a real local cluster (its processes, journal and workers)."""

from __future__ import annotations

from pathlib import Path

from retia.client.backend import Backend
from retia.client.cluster import LocalCluster

FAST = {"heartbeat_interval": 0.2, "liveness": 5}  # a peer is declared dead after 1 s of silence


def processes(backend: Backend) -> LocalCluster:
    return backend.cluster  # type: ignore[attr-defined, no-any-return]


def worker_index(backend: Backend, worker_id: str) -> int:
    return int(worker_id.split("-")[1])


def journal_path(backend: Backend) -> Path:
    return processes(backend).home / "journal.sqlite"
