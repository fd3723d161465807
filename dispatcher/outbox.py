"""What one turn of the dispatcher's loop sends, held until the journal has committed it.

Replies go out as they were queued; acknowledgements are gathered into one ACKS message per
peer and events into EVENTS messages per client (in order, at most 1,024 events or about
1 MiB each), so a burst costs a few messages instead of one per stored item.
"""

from __future__ import annotations

import logging

import zmq

from retia.protocol import Ack, AckBatch, Event, EventBatch, MsgType, Session, batches, item_bytes

__all__ = ["Outbox"]

_log = logging.getLogger(__name__)
_EVENTS_PER_MESSAGE = 1024
_EVENT_BYTES_PER_MESSAGE = 1 << 20  # well under any peer's message size limit


class Outbox:
    def __init__(self, session: Session, sock: zmq.Socket[bytes]) -> None:
        self.session = session
        self.sock = sock
        self.bytes_sent = 0
        self._frames: list[list[bytes]] = []
        self._acks: dict[bytes, list[Ack]] = {}
        self._events: dict[bytes, list[Event]] = {}

    def send(
        self, identity: bytes, type: MsgType, body: object = None, *, trial: str = "", attempt: int = 0
    ) -> None:
        self._frames.append([identity, *self.session.frames(type, body, trial=trial, attempt=attempt)])

    def ack(self, identity: bytes, ack: Ack) -> None:
        """An acknowledgement (or a refusal) of one of the peer's messages, sent after the commit."""
        self._acks.setdefault(identity, []).append(ack)

    def event(self, identity: bytes, event: Event) -> None:
        """A report or state event for a client."""
        self._events.setdefault(identity, []).append(event)

    def drop_events(self, identity: bytes) -> None:
        """Forget the events queued for a client this turn (it is about to get them in a replay)."""
        self._events.pop(identity, None)

    def flush(self) -> None:
        """Send everything queued; the caller has committed the journal."""
        for identity, acks in self._acks.items():
            self.send(identity, MsgType.ACKS, AckBatch(acks))
        self._acks.clear()
        for identity, events in self._events.items():
            for part in batches(events, item_bytes, _EVENTS_PER_MESSAGE, _EVENT_BYTES_PER_MESSAGE):
                self.send(identity, MsgType.EVENTS, EventBatch(part))
        self._events.clear()
        for frames in self._frames:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
                self.bytes_sent += sum(len(f) for f in frames)
            except zmq.Again:
                _log.warning("send queue full for peer %r; message dropped (it will be re-sent)", frames[0])
        self._frames.clear()
