"""What one turn of the dispatcher's loop sends, held until the journal has committed it.

Replies go out as they were queued; acknowledgements are gathered into one ACKS message per
peer and events into EVENTS messages per client (in order, at most 1,024 events or about
1 MiB each), so a burst costs a few messages instead of one per stored item.
"""

from __future__ import annotations

import logging

import zmq

from retia.protocol import Ack, AckBatch, EventBatch, Header, MsgType, Session, batches

__all__ = ["Outbox"]

_log = logging.getLogger(__name__)
_EVENTS_PER_MESSAGE = 1024
_EVENT_BYTES_PER_MESSAGE = 1 << 20  # well under any peer's message size limit


class Outbox:
    def __init__(self, session: Session, sock: zmq.Socket) -> None:
        self.session = session
        self.sock = sock
        self.bytes_sent = 0
        self._frames: list[list[bytes]] = []
        self._acks: dict[bytes, list[list[object]]] = {}  # peer -> [[trial, attempt, seq], ...]
        self._events: dict[
            bytes, list[list[object]]
        ] = {}  # client -> [[type, trial, attempt, seq, body], ...]

    def send(self, identity: bytes, type: MsgType, body: object = None, **header: object) -> None:
        self._frames.append([identity, *self.session.frames(type, body, **header)])  # type: ignore[arg-type]

    def ack(self, identity: bytes, header: Header) -> None:
        """A positive acknowledgement of a stored message."""
        self._acks.setdefault(identity, []).append([header.trial, header.attempt, header.seq])

    def event(self, identity: bytes, kind: int, trial: str, attempt: int, seq: int, body: bytes) -> None:
        """A REPORT or STATE event for a client, relayed as its packed body."""
        self._events.setdefault(identity, []).append([kind, trial, attempt, seq, body])

    def flush(self) -> None:
        """Send everything queued; the caller has committed the journal."""
        for identity, acks in self._acks.items():
            if len(acks) == 1:
                trial, attempt, seq = acks[0]
                self.send(identity, MsgType.ACK, Ack(), trial=trial, attempt=attempt, seq=seq)
            else:
                self.send(identity, MsgType.ACKS, AckBatch(acks))
        self._acks.clear()
        for identity, events in self._events.items():
            self._queue_events(identity, events)
        self._events.clear()
        for frames in self._frames:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
                self.bytes_sent += sum(len(f) for f in frames)
            except zmq.Again:
                _log.warning("send queue full for peer %r; message dropped (it will be re-sent)", frames[0])
        self._frames.clear()

    def _queue_events(self, identity: bytes, events: list[list[object]]) -> None:
        """Events to one client, in order: alone as REPORT/STATE, or several to an EVENTS message."""
        if len(events) == 1:
            kind, trial, attempt, seq, body = events[0]
            frames = self.session.frames_raw(MsgType(kind), body, trial=trial, attempt=attempt, seq=seq)  # type: ignore[arg-type]
            self._frames.append([identity, *frames])
            return
        for part in batches(events, lambda e: len(e[4]), _EVENTS_PER_MESSAGE, _EVENT_BYTES_PER_MESSAGE):  # type: ignore[arg-type]
            self.send(identity, MsgType.EVENTS, EventBatch(part))
