"""What a trial process and its agent say to each other over their one-way pipes.

Trial -> agent, on the trial's message pipe: any number of :class:`TrialReport` and
:class:`TrialCheckpoint`, a :class:`TrialDevices`, then exactly
one of :class:`TrialRaised`, :class:`TrialReturned` or (for a spec cancelled before it started in
a ``--reuse-process`` child) :class:`TrialSkipped`. They travel as msgpack through
:mod:`retia.codec`, every field checked, never as pickles: the agent loads nothing a trial wrote.
The framing is ``Connection.send_bytes``'s (a 4-byte big-endian length, then the bytes); the
agent reads it with a :class:`Reader`, which never blocks on what a trial wrote itself (a header
without its bytes, half a message) and refuses a length over :data:`MAX_MESSAGE_BYTES` unread.

Agent -> child, on the spec pipe: a :class:`~retia.worker.runner.TrialSpec` to run, or a
:class:`SkipTrial` for one queued there that must not start.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Annotated, Any, Literal

import msgpack

from retia import codec
from retia.codec import Bounds
from retia.errors import ProtocolError
from retia.protocol import MAX_PACK, DeviceFacts

__all__ = [
    "TrialReport",
    "TrialCheckpoint",
    "TrialRaised",
    "TrialReturned",
    "TrialSkipped",
    "TrialStopped",
    "TrialDevices",
    "TrialMessage",
    "SkipTrial",
    "send",
    "Reader",
    "bounded",
    "raised",
    "MAX_MESSAGE_BYTES",
    "MAX_EXC_TYPE_BYTES",
    "MAX_EXC_MESSAGE_BYTES",
    "MAX_TRACEBACK_BYTES",
]

MAX_MESSAGE_BYTES = 16 << 20  # a report or a traceback; anything larger is refused
# What a failure carries home inside DONE; the full text stays in the trial's log.
MAX_EXC_TYPE_BYTES = 256
MAX_EXC_MESSAGE_BYTES = 8 << 10
MAX_TRACEBACK_BYTES = 64 << 10
_HEADER = struct.Struct("!i")
Member = Annotated[int, Bounds(0, MAX_PACK - 1)]
_READ_BYTES = 1 << 16  # what a Linux pipe holds: one read takes all that waits


@dataclass
class TrialReport:
    """One ``report_*_result``; the metric is packed once here and relayed as these bytes.

    Not frozen: one per report, and a frozen ``__init__`` costs three times as much. ``member``
    (in this and the trial's last messages) is which trial of a pack it is: 0 for the RUN's own,
    i for its i-th mate."""

    final: bool
    value: bytes
    member: Member = 0


@dataclass(frozen=True)
class TrialCheckpoint:
    """The trial saved a new checkpoint (``retia-checkpoint`` in its output directory): send it."""


@dataclass(frozen=True)
class TrialRaised:
    """fit raised (or called sys.exit): the trial's last message."""

    exc_type: str
    message: str
    traceback: str
    member: Member = 0


@dataclass(frozen=True)
class TrialReturned:
    """fit returned: the trial's last message, sent once its files are in place."""

    member: Member = 0


@dataclass(frozen=True)
class TrialStopped:
    """A trial of a pack left it unfinished: cancelled (a :class:`SkipTrial` for it came), or past
    its timeout; the others train on. Its last message."""

    member: Member
    reason: str
    timed_out: bool = False


@dataclass(frozen=True)
class TrialDevices:
    """What the trial's GPUs were and did; sent just before its last message."""

    devices: DeviceFacts
    member: Member = 0


@dataclass(frozen=True)
class TrialSkipped:
    """A queued spec that was cancelled before it started: it never ran."""


@dataclass(frozen=True)
class SkipTrial:
    """Agent -> ``--reuse-process`` child: drop this queued spec if it has not started."""

    trial: str
    attempt: int


TrialMessage = (
    TrialReport | TrialCheckpoint | TrialRaised | TrialReturned | TrialSkipped | TrialStopped | TrialDevices
)


class _Kind(IntEnum):
    REPORT = 1
    RAISED = 2
    RETURNED = 3
    SKIPPED = 4
    CHECKPOINT = 5
    STOPPED = 6
    DEVICES = 7


_KIND_OF: dict[type, _Kind] = {
    TrialReport: _Kind.REPORT,
    TrialRaised: _Kind.RAISED,
    TrialReturned: _Kind.RETURNED,
    TrialSkipped: _Kind.SKIPPED,
    TrialCheckpoint: _Kind.CHECKPOINT,
    TrialStopped: _Kind.STOPPED,
    TrialDevices: _Kind.DEVICES,
}
_CLASS_OF: dict[int, type] = {int(kind): cls for cls, kind in _KIND_OF.items()}


def send(conn: Connection, message: TrialMessage) -> None:
    """Write one message to the trial's pipe."""
    conn.send_bytes(msgpack.packb([_KIND_OF[type(message)], codec.encode(message)], use_bin_type=True))


class Reader:
    """The agent's end of a trial's message pipe: whole messages, never a blocking read.

    The fd is non-blocking; what a read brings beyond the last whole message waits in a buffer
    for the next call (a ``--reuse-process`` child's pipe carries trial after trial, so the buffer
    belongs to the pipe, not to one trial). One ``os.read`` takes all that waits in the pipe."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._buf = bytearray()
        self._pos = 0  # where the next message starts in _buf

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        self.conn.close()

    @property
    def buffered(self) -> bool:
        """A whole message waits in the buffer (the pipe itself need not be readable)."""
        available = len(self._buf) - self._pos
        if available < _HEADER.size:
            return False
        length: int = _HEADER.unpack_from(self._buf, self._pos)[0]
        return available >= _HEADER.size + length

    def next(self) -> TrialMessage | None:
        """The next whole message, or None when none has fully arrived yet.

        ProtocolError for anything that is not one: a length over the limit, bytes that do not
        decode, a partial message when the pipe closes. EOFError when it closed cleanly."""
        while True:
            buf, pos = self._buf, self._pos
            available = len(buf) - pos
            if available >= _HEADER.size:
                (length,) = _HEADER.unpack_from(buf, pos)
                if not 0 <= length <= MAX_MESSAGE_BYTES:
                    raise ProtocolError(
                        f"a trial message of {length} bytes (over {MAX_MESSAGE_BYTES}), or not a frame"
                    )
                end = pos + _HEADER.size + length
                if available >= _HEADER.size + length:
                    self._pos = end
                    return _decode(buf[pos + _HEADER.size : end])
                wanted = end - len(buf)
            else:
                wanted = _HEADER.size - available
            if not self._fill(wanted):
                return None

    def _fill(self, wanted: int) -> bool:
        """Read what waits (at least ``wanted`` bytes if a large message is coming); False if nothing."""
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0
        try:
            data = os.read(self.fd, max(_READ_BYTES, wanted))
        except BlockingIOError:
            return False
        if not data:
            if self._buf:
                raise ProtocolError(
                    f"the trial wrote a partial message ({len(self._buf)} bytes) and closed its pipe"
                )
            raise EOFError("the trial's pipe is closed")
        self._buf += data
        return True


def _decode(data: bytes | bytearray) -> TrialMessage:
    """One frame's bytes as a message; ProtocolError for anything that is not one."""
    try:
        kind, fields = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"the trial wrote something that is not a message: {exc}") from exc
    cls: Any = _CLASS_OF.get(kind) if type(kind) is int else None
    if cls is None:
        raise ProtocolError(f"the trial wrote a message of unknown kind {kind!r}")
    message: TrialMessage = codec.decode(cls, fields)
    return message


