"""A hand-written worker speaking the real protocol, for tests that decide exactly when each message
arrives (the dispatcher and the socket are fixtures in conftest.py)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import zmq

from retia.credentials import Credential, Role, cluster_credential
from retia.dispatcher.config import DispatcherConfig
from retia.dispatcher.service import Dispatcher
from retia.protocol import (
    Done,
    DoneBatch,
    Header,
    Hello,
    Message,
    MsgType,
    Ready,
    Report,
    Run,
    TrialState,
    pack_metric,
)
from retia.session import Session, read_reset

from ..sockets import dealer, open_session

KEY = b"scheduling-test-key-0123456789ab"
CLUSTER = cluster_credential(KEY)  # the hand-driven peers sign with the cluster key itself


@contextlib.contextmanager
def serving(config: DispatcherConfig) -> Iterator[Dispatcher]:
    """A dispatcher serving in a thread until the block ends."""
    service = Dispatcher(config, KEY)
    thread = threading.Thread(target=service.serve_forever, name="dispatcher")
    thread.start()
    try:
        yield service
    finally:
        service.stop()
        thread.join(timeout=10)


def worker_socket(address: str) -> AbstractContextManager[zmq.Socket[bytes]]:
    """A DEALER socket for a hand-driven worker (its routing id the dispatcher's socket's choice)."""
    return dealer(address)


_unread_runs: dict[int, list[Run]] = {}  # socket -> runs that came in a RUNS message, not yet returned


def receive(sock: zmq.Socket[bytes], session: Session, wanted: MsgType, timeout_ms: int = 5000) -> Any:
    """The next `wanted` message within `timeout_ms` in all; heartbeats in between do not extend the wait.

    For RUNS, each call returns one Run of the messages that came."""
    unread = _unread_runs.setdefault(id(sock), [])
    if wanted is MsgType.RUNS and unread:
        return unread.pop(0)
    deadline = time.monotonic() + timeout_ms / 1000
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000)):
        frames = sock.recv_multipart()
        reset = read_reset(frames)  # unsigned: the dispatcher does not know this route (any more)
        msg: Message = Message(Header(MsgType.RESET), reset) if reset is not None else session.parse(frames)
        sock.send_multipart(session.frames(MsgType.HEARTBEAT))  # stay alive while we wait
        if msg.type is MsgType.RUNS and wanted is MsgType.RUNS:
            unread += msg.body.items
            return unread.pop(0)
        if msg.type is wanted:
            return msg
    return None


def hello(worker: zmq.Socket[bytes], name: str = "w1", prefetch: int = 0) -> Session:
    """Join as worker ``name`` (HELLO, WELCOME, then READY, which proves the session): its session."""
    session = open_session(worker, CLUSTER, Hello(Role.WORKER, name, prefetch=prefetch))
    worker.send_multipart(session.frames(MsgType.READY, Ready("")))
    return session


def join(sock: zmq.Socket[bytes], body: Hello, credential: Credential = CLUSTER) -> Session:
    """Say HELLO ``body`` (again, or as a client) and prove the new session with a heartbeat: the
    dispatcher acts on the HELLO then (a worker's running trials adopted, a client's events replayed)."""
    session = open_session(sock, credential, body)
    sock.send_multipart(session.frames(MsgType.HEARTBEAT))
    return session


def done_frames(
    session: Session, trial: str, *reports: tuple[int, bool, float], attempt: int = 1
) -> list[bytes]:
    """DONE carrying the attempt's last reports; it also tells the dispatcher the worker is free."""
    items = [Report(trial, attempt, seq, final, pack_metric(value)) for seq, final, value in reports]
    body = Done(
        trial, attempt, len(reports) + 1, TrialState.SUCCEEDED, reports=items, report_count=len(items)
    )
    return session.frames(MsgType.DONES, DoneBatch([body]))
