"""The peer: HELLO first and nothing else until its WELCOME; kept messages re-sent once after a burst
of RESETs, never dropped when the socket is full.

A real DEALER (the peer) and a real ROUTER (the test, as the dispatcher) on 127.0.0.1.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator

import pytest
import zmq

from retia.credentials import Role, issue
from retia.errors import RetiaError
from retia.peer import Peer, PeerTiming
from retia.protocol import Ack, AckBatch, FileChunk, Hello, MsgType, Outgoing, Refused, Welcome
from retia.session import Greeting, Session, accept, peek_header, read_hello, reset_frames, welcome_frames
from tests.sockets import accept_session

pytestmark = pytest.mark.timeout(60)
CREDENTIAL = issue(b"peer-test-key-0123456789abcdef01", Role.WORKER, "w1")
# patient: nothing is re-sent as stale within a test (10 s), so every copy is one the peer chose
TIMING = PeerTiming(heartbeat_interval=0.5, liveness=20)


@pytest.fixture
def router() -> Iterator[zmq.Socket[bytes]]:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        yield sock


@pytest.fixture
def peer(router: zmq.Socket[bytes]) -> Iterator[Peer]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    address = router.getsockopt_string(zmq.LAST_ENDPOINT)
    hello = Hello(Role.WORKER, "w1")
    peer = Peer(ctx, address, CREDENTIAL, "w1", lambda: hello, timing=TIMING)
    peer.connect()
    yield peer
    peer.close()
    ctx.term()


def _welcomed(router: zmq.Socket[bytes], peer: Peer) -> tuple[bytes, Session]:
    """Answer the peer's HELLO and let it read the WELCOME: its routing id and our session."""
    identity, _hello, session = accept_session(router, CREDENTIAL.key)
    deadline = time.monotonic() + 5
    while not peer.open and time.monotonic() < deadline:
        peer.receive()
        time.sleep(0.01)
    assert peer.open
    return identity, session


def _answer(router: zmq.Socket[bytes], identity: bytes, greeting: Greeting, peer: Peer) -> Session:
    """WELCOME ``greeting`` as the dispatcher does, and let the peer read it: our session."""
    session, nonce = accept(greeting, CREDENTIAL.key, "d")
    welcome = Welcome(1.0, 5, "d", nonce=nonce)
    router.send_multipart([identity, *welcome_frames(greeting, CREDENTIAL.key, "d", welcome)])
    deadline = time.monotonic() + 5
    while not peer.open and time.monotonic() < deadline:
        peer.receive()
        time.sleep(0.01)
    assert peer.open
    return session


def _chunks(count: int, size: int) -> list[Outgoing]:
    return [
        Outgoing(MsgType.FILE, FileChunk("f", i * size, b"x" * size, False), "t", 1, i + 1)
        for i in range(count)
    ]


def _drain(
    router: zmq.Socket[bytes], identity: bytes, session: Session, seconds: float, peer: Peer
) -> tuple[Counter[int], Counter[MsgType]]:
    """The seqs of FILE messages the router receives within ``seconds``, each acknowledged as the
    dispatcher does (the peer pumps and reads its acknowledgements meanwhile), and the types of what
    else came (one this session refuses, a HELLO or a stale message, by its header's type)."""
    seen: Counter[int] = Counter()
    others: Counter[MsgType] = Counter()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        peer.pump()
        acks: list[Ack] = []
        while len(acks) < 100 and router.poll(10):
            frames = router.recv_multipart()[1:]
            try:
                msg = session.parse(frames)
            except RetiaError:
                others[peek_header(frames).type] += 1  # not of this session: a HELLO, or stale
                continue
            if msg.type is MsgType.FILE:
                seen[msg.header.seq] += 1
                acks.append(Ack(msg.header.trial, msg.header.attempt, msg.header.seq))
            else:
                others[msg.type] += 1
        if acks:
            router.send_multipart([identity, *session.frames(MsgType.ACKS, AckBatch(acks))])
        peer.receive()
    return seen, others