def bounded(text: str, limit: int, *, keep: Literal["head", "tail", "ends"] = "head") -> str:
    """``text`` cut to about ``limit`` UTF-8 bytes, saying how much went and where the rest is.

    ``keep``: "head" (an exception's message), "tail" (a log) or "ends" (a traceback: where it
    started and the frames and exception at its end)."""
    if len(text) <= limit // 4:  # no character takes more than 4 bytes: short enough, unencoded
        return text
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return text
    cut = len(data) - limit
    note = f" … ({cut} bytes cut; the full text is in trial.log) … "
    if keep == "head":
        return data[:limit].decode("utf-8", "ignore") + note
    if keep == "tail":
        return note + data[-limit:].decode("utf-8", "ignore")
    half = limit // 2
    return data[:half].decode("utf-8", "ignore") + note + data[-half:].decode("utf-8", "ignore")


def raised(exc_type: str, message: str, traceback: str, member: int = 0) -> TrialRaised:
    """fit's exception as DONE carries it: type, message and traceback each cut to its bound."""
    return TrialRaised(
        bounded(exc_type, MAX_EXC_TYPE_BYTES),
        bounded(message, MAX_EXC_MESSAGE_BYTES),
        bounded(traceback, MAX_TRACEBACK_BYTES, keep="ends"),
        member,
    )
