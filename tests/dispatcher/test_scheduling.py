"""The dispatcher's scheduling rules, driven by a hand-written worker speaking the real protocol."""

from __future__ import annotations

import threading
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
    while sock.poll(timeout_ms):
        msg = session.parse(sock.recv_multipart())
        sock.send_multipart(session.frames(MsgType.HEARTBEAT))  # stay alive while we wait
        if msg.type is wanted:
            return msg
    return None


def test_a_stale_ready_does_not_take_a_running_trial_away(dispatcher: Dispatcher) -> None:
    ctx = zmq.Context()
    worker = ctx.socket(zmq.DEALER)
    worker.setsockopt(zmq.IDENTITY, b"w1")
    worker.setsockopt(zmq.LINGER, 0)
    worker.connect(dispatcher.address)
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
    worker.close()
    ctx.term()
