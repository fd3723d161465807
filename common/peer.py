"""A peer's reliable connection to the dispatcher (Paranoid Pirate), for the client and the worker alike.

Data flow::

    owner --send/keep--> Peer --DEALER--> dispatcher      (HELLO first on every connect)
    owner <--messages--- Peer <--DEALER-- dispatcher      (bad frames dropped and logged here)

The peer owns one DEALER socket: it says HELLO on every (re)connect, heartbeats, declares the
dispatcher lost after ``liveness`` silent intervals and reconnects with exponential back-off,
and keeps every message sent with :meth:`Peer.keep` until an ACK names it, re-sending it after
a reconnect, a RESET, or a liveness window without an answer. Nothing here blocks: a send the
socket cannot take now goes again later.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .encryption import secure_client
from .errors import ConfigError, RetiaError
from .protocol import Ack, Hello, Message, MsgType, Outgoing, Session, kept_frames

__all__ = ["PeerTiming", "Peer"]

_log = logging.getLogger(__name__)
_RESEND_PER_BEAT = 256  # stale messages re-sent per heartbeat, so a long backlog does not stall a turn


@dataclass(frozen=True)
class PeerTiming:
    """How patient a peer is with the dispatcher: heartbeats, liveness and reconnect back-off."""

    heartbeat_interval: float = 1.0
    liveness: int = 5  # silent intervals before the dispatcher is declared lost
    reconnect_min: float = 1.0
    reconnect_max: float = 32.0

    def __post_init__(self) -> None:
        problems = []
        if not self.heartbeat_interval > 0:
            problems.append(f"heartbeat_interval must be > 0 (got {self.heartbeat_interval})")
        if self.liveness < 1:
            problems.append(f"liveness must be >= 1 (got {self.liveness})")
        if not 0 < self.reconnect_min <= self.reconnect_max:
            problems.append("need 0 < reconnect_min <= reconnect_max")
        if problems:
            raise ConfigError("invalid connection timing: " + "; ".join(problems))

    @property
    def silence(self) -> float:
        """Seconds without a word from the dispatcher before it is declared lost."""
        return self.heartbeat_interval * self.liveness


class Peer:
    """One DEALER connection to the dispatcher, its session, and what waits for acknowledgement."""

    def __init__(
        self,
        ctx: zmq.Context[zmq.Socket[bytes]],
        address: str,
        session: Session,
        hello: Callable[[], Hello],
        *,
        timing: PeerTiming = PeerTiming(),
        curve_server_key: str | Path | None = None,
        after_hello: Callable[[], None] | None = None,
        max_items: int = 256,
        max_bytes: int = 1 << 20,
    ) -> None:
        self.address = address
        self.session = session
        self.timing = timing
        self._ctx = ctx
        self._hello = hello
        self._after_hello = after_hello
        self._curve_server_key = curve_server_key
        self._max_items = max_items
        self._max_bytes = max_bytes
        self.sock: zmq.Socket[bytes] | None = None
        self._kept: OrderedDict[tuple[str, int, int], Outgoing] = OrderedDict()
        self._kept_types: Counter[MsgType] = Counter()  # how many of each type wait for an ACK
        self._sent_at: dict[tuple[str, int, int], float] = {}
        self._last_heard = time.monotonic()
        self._next_beat = time.monotonic()
        self._backoff = timing.reconnect_min
        self._reconnect_at: float | None = None

    # ---- the connection ----

    def connect(self) -> None:
        """A fresh socket (the old one closed), then HELLO and everything still unacknowledged."""
        if self.sock is not None:
            self.sock.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IDENTITY, self.session.sender.encode())
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve_server_key is not None:
            secure_client(sock, self._curve_server_key)
        sock.connect(self.address)
        self.sock = sock
        self._last_heard = time.monotonic()
        self.say_hello()

    def say_hello(self) -> None:
        """Introduce ourselves (again, after a RESET) and re-send what the dispatcher may lack, in order."""
        self.send(MsgType.HELLO, self._hello())
        now = time.monotonic()
        for key in self._kept:
            self._sent_at[key] = now  # sent just now: not stale again for a liveness window
        self._send_kept(list(self._kept.values()))
        if self._after_hello is not None:
            self._after_hello()

    def close(self, linger_ms: int = 0) -> None:
        """Say BYE and close the socket."""
        if self.sock is None:
            return
        self.send(MsgType.BYE)
        self.sock.close(linger=linger_ms)
        self.sock = None

    # ---- sending ----

    def send(
        self, type: MsgType, body: Any = None, *, trial: str = "", attempt: int = 0, seq: int = 0
    ) -> None:
        """Send once, without keeping it (heartbeats, HELLO, requests that are asked again anyway)."""
        self._send_frames(self.session.frames(type, body, trial=trial, attempt=attempt, seq=seq))

    def keep(self, messages: list[Outgoing]) -> None:
        """Send and keep until acknowledged; consecutive SUBMITS or DONES items travel together."""
        sent = time.monotonic()
        for message in messages:
            if message.key not in self._kept:
                self._kept_types[message.type] += 1
            self._kept[message.key] = message
            self._sent_at[message.key] = sent
        self._send_kept(messages)

    def _send_kept(self, messages: list[Outgoing]) -> None:
        for frames in kept_frames(
            self.session, messages, max_items=self._max_items, max_bytes=self._max_bytes
        ):
            self._send_frames(frames)

    def _send_frames(self, frames: list[bytes]) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # the dispatcher is unreachable: what is kept goes again on reconnect

    # ---- receiving ----

    def receive(self) -> list[Message]:
        """Every message waiting on the socket, checked and decoded; bad ones are dropped and logged.

        Acknowledgements are applied here; ACKS still reaches the owner (for the refusals it holds)."""
        messages: list[Message] = []
        while self.sock is not None:
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                msg = self.session.parse(frames)
            except RetiaError as exc:
                _log.warning("dropped message from the dispatcher at %s: %s", self.address, exc)
                continue
            if msg.type is MsgType.ACKS:
                self.acknowledge(msg.body.items)
            messages.append(msg)
        if messages:
            self._last_heard = time.monotonic()
            self._backoff = self.timing.reconnect_min
        return messages

    def acknowledge(self, acks: list[Ack]) -> None:
        for ack in acks:
            key = (ack.trial, ack.attempt, ack.seq)
            message = self._kept.pop(key, None)
            if message is not None:
                self._kept_types[message.type] -= 1
            self._sent_at.pop(key, None)

    def kept_count(self, type: MsgType) -> int:
        """How many messages of ``type`` are kept, unacknowledged (the worker's artefact window)."""
        return self._kept_types[type]

    # ---- time ----

    def tick(self, now: float) -> None:
        """Heartbeat when due, re-send what stayed unanswered, and reconnect a dispatcher gone silent."""
        if now >= self._next_beat:
            self.send(MsgType.HEARTBEAT)
            self._resend_stale(now)
            self._next_beat = now + self.timing.heartbeat_interval
        silent = now - self._last_heard
        if self._reconnect_at is None and silent > self.timing.silence:
            _log.warning(
                "dispatcher at %s silent for %.1fs; reconnecting in %.1fs",
                self.address,
                silent,
                self._backoff,
            )
            self._reconnect_at = now + self._backoff
        if self._reconnect_at is not None and now >= self._reconnect_at:
            self._reconnect_at = None
            self._backoff = min(self._backoff * 2, self.timing.reconnect_max)
            self.connect()

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (a poll timeout ends there)."""
        if self._reconnect_at is not None:
            return min(self._next_beat, self._reconnect_at)
        return self._next_beat

    def _resend_stale(self, now: float) -> None:
        """Re-send what stayed unacknowledged for a liveness window (a send dropped under load)."""
        stale = []
        for key, message in list(self._kept.items())[:_RESEND_PER_BEAT]:
            if now - self._sent_at.get(key, now) > self.timing.silence:
                self._sent_at[key] = now
                stale.append(message)
        self._send_kept(stale)
