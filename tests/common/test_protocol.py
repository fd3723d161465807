"""The wire protocol: signed frames decode into checked dataclasses; anything else is refused."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retia.errors import ProtocolError
from retia.failure import Failure, FailureKind
from retia.protocol import (
    VERSION,
    Ack,
    AckBatch,
    BlobRef,
    BlobRequest,
    Done,
    DoneBatch,
    Event,
    EventBatch,
    Hello,
    MsgType,
    Outgoing,
    Report,
    ReportBatch,
    Role,
    Run,
    RunBatch,
    StateChange,
    StatusReply,
    Submit,
    SubmitBatch,
    TrialAttempt,
    TrialState,
    WorkerInfo,
    kept_frames,
    pack_metric,
    unpack_metric,
)
from retia.seeding import SEED_MAX
from retia.session import Session

KEY = b"k" * 32
DIGEST = "ab" * 32


def _report(seq: int = 1, value: Any = 0.5, final: bool = False) -> Report:
    return Report("t", 2, seq, final, pack_metric(value))


def _signed(session: Session, header: list[Any], payload: Any) -> list[bytes]:
    head, body = msgpack.packb(header), msgpack.packb(payload)
    return [VERSION, session.sign(head, body), head, body]


def test_round_trip_keeps_header_and_body() -> None:
    session = Session(KEY, "w1")
    batch = ReportBatch([_report(7, {"default": 0.5, "loss": 1.0})])
    frames = session.frames(MsgType.REPORTS, batch, trial="t", attempt=2, seq=7)
    msg = Session(KEY, "dispatcher").parse(frames)
    assert (msg.type, msg.header.trial, msg.header.attempt, msg.header.seq, msg.header.sender) == (
        MsgType.REPORTS,
        "t",
        2,
        7,
        "w1",
    )
    assert msg.body == batch
    assert msg.body.items[0].metric == {"default": 0.5, "loss": 1.0}


def test_nested_bodies_round_trip() -> None:
    reply = StatusReply("d", [WorkerInfo("w", "h", "0", 1, "idle", "", 2.0)], {"QUEUED": 1}, 3.0)
    assert Session(KEY, "a").parse(Session(KEY, "a").frames(MsgType.STATUS_REPLY, reply)).body == reply
    hello = Hello(Role.WORKER, "w", running=[TrialAttempt("t", 1)], credential="w", issued=5, nonce=b"n" * 32)
    assert Session(KEY, "a").parse(Session(KEY, "a").frames(MsgType.HELLO, hello)).body == hello


def test_a_batch_of_events_keeps_reports_and_state_changes_in_order() -> None:
    session = Session(KEY, "d")
    failure = Failure(FailureKind.RAISED, "ValueError: boom", "ValueError", "boom", "Traceback...")
    state = StateChange("t", 1, TrialState.FAILED, "w", "ValueError: boom", failure)
    events = EventBatch([Event(7, report=_report(final=True)), Event(8, state=state)])
    batch = Session(KEY, "c").parse(session.frames(MsgType.EVENTS, events)).body
    assert batch == events
    assert [e.seq for e in batch.items] == [7, 8]
    assert batch.items[1].state.failure.kind is FailureKind.RAISED
    acks = AckBatch([Ack("t", 1, 2), Ack("u", 0, 3, False, "refused")])
    assert Session(KEY, "c").parse(session.frames(MsgType.ACKS, acks)).body == acks


def test_every_data_kind_travels_as_a_batch_of_typed_items() -> None:
    session = Session(KEY, "x")
    submit = Submit("t", 3, b"ev", b"model", {"width": 8}, 60.0, 1, "n", [BlobRef(DIGEST, 10)])
    done = Done("t", 1, 4, TrialState.SUCCEEDED, duration=1.5, reports=[_report(3, 1.0, True)])
    for kind, body in [(MsgType.SUBMITS, SubmitBatch([submit])), (MsgType.DONES, DoneBatch([done]))]:
        assert Session(KEY, "d").parse(session.frames(kind, body)).body == body


def test_a_seed_travels_in_submit_and_run_and_defaults_to_none() -> None:
    session = Session(KEY, "c")
    for body, batch in [
        (Submit("t", 1, b"e", b"m", seed=SEED_MAX), SubmitBatch),
        (Run("t", 2, b"e", b"m", seed=0), RunBatch),
        (Run("t", 2, b"e", b"m"), RunBatch),
    ]:
        kind = MsgType.SUBMITS if batch is SubmitBatch else MsgType.RUNS
        [back] = session.parse(session.frames(kind, batch([body]))).body.items
        assert back == body
    assert Submit("t", 1, b"e", b"m").seed is None and Run("t", 1, b"e", b"m").seed is None


def test_kept_items_travel_together_and_other_messages_alone() -> None:
    session = Session(KEY, "c")
    subs = [
        Outgoing(MsgType.SUBMITS, Submit(f"t{i}", i + 1, b"e", b"m"), f"t{i}", 0, i + 1) for i in range(5)
    ]
    cancel = Outgoing(MsgType.CANCEL, None, "t0", 0, 9)
    sent = list(kept_frames(session, [*subs[:3], cancel, *subs[3:]], max_items=2))
    assert [[m.seq for m in carried] for carried, _frames in sent] == [[1, 2], [3], [9], [4, 5]]
    parsed = [Session(KEY, "d").parse(frames) for _carried, frames in sent]
    assert [(m.type, len(m.body.items) if m.type is MsgType.SUBMITS else 0) for m in parsed] == [
        (MsgType.SUBMITS, 2),
        (MsgType.SUBMITS, 1),
        (MsgType.CANCEL, 0),
        (MsgType.SUBMITS, 2),
    ]


def test_truncated_and_wrong_version_are_protocol_errors() -> None:
    frames = Session(KEY, "w").frames(MsgType.HEARTBEAT)
    with pytest.raises(ProtocolError, match="expected 4 frames"):
        Session(KEY, "d").parse(frames[:3])
    with pytest.raises(ProtocolError, match="version"):
        Session(KEY, "d").parse([b"retia/0", *frames[1:]])
    assert frames[0] == VERSION


def test_oversized_message_is_refused_before_the_signature_is_computed() -> None:
    session = Session(KEY, "w", max_message_bytes=4096)
    frames = Session(KEY, "w").frames(MsgType.REPORTS, ReportBatch([_report()]))
    frames[3] = b"\x00" * 40_000
    with pytest.raises(ProtocolError, match="exceeds"):
        session.parse(frames)


def test_signed_garbage_is_a_protocol_error_not_a_crash() -> None:
    session = Session(KEY, "w")
    with pytest.raises(ProtocolError, match="not a MsgType"):
        session.parse(_signed(session, [99, "", 0, 0, "w", 0.0, 1], []))
    head, body = msgpack.packb([int(MsgType.HEARTBEAT), "", 0, 0, "w", 0.0, 1]), b"\xc1"  # message 1
    with pytest.raises(ProtocolError, match="undecodable"):
        session.parse([VERSION, session.sign(head, body), head, body])
    with pytest.raises(ProtocolError, match="5 to 5 fields, got 6"):
        session.parse(
            _signed(session, [int(MsgType.REPORTS), "", 0, 0, "w", 0.0, 2], [[["t", 1, 1, True, b"", 9]]])
        )


_REPORTS = [int(MsgType.REPORTS), "", 0, 0, "w", 0.0, 1]
_HELLO = [int(MsgType.HELLO), "", 0, 0, "w", 0.0, 1]


@pytest.mark.parametrize(
    ("header", "payload", "field"),
    [
        (_REPORTS, [[["t", 1, 1, "yes", b"\xcb"]]], r"ReportBatch\.items\[0\]\.final: expected a boolean"),
        (_REPORTS, [[["t", -1, 1, True, b"\xcb"]]], r"items\[0\]\.attempt: -1 is out of range"),
        (_REPORTS, [[["t", 1, 1.5, True, b"\xcb"]]], r"items\[0\]\.seq: expected an integer"),
        (_REPORTS, [[]], "an empty REPORTS"),
        (_REPORTS, {"items": []}, "ReportBatch: expected an array of ReportBatch fields"),
        (_HELLO, ["worker", "w", "", 0, "", [["t", 1]], 0, "8"], r"Hello\.prefetch: expected an integer"),
        (_HELLO, ["worker", "w", "", 0, "", [["t", 1]], 0, 65], r"Hello\.prefetch: 65 is out of range"),
        (_HELLO, ["worker", "w", "", 0, "", [["t"]], 0, 0], r"Hello\.running\[0\]: TrialAttempt has 2"),
        (_HELLO, ["root", "w"], r"Hello\.role: 'root' is not a Role"),
        (
            _HELLO,
            ["worker", "w", "", 0, "", [], 0, 0, 8 << 20, "", 0, b"short"],
            "a HELLO needs a 32-byte nonce",
        ),
        (
            _HELLO,
            ["worker", "w", "", 0, "", [], 0, 0, 8 << 20, "../x", 0, b"n" * 32],
            "a credential name must",
        ),
        (_HELLO, ["client", "w", "", 0, "", [], -3], r"Hello\.last_event: -3 is out of range"),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", None, None, "2"]]],
            r"items\[0\]\.max_retries: expected an integer",
        ),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", None, "600"]]],
            r"items\[0\]\.timeout: expected a number",
        ),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", None, None, 2, "", [["not-a-digest", 3]]]]],
            r"items\[0\]\.blobs\[0\]: blob digest 'not-a-digest' is not 64 hex digits",
        ),
        (  # a trial's seed is an integer from 0 to SEED_MAX (what NumPy's seeding takes)
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", None, None, 2, "", [], 2**32]]],
            r"items\[0\]\.seed: 4294967296 is out of range \[0, 4294967295\]",
        ),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", None, None, 2, "", [], -1]]],
            r"items\[0\]\.seed: -1 is out of range",
        ),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", None, None, 2, "", [], 1.5]]],
            r"items\[0\]\.seed: expected an integer",
        ),
        (
            [int(MsgType.RUNS), "", 0, 0, "d", 0.0, 1],
            [[["t", 1, b"e", b"m", None, "", 0, [], None, "7"]]],
            r"RunBatch\.items\[0\]\.seed: expected an integer",
        ),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["", 1, b"e", b"m"]]],
            r"items\[0\]: a trial id must be 1-128 letters",
        ),
        (  # a trial id names the worker's directory for it: no way out of the trials folder
            [int(MsgType.RUNS), "", 0, 0, "d", 0.0, 1],
            [[["../../etc", 1, b"e", b"m"]]],
            r"items\[0\]: a trial id must be 1-128 letters",
        ),
        (
            [int(MsgType.SUBMITS), "", 0, 0, "c", 0.0, 1],
            [[["t", 1, b"e", b"m", {"w": b"raw"}]]],
            r"items\[0\]\.arch: expected JSON-able data",
        ),
        (
            [int(MsgType.DONES), "", 0, 0, "w", 0.0, 1],
            [[["t", 1, 1, "FAILED"]]],
            r"items\[0\]: a FAILED DONE needs its failure",
        ),
        (
            [int(MsgType.BLOB_GET), "", 0, 0, "w", 0.0, 1],
            [DIGEST, -1, 10],
            r"BlobRequest\.offset: -1 is out of range",
        ),
        (
            [int(MsgType.BLOB_GET), "", 0, 0, "w", 0.0, 1],
            [DIGEST, 0, "10"],
            r"BlobRequest\.length: expected an integer",
        ),
        (
            [int(MsgType.FILE), "t", 1, 1, "w", 0.0, 1],
            ["out.txt", 0, "text, not bytes", True],
            r"FileChunk\.data: expected bytes",
        ),
        ([int(MsgType.HEARTBEAT), 7, 0, 0, "w", 0.0, 1], [], r"Header\.trial: expected a string"),
        ([int(MsgType.HEARTBEAT), "", 0, 0, "w", "now", 1], [], r"Header\.time: expected a number"),
        ([int(MsgType.HEARTBEAT), "", 0, 0, "w", 0.0, "1"], [], r"Header\.counter: expected an integer"),
        ([int(MsgType.HEARTBEAT), "", 0, 0, "w", 0.0, -1], [], r"Header\.counter: -1 is out of range"),
    ],
)
def test_a_field_that_does_not_fit_is_refused_by_name(header: list[Any], payload: Any, field: str) -> None:
    session = Session(KEY, "w")
    with pytest.raises(ProtocolError, match=field):
        session.parse(_signed(session, header, payload))


def test_a_message_decoded_once_checked_builds_the_classes_it_names() -> None:
    batch = (
        Session(KEY, "d").parse(Session(KEY, "w").frames(MsgType.BLOB_GET, BlobRequest(DIGEST, 0, 10))).body
    )
    assert isinstance(batch, BlobRequest) and batch.length == 10


@pytest.mark.parametrize(
    "data", [b"\xc1", msgpack.packb("high"), msgpack.packb({"a": "b"}), msgpack.packb(None)]
)
def test_a_report_that_is_not_a_metric_is_refused_on_unpacking(data: bytes) -> None:
    with pytest.raises(ProtocolError, match="not a metric"):
        unpack_metric(data)


def test_metrics_round_trip_through_their_bytes() -> None:
    assert unpack_metric(pack_metric(0.25)) == 0.25
    assert unpack_metric(pack_metric({"default": 1.0, "loss": 2.0})) == {"default": 1.0, "loss": 2.0}


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.binary(max_size=8),
)


@settings(max_examples=2000, deadline=None)
@given(values=st.lists(st.one_of(_scalars, st.lists(_scalars, max_size=5)), min_size=0, max_size=7))
def test_a_report_decodes_only_when_every_field_has_its_type(values: list[Any]) -> None:
    from retia import codec

    try:
        report = codec.decode(Report, values)
    except ProtocolError:
        return
    assert type(report.trial) is str and type(report.final) is bool and type(report.value) is bytes
    assert type(report.attempt) is int and type(report.seq) is int and report.attempt >= 0 and report.seq >= 0
    assert codec.encode(report) == values


@settings(max_examples=1000, deadline=None)
@given(seq=st.one_of(_scalars), report=st.one_of(_scalars, st.lists(_scalars, max_size=6)), state=_scalars)
def test_an_event_is_a_report_or_a_state_change_never_both_nor_neither(
    seq: Any, report: Any, state: Any
) -> None:
    from retia import codec

    try:
        event = codec.decode(Event, [seq, report, state])
    except ProtocolError:
        return
    assert (event.report is None) != (event.state is None)
    assert type(event.seq) is int and event.seq >= 0
