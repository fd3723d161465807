"""A connection's session: HELLO/WELCOME key it, every later message is signed for its direction and
numbered, and nothing signed in one session (or for one HELLO) verifies in another."""

from __future__ import annotations

import msgpack
import pytest

from retia.credentials import Credential, Role, cluster_credential, issue
from retia.errors import AuthenticationError, MessageTooLarge, ProtocolError
from retia.protocol import (
    VERSION,
    Done,
    DoneBatch,
    Heartbeat,
    Hello,
    MsgType,
    Ready,
    Refused,
    Report,
    ReportBatch,
    Reset,
    TrialAttempt,
    TrialState,
    Welcome,
    pack_metric,
)
from retia.session import (
    MAX_HELLO_BYTES,
    Opening,
    Session,
    accept,
    read_hello,
    read_reset,
    reset_frames,
    welcome_frames,
)

CLUSTER_KEY = b"c" * 32
WORKER = issue(CLUSTER_KEY, Role.WORKER, "w1")
HELLO = Hello(Role.WORKER, "w1", host="h", running=[TrialAttempt("t", 2)])


def _handshake(credential: Credential = WORKER, hello: Hello = HELLO) -> tuple[Session, Session]:
    """Both sides of one handshake, as the peer and the dispatcher run it: (peer's, dispatcher's)."""
    opening = Opening(credential, hello.peer_id)
    greeting = read_hello(opening.hello_frames(hello))
    assert greeting.verify(credential.key)
    theirs, nonce = accept(greeting, credential.key, "d")
    answer = opening.answer(welcome_frames(greeting, credential.key, "d", Welcome(1.0, 5, "d", nonce=nonce)))
    assert answer.type is MsgType.WELCOME
    return opening.session(answer.body), theirs


def _report_frames(session: Session) -> list[bytes]:
    return session.frames(
        MsgType.REPORTS, ReportBatch([Report("t", 2, 1, False, pack_metric(0.5))]), trial="t"
    )


# ---- signing ----


def test_a_session_signs_with_one_key_and_checks_with_the_other() -> None:
    up, down = b"u" * 32, b"d" * 32
    peer, dispatcher = Session(up, "w", receive_key=down), Session(down, "d", receive_key=up)
    assert dispatcher.parse(peer.frames(MsgType.READY, Ready("t"))).body == Ready("t")
    assert peer.parse(dispatcher.frames(MsgType.HEARTBEAT, Heartbeat(3))).body == Heartbeat(3)
    with pytest.raises(AuthenticationError, match="bad signature"):  # reflected back to its sender
        peer.parse(peer.frames(MsgType.HEARTBEAT))


def test_wrong_key_is_refused() -> None:
    done = DoneBatch([Done("t", 1, 1, TrialState.SUCCEEDED)])
    frames = Session(b"x" * 32, "mallory").frames(MsgType.DONES, done)
    with pytest.raises(AuthenticationError, match="bad signature"):
        Session(b"k" * 32, "d").parse(frames)


@pytest.mark.parametrize("index", [2, 3])
def test_flipped_bit_is_refused(index: int) -> None:
    peer, dispatcher = _handshake()
    frames = _report_frames(peer)
    tampered = bytearray(frames[index])
    tampered[-1] ^= 1
    frames[index] = bytes(tampered)
    with pytest.raises(AuthenticationError, match="bad signature"):
        dispatcher.parse(frames)


def test_signing_cannot_be_turned_off() -> None:
    with pytest.raises(AuthenticationError, match="a key is required"):
        Session(b"", "w")


# ---- numbering ----


def test_a_message_replayed_within_its_session_is_refused() -> None:
    peer, dispatcher = _handshake()
    first, second = _report_frames(peer), peer.frames(MsgType.HEARTBEAT)
    assert dispatcher.parse(first).header.counter == 1
    with pytest.raises(AuthenticationError, match="replayed message: number 1 of this session came after 1"):
        dispatcher.parse(first)
    assert dispatcher.parse(second).header.counter == 2
    with pytest.raises(AuthenticationError, match="replayed message"):  # an older one, late
        dispatcher.parse(first)
    assert dispatcher.parse(peer.frames(MsgType.HEARTBEAT)).header.counter == 3  # the session goes on


