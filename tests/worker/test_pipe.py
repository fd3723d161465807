"""The trial -> agent pipe: typed messages round-trip; what a trial writes itself is refused, unread,
and never blocks the agent's reader (a header without its bytes, half a message)."""

from __future__ import annotations

import os
import pickle
import struct
from collections.abc import Iterator
from multiprocessing.connection import Connection, Pipe
from pathlib import Path

import msgpack
import pytest

from retia.errors import ProtocolError
from retia.protocol import pack_metric
from retia.worker import pipe


@pytest.fixture
def ends() -> Iterator[tuple[Connection, Connection]]:
    reader, writer = Pipe(duplex=False)
    yield reader, writer
    reader.close()
    writer.close()


@pytest.mark.parametrize(
    "message",
    [
        pipe.TrialReport(False, pack_metric(0.5)),
        pipe.TrialReport(True, pack_metric({"default": 1.0, "loss": 0.1})),
        pipe.TrialRaised("ValueError", "bad width", "Traceback (most recent call last): ..."),
        pipe.TrialReturned(),
        pipe.TrialSkipped(),
    ],
)
def test_every_message_round_trips(ends: tuple[Connection, Connection], message: pipe.TrialMessage) -> None:
    reader, writer = ends
    pipe.send(writer, message)
    assert pipe.Reader(reader).next() == message


class _Marker:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, ...]:
        return (Path.touch, (self.path,))


@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1garbage",
        msgpack.packb([99, []]),
        msgpack.packb(["report", [True, b"x"]]),
        msgpack.packb([1, ["yes", b"x"]]),  # a report whose final is not a boolean
        msgpack.packb([2, ["ValueError"]]),  # too few fields
    ],
)
def test_what_is_not_a_message_is_a_protocol_error(ends: tuple[Connection, Connection], raw: bytes) -> None:
    reader, writer = ends
    writer.send_bytes(raw)
    with pytest.raises(ProtocolError):
        pipe.Reader(reader).next()


def test_a_pickle_written_to_the_pipe_is_never_loaded(
    ends: tuple[Connection, Connection], tmp_path: Path
) -> None:
    reader, writer = ends
    marker = tmp_path / "unpickled"
    writer.send(_Marker(marker))  # what Connection.send writes: a pickle
    with pytest.raises(ProtocolError):
        pipe.Reader(reader).next()
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(_Marker(marker))) is None and marker.exists()  # the marker works


def test_a_header_without_its_bytes_waits_without_blocking(ends: tuple[Connection, Connection]) -> None:
    reader, writer = ends
    messages = pipe.Reader(reader)
    os.write(writer.fileno(), struct.pack("!i", 1000))
    assert messages.next() is None  # before: recv_bytes blocked here for good
    assert not messages.buffered


def test_a_message_split_across_reads_comes_whole_and_the_next_stays_for_later(
    ends: tuple[Connection, Connection],
) -> None:
    reader, writer = ends
    messages = pipe.Reader(reader)
    first, second = pipe.TrialReport(False, pack_metric(1.0)), pipe.TrialReturned()
    pipe.send(writer, first)
    pipe.send(writer, second)
    frames = os.read(reader.fileno(), 1 << 16)  # both frames, to be written again in pieces
    os.write(writer.fileno(), frames[:3])
    assert messages.next() is None
    os.write(writer.fileno(), frames[3:-1])
    assert messages.next() == first
    assert messages.next() is None  # the second lacks its last byte
    os.write(writer.fileno(), frames[-1:])
    assert messages.next() == second


def test_a_length_over_the_limit_is_refused_unread(ends: tuple[Connection, Connection]) -> None:
    reader, writer = ends
    os.write(writer.fileno(), struct.pack("!i", pipe.MAX_MESSAGE_BYTES + 1))
    with pytest.raises(ProtocolError, match="over"):
        pipe.Reader(reader).next()


def test_a_partial_message_left_when_the_pipe_closes_is_a_protocol_error(
    ends: tuple[Connection, Connection],
) -> None:
    reader, writer = ends
    messages = pipe.Reader(reader)
    os.write(writer.fileno(), struct.pack("!i", 10) + b"abc")
    writer.close()
    with pytest.raises(ProtocolError, match="partial message"):
        messages.next()


def test_a_clean_close_is_end_of_file(ends: tuple[Connection, Connection]) -> None:
    reader, writer = ends
    messages = pipe.Reader(reader)
    pipe.send(writer, pipe.TrialReturned())
    writer.close()
    assert messages.next() == pipe.TrialReturned()
    with pytest.raises(EOFError):
        messages.next()


@pytest.mark.parametrize("keep", ["head", "tail", "ends"])
def test_bounded_text_says_how_much_was_cut(keep: str) -> None:
    text = "é" * 10_000  # 20,000 bytes in UTF-8
    cut = pipe.bounded(text, 1000, keep=keep)  # type: ignore[arg-type]
    assert "(19000 bytes cut; the full text is in trial.log)" in cut
    assert len(cut.encode()) < 1200
    assert pipe.bounded("short", 1000, keep=keep) == "short"  # type: ignore[arg-type]
