"""The peer's kept messages: re-sent once after a burst of RESETs, never dropped when the socket is full.

A real DEALER (the peer) and a real ROUTER (the test, as the dispatcher) on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import zmq

from retia.peer import Peer, PeerTiming
from retia.protocol import Ack, AckBatch, FileChunk, Hello, MsgType, Outgoing, Reset, Role
from retia.session import Session

pytestmark = pytest.mark.timeout(60)
KEY = b"peer-test-key-0123456789abcdef01"


@pytest.fixture
def router() -> Iterator[zmq.Socket[bytes]]:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        yield sock


@pytest.fixture
def peer(router: zmq.Socket[bytes]) -> Iterator[Peer]:
    # patient: nothing is re-sent as stale within a test (10 s), so every copy is one the peer chose
    timing = PeerTiming(heartbeat_interval=0.5, liveness=20)
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    hello = Hello(Role.WORKER, "w1")
    peer = Peer(ctx, address, Session(KEY, "w1"), lambda: hello, timing=timing)
    peer.connect()
    yield peer
    peer.close()
    ctx.term()


def _chunks(count: int, size: int) -> list[Outgoing]:
    return [
        Outgoing(MsgType.FILE, FileChunk("f", i * size, b"x" * size, False), "t", 1, i + 1)
        for i in range(count)
    ]


def _drain(router: zmq.Socket[bytes], session: Session, seconds: float, peer: Peer) -> Counter[int]:
    """The seqs of FILE messages the router receives within ``seconds``, each acknowledged as the
    dispatcher does (the peer pumps and reads its acknowledgements meanwhile)."""
    seen: Counter[int] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peer.pump()
        acks: list[Ack] = []
        while len(acks) < 100 and router.poll(10):
            msg = session.parse(router.recv_multipart()[1:])
            if msg.type is MsgType.FILE:
                seen[msg.header.seq] += 1
                acks.append(Ack(msg.header.trial, msg.header.attempt, msg.header.seq))
        if acks:
            router.send_multipart([b"w1", *session.frames(MsgType.ACKS, AckBatch(acks))])
        peer.receive()
    return seen


def test_a_burst_of_resets_resends_what_is_kept_once(router: zmq.Socket[bytes], peer: Peer) -> None:
    me = Session(KEY, "dispatcher")
    peer.keep(_chunks(500, 16))  # sent; not acknowledged yet when the RESETs come
    for _ in range(300):  # a restarted dispatcher: one RESET for each message it got from us
        msg = me.parse(router.recv_multipart()[1:])
        router.send_multipart([b"w1", *me.frames(MsgType.RESET, Reset(msg.header.time))])
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        for msg in peer.receive():
            if msg.type is MsgType.RESET:
                peer.reset(msg.body)
    seen = _drain(router, me, 1.0, peer)
    assert set(seen) == set(range(1, 501))
    assert max(seen.values()) == 2  # as sent, then once after a HELLO: the burst did not multiply it


def test_what_the_socket_cannot_take_waits_in_order_and_is_not_dropped(
    router: zmq.Socket[bytes], peer: Peer
) -> None:
    me = Session(KEY, "dispatcher")
    count = 3000
    peer.keep(_chunks(count, 32 << 10))  # ~94 MiB: more than the socket's queue and buffers hold
    assert peer.backlog > 0  # waiting for room, not dropped
    seen = _drain(router, me, 8.0, peer)
    assert peer.backlog == 0
    assert set(seen) == set(range(1, count + 1)) and max(seen.values()) == 1