def test_nothing_but_hello_goes_out_before_the_welcome(router: zmq.Socket[bytes], peer: Peer) -> None:
    """What the owner keeps or sends before the WELCOME waits (kept) or is dropped (sent once); the
    WELCOME's session carries a HEARTBEAT first (it proves the session), then what was kept, in order."""
    peer.keep(_chunks(3, 16))
    peer.send(MsgType.HEARTBEAT)
    assert not peer.open and peer.backlog == 3
    identity, *frames = router.recv_multipart()
    greeting = read_hello(frames)
    assert not router.poll(300)  # the HELLO alone: nothing is signed without a session
    session = _answer(router, identity, greeting, peer)
    assert session.parse(router.recv_multipart()[1:]).type is MsgType.HEARTBEAT
    seen, others = _drain(router, identity, session, 0.5, peer)
    assert seen == Counter({1: 1, 2: 1, 3: 1}) and peer.backlog == 0
    assert not others - Counter({MsgType.HEARTBEAT: others[MsgType.HEARTBEAT]})


def test_a_welcome_for_an_earlier_hello_opens_nothing(router: zmq.Socket[bytes], peer: Peer) -> None:
    """A HELLO left unanswered for a liveness window is said again, with a new nonce; the late WELCOME
    of the first is not the answer, so no session opens until the second's comes."""
    identity, *frames = router.recv_multipart()
    first = read_hello(frames)
    peer.tick(time.monotonic() + TIMING.silence + 0.1)  # its WELCOME lost, as far as the peer knows
    _identity, *frames = router.recv_multipart()
    second = read_hello(frames)
    assert second.hello.nonce != first.hello.nonce and second.verify(CREDENTIAL.key)
    _stale, nonce = accept(first, CREDENTIAL.key, "d")
    late = welcome_frames(first, CREDENTIAL.key, "d", Welcome(1.0, 5, "d", nonce=nonce))
    router.send_multipart([identity, *late])
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        peer.receive()
        time.sleep(0.01)
    assert not peer.open
    session = _answer(router, identity, second, peer)
    assert session.parse(router.recv_multipart()[1:]).type is MsgType.HEARTBEAT


def test_a_refused_peer_stops_and_says_why(router: zmq.Socket[bytes], peer: Peer) -> None:
    identity, *frames = router.recv_multipart()
    greeting = read_hello(frames)
    reason = "credential 'w1' was revoked; ask the cluster's admin for a new one"
    router.send_multipart([identity, *welcome_frames(greeting, CREDENTIAL.key, "d", Refused(reason))])
    deadline = time.monotonic() + 5
    while not peer.refused and time.monotonic() < deadline:
        peer.receive()
        time.sleep(0.01)
    assert peer.refused == reason and not peer.open
    peer.keep(_chunks(1, 16))
    for later in (10, 20):  # long silent: no HELLO again, no reconnect
        peer.tick(time.monotonic() + later * TIMING.silence)
    assert not router.poll(300)


def test_a_burst_of_resets_resends_what_is_kept_once(router: zmq.Socket[bytes], peer: Peer) -> None:
    identity, _session = _welcomed(router, peer)
    peer.keep(_chunks(500, 16))  # sent; not acknowledged yet when the RESETs come
    for _ in range(300):  # a restarted dispatcher: one RESET for each message it got from us
        sent = peek_header(router.recv_multipart()[1:]).time  # it has no session to check them in
        router.send_multipart([identity, *reset_frames(sent)])
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:
        for msg in peer.receive():
            if msg.type is MsgType.RESET:
                peer.reset(msg.body)
    identity, session = _welcomed(router, peer)  # the one HELLO the burst made (what came before: dropped)
    seen, others = _drain(router, identity, session, 1.0, peer)
    assert seen == Counter(dict.fromkeys(range(1, 501), 1))  # each re-sent once in the new session
    assert others[MsgType.HELLO] == 0  # the burst did not make a second HELLO
    assert peer.backlog == 0


def test_what_the_socket_cannot_take_waits_in_order_and_is_not_dropped(
    router: zmq.Socket[bytes], peer: Peer
) -> None:
    identity, session = _welcomed(router, peer)
    count = 3000
    peer.keep(_chunks(count, 32 << 10))  # ~94 MiB: more than the socket's queue and buffers hold
    assert peer.backlog > 0  # waiting for room, not dropped
    seen, _others = _drain(router, identity, session, 8.0, peer)
    assert peer.backlog == 0
    assert set(seen) == set(range(1, count + 1)) and max(seen.values()) == 1
