"""The wire protocol: signed frames decode; anything else is refused before decoding."""

from __future__ import annotations

import msgpack
import pytest

from retia.errors import AuthenticationError, ProtocolError
from retia.protocol import (
    VERSION,
    AckBatch,
    Done,
    EventBatch,
    Hello,
    MsgType,
    Report,
    Session,
    StateChange,
    StatusReply,
    TrialState,
    WorkerInfo,
)

KEY = b"k" * 32


def test_round_trip_keeps_header_and_body() -> None:
    session = Session(KEY, "w1")
    frames = session.frames(
        MsgType.REPORT, Report(False, {"default": 0.5, "loss": 1.0}), trial="t", attempt=2, seq=7
    )
    msg = Session(KEY, "dispatcher").parse(frames)
    assert (msg.type, msg.header.trial, msg.header.attempt, msg.header.seq, msg.header.sender) == (
        MsgType.REPORT,
        "t",
        2,
        7,
        "w1",
    )
    assert msg.body == Report(False, {"default": 0.5, "loss": 1.0})
    assert msg.payload == frames[3]


def test_nested_bodies_round_trip() -> None:
    reply = StatusReply("d", [WorkerInfo("w", "h", "0", 1, "idle", "", 2.0)], {"QUEUED": 1}, 3.0)
    assert Session(KEY, "a").parse(Session(KEY, "a").frames(MsgType.STATUS_REPLY, reply)).body == reply
    hello = Hello("worker", "w", running=[["t", 1]])
    assert Session(KEY, "a").parse(Session(KEY, "a").frames(MsgType.HELLO, hello)).body == hello


def test_a_batch_of_events_decodes_item_by_item() -> None:
    session = Session(KEY, "d")
    report, state = Report(True, 0.5), StateChange(TrialState.SUCCEEDED.value, 1, "w")
    items = [
        [int(MsgType.REPORT), "t", 1, 7, session.pack_body(report)],
        [int(MsgType.STATE), "t", 1, 8, session.pack_body(state)],
    ]
    batch = Session(KEY, "c").parse(session.frames(MsgType.EVENTS, EventBatch(items))).body
    decoded = [Session.decode(*item) for item in batch.items]
    assert [(m.type, m.header.seq, m.body) for m in decoded] == [
        (MsgType.REPORT, 7, report),
        (MsgType.STATE, 8, state),
    ]
    acks = AckBatch([["t", 1, 2], ["u", 0, 3]])
    assert Session(KEY, "c").parse(session.frames(MsgType.ACKS, acks)).body == acks


@pytest.mark.parametrize("item", [[99, "t", 1, 1, b"\x90"], [int(MsgType.STATE), "t", 1, 1, b"\xc1"]])
def test_an_undecodable_event_in_a_batch_is_a_protocol_error(item: list[object]) -> None:
    with pytest.raises(ProtocolError, match="undecodable"):
        Session.decode(*item)  # type: ignore[arg-type]


def test_wrong_key_is_refused() -> None:
    frames = Session(b"x" * 32, "mallory").frames(MsgType.DONE, Done(TrialState.SUCCEEDED.value))
    with pytest.raises(AuthenticationError, match="bad signature"):
        Session(KEY, "d").parse(frames)


@pytest.mark.parametrize("index", [2, 3])
def test_flipped_bit_is_refused(index: int) -> None:
    frames = Session(KEY, "w").frames(MsgType.REPORT, Report(True, 1.0), trial="t")
    tampered = bytearray(frames[index])
    tampered[-1] ^= 1
    frames[index] = bytes(tampered)
    with pytest.raises(AuthenticationError):
        Session(KEY, "d").parse(frames)


def test_truncated_and_wrong_version_are_protocol_errors() -> None:
    frames = Session(KEY, "w").frames(MsgType.HEARTBEAT)
    with pytest.raises(ProtocolError, match="expected 4 frames"):
        Session(KEY, "d").parse(frames[:3])
    with pytest.raises(ProtocolError, match="version"):
        Session(KEY, "d").parse([b"retia/0", *frames[1:]])
    assert frames[0] == VERSION


def test_oversized_message_is_refused_before_the_signature_is_computed() -> None:
    session = Session(KEY, "w", max_message_bytes=4096)
    frames = Session(KEY, "w").frames(MsgType.REPORT, Report(True, 1.0))
    frames[3] = b"\x00" * 40_000
    with pytest.raises(ProtocolError, match="exceeds"):
        session.parse(frames)


def test_signed_garbage_is_a_protocol_error_not_a_crash() -> None:
    session = Session(KEY, "w")
    header = msgpack.packb([99, "", 0, 0, "w", 0.0])
    payload = msgpack.packb([])
    with pytest.raises(ProtocolError, match="undecodable"):
        session.parse([VERSION, session.sign(header, payload), header, payload])
    header = msgpack.packb([int(MsgType.REPORT), "", 0, 0, "w", 0.0])
    payload = msgpack.packb([1, 2, 3, 4, 5])  # too many fields for Report
    with pytest.raises(ProtocolError):
        session.parse([VERSION, session.sign(header, payload), header, payload])


def test_signing_cannot_be_turned_off() -> None:
    with pytest.raises(AuthenticationError):
        Session(b"", "w")
