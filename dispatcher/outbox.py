"""What one turn of the dispatcher's loop sends, held until the journal has committed it.

Each message is signed by the session of the route it goes to (a route without one gets only
the raw frames of the handshake). Replies go out as they were queued; acknowledgements are
gathered into one ACKS message per peer and events into EVENTS messages per client (in order,
at most 1,024 events or about 1 MiB each), so a burst costs a few messages instead of one per
stored item.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import zmq

from retia.protocol import Ack, AckBatch, Event, EventBatch, MsgType, batches, item_bytes
from retia.session import Session

__all__ = ["Outbox"]

_log = logging.getLogger(__name__)
_EVENTS_PER_MESSAGE = 1024
_EVENT_BYTES_PER_MESSAGE = 1 << 20  # well under any peer's message size limit


class Outbox:
    def __init__(self, sessions: Callable[[bytes], Session | None], sock: zmq.Socket[bytes]) -> None:
        self.sessions = sessions  # a route's session, if it has one
        self.sock = sock
        self.bytes_sent = 0
        self._frames: list[list[bytes]] = []
        self._acks: dict[bytes, list[Ack]] = {}
        self._events: dict[bytes, list[Event]] = {}
        # per client: the last event handed to the socket (its heartbeats say it: a client that
        # has less lost some, and asks for them again)
        self.events_through: dict[bytes, int] = {}

    def send(
        self, identity: bytes, type: MsgType, body: object = None, *, trial: str = "", attempt: int = 0
    ) -> None:
        session = self.sessions(identity)
        if session is not None:
            self._frames.append([identity, *session.frames(type, body, trial=trial, attempt=attempt)])

    def raw(self, identity: bytes, frames: list[bytes]) -> None:
        """Frames signed already, or not at all (WELCOME, REFUSED, RESET), in their place in the order."""
        self._frames.append([identity, *frames])

    def ack(self, identity: bytes, ack: Ack) -> None:
        """An acknowledgement (or a refusal) of one of the peer's messages, sent after the commit."""
        self._acks.setdefault(identity, []).append(ack)

    def event(self, identity: bytes, event: Event) -> None:
        """A report or state event for a client."""
        self._events.setdefault(identity, []).append(event)

    def forget(self, identity: bytes) -> None:
        """Forget what was queued and sent to a client: it left, or said HELLO and gets a replay."""
        self._events.pop(identity, None)
        self.events_through.pop(identity, None)

    def flush(self) -> None:
        """Send everything queued; the caller has committed the journal."""
        for identity, acks in self._acks.items():
            self.send(identity, MsgType.ACKS, AckBatch(acks))
        self._acks.clear()
        for identity, events in self._events.items():
            for part in batches(events, item_bytes, _EVENTS_PER_MESSAGE, _EVENT_BYTES_PER_MESSAGE):
                self.send(identity, MsgType.EVENTS, EventBatch(part))
            self.events_through[identity] = events[-1].seq  # sent or lost below: its heartbeat tells
        self._events.clear()
        for frames in self._frames:
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK)
                self.bytes_sent += sum(len(f) for f in frames)
            except zmq.Again:  # acks and events are asked again (re-send, heartbeat), replies re-requested
                _log.warning("send queue full for peer %r; a message was dropped", frames[0])
        self._frames.clear()
