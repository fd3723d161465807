"""Helpers for tests that drive a real local cluster (its processes, journal and workers)."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from retia.client.backend import Backend
from retia.client.cluster import LocalCluster, local_cluster
from retia.protocol import WorkerInfo

HEARTBEAT_INTERVAL = 0.2
LIVENESS = 5  # with HEARTBEAT_INTERVAL: a peer is declared dead after 1 s of silence


def fast_cluster(
    workers: int = 2,
    *,
    home: str | Path,
    gpus: Sequence[str] | None = None,
    journal: str | None = None,
    worker_args: Sequence[str] = (),
    dispatcher_args: Sequence[str] = (),
    client_id: str | None = None,
    curve: bool = False,
) -> AbstractContextManager[Backend]:
    """``local_cluster`` with the fast heartbeats of the tests (a lost peer is noticed within 1 s)."""
    return local_cluster(
        workers,
        home=home,
        gpus=gpus,
        heartbeat_interval=HEARTBEAT_INTERVAL,
        liveness=LIVENESS,
        journal=journal,
        worker_args=worker_args,
        dispatcher_args=dispatcher_args,
        client_id=client_id,
        curve=curve,
    )


def processes(backend: Backend) -> LocalCluster:
    """The processes ``local_cluster`` started for this backend."""
    if backend.cluster is None:
        raise AssertionError("this backend was not made by local_cluster")
    return backend.cluster


def on_cluster(backend: Backend) -> dict[str, Any]:
    """``Experiment.run`` arguments that run it on this backend's cluster (no live view)."""
    return {"address": backend.address, "key_file": processes(backend).key_file, "live": False}


def joined_workers(backend: Backend, count: int, timeout: float = 60) -> list[WorkerInfo]:
    """The workers, once ``count`` have joined (local_cluster returns before its workers connect)."""
    deadline = time.monotonic() + timeout
    while len(workers := backend.status().workers) < count:
        assert time.monotonic() < deadline, f"{len(workers)} of {count} workers joined"
        time.sleep(0.05)
    return workers


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll ``check`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"still not {what} after {timeout:.0f}s"
        time.sleep(0.05)


def worker_index(backend: Backend, worker_id: str) -> int:
    return int(worker_id.split("-")[1])


def journal_path(backend: Backend) -> Path:
    return processes(backend).home / "journal.sqlite"
