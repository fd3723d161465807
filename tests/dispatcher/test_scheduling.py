"""The dispatcher's scheduling rules, driven by a hand-written worker speaking the real protocol."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from retia import FunctionalEvaluator
from retia.dispatcher.client import connect
from retia.dispatcher.config import DispatcherConfig
from retia.dispatcher.service import Dispatcher
from retia.protocol import Done, Hello, Message, MsgType, Ready, Session, TrialState

from ..integration import fits

pytestmark = pytest.mark.timeout(60)
KEY = b"scheduling-test-key-0123456789ab"


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    config = DispatcherConfig(bind="tcp://127.0.0.1:*", home=tmp_path, journal=Path(":memory:"))
    service = Dispatcher(config, KEY)
    thread = threading.Thread(target=service.serve_forever, name="dispatcher")
    thread.start()
    yield service
    service.stop()
    thread.join(timeout=10)


def _receive(sock: zmq.Socket, session: Session, wanted: MsgType, timeout_ms: int = 5000) -> Message | None:
    """The next `wanted` message within `timeout_ms` in all; heartbeats in between do not extend the wait."""
    deadline = time.monotonic() + timeout_ms / 1000
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000)):
        msg = session.parse(sock.recv_multipart())
        sock.send_multipart(session.frames(MsgType.HEARTBEAT))  # stay alive while we wait
        if msg.type is wanted:
            return msg
    return None


@pytest.fixture
def worker(dispatcher: Dispatcher) -> Iterator[zmq.Socket]:
    """A hand-driven worker socket, so the test decides exactly when READY and DONE arrive."""
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.IDENTITY, b"w1")
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(dispatcher.address)
        yield sock


def test_a_stale_ready_does_not_take_a_running_trial_away(dispatcher: Dispatcher, worker: zmq.Socket) -> None:
    session = Session(KEY, "w1")
    worker.send_multipart(session.frames(MsgType.HELLO, Hello("worker", "w1")))
    worker.send_multipart(session.frames(MsgType.READY, Ready("")))
    with connect(dispatcher.address, key=KEY) as client:
        first = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        second = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        run = _receive(worker, session, MsgType.RUN)
        assert run is not None and run.header.trial == first.id
        worker.send_multipart(session.frames(MsgType.READY, Ready("")))  # sent before the RUN arrived
        assert _receive(worker, session, MsgType.RUN, timeout_ms=1000) is None  # no second RUN while busy
        assert second.state is TrialState.QUEUED and first.attempt == 1
        done = Done(TrialState.SUCCEEDED.value)
        worker.send_multipart(session.frames(MsgType.DONE, done, trial=first.id, attempt=1, seq=1))
        worker.send_multipart(session.frames(MsgType.READY, Ready(first.id)))
        run = _receive(worker, session, MsgType.RUN)
        assert run is not None and run.header.trial == second.id  # now it gets the next one
        assert first.result(timeout=10) is None and first.attempt == 1