def test_a_message_renumbered_by_hand_no_longer_verifies() -> None:
    """The number is signed: a replayer cannot raise it to get past the check."""
    peer, dispatcher = _handshake()
    frames = peer.frames(MsgType.HEARTBEAT)
    dispatcher.parse(frames)
    header = msgpack.unpackb(frames[2])
    header[-1] += 1
    with pytest.raises(AuthenticationError, match="bad signature"):
        dispatcher.parse([VERSION, frames[1], msgpack.packb(header), frames[3]])


# ---- the handshake ----


def test_hello_and_welcome_key_a_session_both_ways() -> None:
    opening = Opening(WORKER, "w1")
    frames = opening.hello_frames(HELLO)
    greeting = read_hello(frames)
    assert greeting.hello.credential == "w1" and greeting.hello.issued == WORKER.issued  # filled in
    assert greeting.hello.nonce == opening.nonce and len(opening.nonce) == 32
    assert greeting.hello.running == HELLO.running and greeting.header.sender == "w1"
    assert greeting.verify(WORKER.key)
    assert not greeting.verify(issue(CLUSTER_KEY, Role.WORKER, "w2").key)
    assert not greeting.verify(CLUSTER_KEY)
    theirs, nonce = accept(greeting, WORKER.key, "d")
    answer = opening.answer(welcome_frames(greeting, WORKER.key, "d", Welcome(2.0, 3, "d", nonce=nonce)))
    assert answer.type is MsgType.WELCOME and answer.body.heartbeat_interval == 2.0
    ours = opening.session(answer.body)
    assert theirs.parse(ours.frames(MsgType.READY, Ready())).header.sender == "w1"
    assert ours.parse(theirs.frames(MsgType.HEARTBEAT, Heartbeat(9))).body == Heartbeat(9)
    with pytest.raises(AuthenticationError, match="bad signature"):  # each direction its own key:
        ours.parse(ours.frames(MsgType.HEARTBEAT))  # a message reflected back to its sender is refused
    with pytest.raises(AuthenticationError, match="bad signature"):
        theirs.parse(theirs.frames(MsgType.HEARTBEAT))


def test_the_cluster_key_opens_a_session_as_any_role() -> None:
    admin = cluster_credential(CLUSTER_KEY)
    ours, theirs = _handshake(admin, Hello(Role.CLIENT, "c1"))
    assert read_hello(Opening(admin, "c1").hello_frames(Hello(Role.CLIENT, "c1"))).hello.credential == ""
    assert theirs.parse(ours.frames(MsgType.HEARTBEAT)).type is MsgType.HEARTBEAT


def test_nothing_signed_in_one_session_verifies_in_another() -> None:
    """Two sessions of one credential (a reconnect, or after a dispatcher restart): each message is
    refused by the other session, both ways, however fresh its number."""
    peer_a, dispatcher_a = _handshake()
    peer_b, dispatcher_b = _handshake()
    with pytest.raises(AuthenticationError, match="bad signature"):
        dispatcher_b.parse(_report_frames(peer_a))
    with pytest.raises(AuthenticationError, match="bad signature"):
        peer_a.parse(dispatcher_b.frames(MsgType.HEARTBEAT))
    with pytest.raises(AuthenticationError, match="bad signature"):
        dispatcher_a.parse(peer_b.frames(MsgType.HEARTBEAT))
    assert dispatcher_a.parse(peer_a.frames(MsgType.HEARTBEAT)).header.counter == 2  # each its own


def test_a_replayed_hello_opens_a_session_no_old_message_verifies_in() -> None:
    """The dispatcher answers a replayed HELLO with a fresh nonce: what the peer signed in the
    session the HELLO first opened is refused in the new one."""
    opening = Opening(WORKER, "w1")
    hello = opening.hello_frames(HELLO)
    greeting = read_hello(hello)
    first, nonce = accept(greeting, WORKER.key, "d")
    peer = opening.session(
        opening.answer(welcome_frames(greeting, WORKER.key, "d", Welcome(1.0, 5, "d", nonce=nonce))).body
    )
    captured = _report_frames(peer)
    assert first.parse(captured).type is MsgType.REPORTS
    replayed, other_nonce = accept(read_hello(hello), WORKER.key, "d")
    assert other_nonce != nonce
    with pytest.raises(AuthenticationError, match="bad signature"):
        replayed.parse(captured)


