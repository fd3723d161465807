"""What a trial process and its agent say to each other over their one-way pipes.

Trial -> agent, on the trial's message pipe: any number of :class:`TrialReport`, then exactly
one of :class:`TrialRaised`, :class:`TrialReturned` or (for a spec cancelled before it started in
a ``--reuse-process`` child) :class:`TrialSkipped`. They travel as msgpack through
:mod:`retia.codec`, every field checked, never as pickles: the agent loads nothing a trial wrote.

Agent -> child, on the spec pipe: a :class:`~retia.worker.runner.TrialSpec` to run, or a
:class:`SkipTrial` for one queued there that must not start.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from retia import codec
from retia.errors import ProtocolError

__all__ = [
    "TrialReport",
    "TrialRaised",
    "TrialReturned",
    "TrialSkipped",
    "TrialMessage",
    "SkipTrial",
    "send",
    "receive",
    "MAX_MESSAGE_BYTES",
]

MAX_MESSAGE_BYTES = 16 << 20  # a report or a traceback; anything larger is refused


@dataclass
class TrialReport:
    """One ``report_*_result``; the metric is packed once here and relayed as these bytes.

    Not frozen: one per report, and a frozen ``__init__`` costs three times as much."""

    final: bool
    value: bytes


@dataclass(frozen=True)
class TrialRaised:
    """fit raised (or called sys.exit): the trial's last message."""

    exc_type: str
    message: str
    traceback: str


@dataclass(frozen=True)
class TrialReturned:
    """fit returned: the trial's last message, sent once its files are in place."""


@dataclass(frozen=True)
class TrialSkipped:
    """A queued spec that was cancelled before it started: it never ran."""


@dataclass(frozen=True)
class SkipTrial:
    """Agent -> ``--reuse-process`` child: drop this queued spec if it has not started."""

    trial: str
    attempt: int


TrialMessage = TrialReport | TrialRaised | TrialReturned | TrialSkipped


class _Kind(IntEnum):
    REPORT = 1
    RAISED = 2
    RETURNED = 3
    SKIPPED = 4


_KIND_OF: dict[type, _Kind] = {
    TrialReport: _Kind.REPORT,
    TrialRaised: _Kind.RAISED,
    TrialReturned: _Kind.RETURNED,
    TrialSkipped: _Kind.SKIPPED,
}
_CLASS_OF: dict[int, type] = {int(kind): cls for cls, kind in _KIND_OF.items()}


def send(conn: Connection, message: TrialMessage) -> None:
    """Write one message to the trial's pipe."""
    conn.send_bytes(msgpack.packb([_KIND_OF[type(message)], codec.encode(message)], use_bin_type=True))


def receive(conn: Connection) -> TrialMessage:
    """Read one message; ProtocolError for anything that is not one (EOFError or OSError: pipe gone)."""
    try:
        data = conn.recv_bytes(MAX_MESSAGE_BYTES)
    except OSError as exc:
        if "bad message length" in str(exc):
            raise ProtocolError(f"a trial message over {MAX_MESSAGE_BYTES} bytes, or a torn frame") from exc
        raise
    try:
        kind, fields = msgpack.unpackb(data, raw=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"the trial wrote something that is not a message: {exc}") from exc
    cls: Any = _CLASS_OF.get(kind) if type(kind) is int else None
    if cls is None:
        raise ProtocolError(f"the trial wrote a message of unknown kind {kind!r}")
    message: TrialMessage = codec.decode(cls, fields)
    return message
