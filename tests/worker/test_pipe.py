"""The trial -> agent pipe: typed messages round-trip; what a trial writes itself is refused, unread."""

from __future__ import annotations

import pickle
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
    assert pipe.receive(reader) == message


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
        pipe.receive(reader)


def test_a_pickle_written_to_the_pipe_is_never_loaded(
    ends: tuple[Connection, Connection], tmp_path: Path
) -> None:
    reader, writer = ends
    marker = tmp_path / "unpickled"
    writer.send(_Marker(marker))  # what Connection.send writes: a pickle
    with pytest.raises(ProtocolError):
        pipe.receive(reader)
    assert not marker.exists()
    assert pickle.loads(pickle.dumps(_Marker(marker))) is None and marker.exists()  # the marker works