def test_a_welcome_that_answers_another_hello_is_refused() -> None:
    first, second = Opening(WORKER, "w1"), Opening(WORKER, "w1")
    greeting = read_hello(first.hello_frames(HELLO))
    second.hello_frames(HELLO)
    _session, nonce = accept(greeting, WORKER.key, "d")
    welcome = welcome_frames(greeting, WORKER.key, "d", Welcome(1.0, 5, "d", nonce=nonce))
    with pytest.raises(AuthenticationError, match="bad signature"):
        second.answer(welcome)
    assert first.answer(welcome).type is MsgType.WELCOME


def test_a_welcome_signed_with_another_credential_is_refused() -> None:
    """Only the dispatcher, which derives the credential's key, can answer its HELLO."""
    opening = Opening(WORKER, "w1")
    greeting = read_hello(opening.hello_frames(HELLO))
    other = issue(CLUSTER_KEY, Role.WORKER, "w2")
    for key in (other.key, CLUSTER_KEY):
        forged = welcome_frames(greeting, key, "d", Welcome(1.0, 5, "d", nonce=b"n" * 32))
        with pytest.raises(AuthenticationError, match="bad signature"):
            opening.answer(forged)


def test_a_session_message_is_no_answer_to_a_hello() -> None:
    peer, dispatcher = _handshake()
    opening = Opening(WORKER, "w1")
    opening.hello_frames(HELLO)
    with pytest.raises(AuthenticationError):
        opening.answer(dispatcher.frames(MsgType.HEARTBEAT))


def test_a_refused_hello_is_answered_with_its_reason() -> None:
    opening = Opening(WORKER, "w1")
    greeting = read_hello(opening.hello_frames(HELLO))
    refused = welcome_frames(greeting, WORKER.key, "d", Refused("credential 'w1' was revoked"))
    answer = opening.answer(refused)
    assert answer.type is MsgType.REFUSED and answer.body == Refused("credential 'w1' was revoked")
    with pytest.raises(AuthenticationError):  # nor can anyone make another HELLO's peer give up
        Opening(WORKER, "w1").answer(refused)


def test_only_a_hello_opens_a_session() -> None:
    with pytest.raises(ProtocolError, match="say HELLO first"):
        read_hello(Session(WORKER.key, "w1").frames(MsgType.READY, Ready()))
    with pytest.raises(ProtocolError, match="32-byte nonce"):  # a HELLO not made by an Opening
        read_hello(Session(WORKER.key, "w1").frames(MsgType.HELLO, HELLO))
    with pytest.raises(ProtocolError, match="expected 4 frames"):
        read_hello([VERSION, b"", b""])


def test_an_oversized_hello_is_refused_before_it_is_decoded() -> None:
    big = Hello(Role.WORKER, "w1", host="h" * MAX_HELLO_BYTES)
    with pytest.raises(MessageTooLarge, match="a HELLO of"):
        read_hello(Opening(WORKER, "w1").hello_frames(big))


# ---- RESET, the one unsigned message ----


def test_an_unsigned_reset_reads_back_and_nothing_else_passes_for_one() -> None:
    frames = reset_frames(12.5)
    assert frames[1] == b"" and read_reset(frames) == Reset(12.5)
    peer, dispatcher = _handshake()
    assert read_reset(dispatcher.frames(MsgType.RESET, Reset(1.0))) is None  # signed: not a RESET
    assert read_reset([frames[0], b"", frames[2], b"\xc1"]) is None  # undecodable body
    heartbeat = dispatcher.frames(MsgType.HEARTBEAT)
    assert read_reset([heartbeat[0], b"", heartbeat[2], heartbeat[3]]) is None  # another type, unsigned
    assert read_reset([*frames, b""]) is None
    with pytest.raises(AuthenticationError, match="bad signature"):  # no session accepts it as its own
        peer.parse(frames)
