"""A dispatcher in a thread and a hand-driven worker socket (helpers in fakes.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from retia.dispatcher.config import DispatcherConfig
from retia.dispatcher.service import Dispatcher

from .fakes import serving, worker_socket


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    with serving(
        DispatcherConfig(bind="tcp://127.0.0.1:*", home=tmp_path, journal=Path(":memory:"))
    ) as service:
        yield service


@pytest.fixture
def worker(dispatcher: Dispatcher) -> Iterator[zmq.Socket[bytes]]:
    """A hand-driven worker socket, so the test decides exactly when READY and DONE arrive."""
    with worker_socket(dispatcher.address) as sock:
        yield sock
