"""A peer's reliable connection to the dispatcher (Paranoid Pirate), for the client and the worker alike.

Data flow::

    owner --send/keep--> Peer --DEALER--> dispatcher      (HELLO first on every connect)
    owner <--messages--- Peer <--DEALER-- dispatcher      (bad frames dropped and logged here)

The peer owns one DEALER socket and its session: it says HELLO on every (re)connect and sends
nothing else until the WELCOME that answers it keys a new session (:mod:`retia.session`); its
routing id is the one the dispatcher's socket assigns. It heartbeats, declares the dispatcher
lost after ``liveness`` silent intervals and reconnects with exponential back-off, and keeps
every message sent with :meth:`Peer.keep` until an ACK names it, re-sending it after a
reconnect, a RESET, or a liveness window without an answer. Kept messages go out through
one ordered queue, as fast as the socket takes them: a re-send after a RESET sends each once
(another RESET meanwhile does not start it over), and what the socket cannot take yet waits
there, never dropped; its length (:attr:`Peer.backlog`) tells the owner to stop producing.
Nothing here blocks.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from .credentials import Credential
from .droplog import DropLog
from .encryption import secure_client
from .errors import ConfigError, RetiaError
from .protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    Ack,
    Header,
    Hello,
    Message,
    MsgType,
    Outgoing,
    Reset,
    kept_frames,
)
from .session import Opening, Session, read_reset

__all__ = ["PeerTiming", "Peer"]

_log = logging.getLogger(__name__)
_RESEND_PER_BEAT = 256  # stale messages re-sent per heartbeat, so a long backlog does not stall a turn
_PUMP_PER_CALL = 1024  # kept messages handed to the socket per call, so a long re-send does not stall a turn


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
        credential: Credential,
        sender: str,
        hello: Callable[[], Hello],
        *,
        timing: PeerTiming = PeerTiming(),
        curve_server_key: str | Path | None = None,
        after_hello: Callable[[], None] | None = None,
        max_items: int = 256,
        max_bytes: int = 1 << 20,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        self.credential = credential
        self.sender = sender
        self.session: Session | None = None  # keyed by the last WELCOME
        self._opening: Opening | None = None  # a HELLO sent, its WELCOME awaited
        self.refused = ""  # why the dispatcher refused us (a revoked credential): we stop trying
        self._max_message_bytes = max_message_bytes
        self.timing = timing
        self._ctx = ctx
        self._hello = hello
        self._after_hello = after_hello
        self._curve_server_key = curve_server_key
        self._max_items = max_items
        self._max_bytes = max_bytes
        self.sock: zmq.Socket[bytes] | None = None
        self._kept: OrderedDict[tuple[str, int, int], Outgoing] = OrderedDict()
        self._unsent: OrderedDict[tuple[str, int, int], None] = OrderedDict()  # kept, to go out, in order
        self._kept_types: Counter[MsgType] = Counter()  # how many of each type wait for an ACK
        self._sent_at: dict[tuple[str, int, int], float] = {}
        self._last_heard = time.monotonic()
        self._next_beat = time.monotonic()
        self._backoff = timing.reconnect_min
        self._reconnect_at: float | None = None
        self._hello_sent = 0.0  # time.time() of the last HELLO, as its header says
        self._opened_at = 0.0  # time.monotonic() of the last HELLO
        self._drops = DropLog(_log)  # what it refuses from the dispatcher, logged within a budget

    # ---- the connection ----

    def connect(self) -> None:
        """A fresh socket (the old one closed), then HELLO and everything still unacknowledged."""
        if self.sock is not None:
            self.sock.close(linger=0)
        sock = self._ctx.socket(zmq.DEALER)  # its routing id is the dispatcher socket's choice
        sock.setsockopt(zmq.LINGER, 0)
        if self._curve_server_key is not None:
            secure_client(sock, self._curve_server_key)
        elif self.credential.server_key:
            secure_client(sock, self.credential.server_key.encode())
        sock.connect(self.address)
        self.sock = sock
        self._last_heard = time.monotonic()
        self.say_hello()

    def say_hello(self) -> None:
        """Introduce ourselves (again, after a RESET): a new session opens when its WELCOME comes."""
        opening = Opening(self.credential, self.sender, max_message_bytes=self._max_message_bytes)
        frames = opening.hello_frames(self._hello())
        self._opening, self._hello_sent = opening, opening.sent_at
        self._opened_at = time.monotonic()
        self._send_frames(frames)

    def _welcomed(self, opening: Opening, msg: Message) -> None:
        """Our HELLO was answered: on WELCOME the new session starts (proven at once with a heartbeat)
        and what the dispatcher may lack is re-sent, in order, each once: a re-send still under way
        starts over from the oldest, it is not added to. On REFUSED we stop."""
        self._opening = None
        if msg.type is MsgType.REFUSED:
            self._refused(msg.body.reason)
            return
        self.session = opening.session(msg.body)
        self.send(MsgType.HEARTBEAT)
        self._unsent = OrderedDict.fromkeys(self._kept)
        self.pump()
        if self._after_hello is not None:
            self._after_hello()

    def reset(self, reset: Reset) -> None:
        """The dispatcher does not know us (it restarted, or gave us up): HELLO again, unless the RESET
        answers a message sent before our last HELLO (which it has, or is about to get): a burst of
        RESETs makes one HELLO and one re-send."""
        if reset.sent >= self._hello_sent or not reset.sent:
            self.say_hello()

    def close(self, linger_ms: int = 0) -> None:
        """Say BYE and close the socket."""
        if self.sock is None:
            return
        self.send(MsgType.BYE)
        self.sock.close(linger=linger_ms)
        self.sock = None

    # ---- sending ----

    @property
    def open(self) -> bool:
        """A session is open: messages can be signed (not between a HELLO and its WELCOME)."""
        return self.session is not None and self._opening is None and not self.refused

    def send(
        self, type: MsgType, body: Any = None, *, trial: str = "", attempt: int = 0, seq: int = 0
    ) -> None:
        """Send once, without keeping it (heartbeats, requests that are asked again anyway); dropped
        while no session is open."""
        if self.session is not None and self.open:
            self._send_frames(self.session.frames(type, body, trial=trial, attempt=attempt, seq=seq))

    def keep(self, messages: list[Outgoing]) -> None:
        """Send and keep until acknowledged; consecutive SUBMITS or DONES items travel together."""
        for message in messages:
            if message.key not in self._kept:
                self._kept_types[message.type] += 1
            self._kept[message.key] = message
            self._unsent[message.key] = None
        self.pump()

    @property
    def backlog(self) -> int:
        """Kept messages the socket has not taken yet (its queue is full, or a re-send is under way)."""
        return len(self._unsent)

    def pump(self) -> None:
        """Hand what waits to the socket, in order, while it takes it (a bounded number per call)."""
        budget = _PUMP_PER_CALL
        while (
            self._unsent and self.sock is not None and self.session is not None and self.open and budget > 0
        ):
            keys = list(itertools.islice(self._unsent, min(budget, self._max_items)))
            budget -= len(keys)
            for key in keys:
                if key not in self._kept:  # acknowledged meanwhile
                    del self._unsent[key]
            messages = [self._kept[key] for key in keys if key in self._kept]
            now = time.monotonic()
            for carried, frames in kept_frames(
                self.session, messages, max_items=self._max_items, max_bytes=self._max_bytes
            ):
                try:
                    self.sock.send_multipart(frames, zmq.NOBLOCK)
                except zmq.Again:
                    return  # the queue to the dispatcher is full: the rest waits, in order
                for message in carried:
                    self._sent_at[message.key] = now
                    del self._unsent[message.key]

    def _send_frames(self, frames: list[bytes]) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            pass  # heartbeats, HELLO and requests are sent again anyway

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
            msg = self._read(frames)
            if msg is None:
                continue
            if msg.type is MsgType.ACKS:
                self.acknowledge(msg.body.items)
            elif msg.type is MsgType.REFUSED and not self.refused:  # in the session: revoked since
                self._refused(msg.body.reason)
            messages.append(msg)
        if messages:
            self._last_heard = time.monotonic()
            self._backoff = self.timing.reconnect_min
        return messages

    def _read(self, frames: list[bytes]) -> Message | None:
        """The message, checked by the session it belongs to: the answer to our HELLO, a message of the
        open session (until a WELCOME, the one before it), or an unsigned RESET; else dropped."""
        problem = "no session"
        opening = self._opening
        if opening is not None:
            try:
                answer = opening.answer(frames)
            except RetiaError:
                pass
            else:
                self._welcomed(opening, answer)
                return answer
        if self.session is not None:
            try:
                return self.session.parse(frames)
            except RetiaError as exc:
                problem = str(exc)
        reset = read_reset(frames)
        if reset is not None:
            return Message(Header(MsgType.RESET), reset)
        self._drops.drop(self.address, problem, time.monotonic())
        return None

    def _refused(self, reason: str) -> None:
        """The dispatcher will not serve us (a revoked credential, an id another's): stop trying."""
        self.refused = reason
        _log.error("the dispatcher at %s refused %s: %s", self.address, self.credential.label, reason)

    def acknowledge(self, acks: list[Ack]) -> None:
        for ack in acks:
            key = (ack.trial, ack.attempt, ack.seq)
            message = self._kept.pop(key, None)
            if message is not None:
                self._kept_types[message.type] -= 1
            self._unsent.pop(key, None)
            self._sent_at.pop(key, None)

    def kept_count(self, type: MsgType) -> int:
        """How many messages of ``type`` are kept, unacknowledged (the worker's artefact window)."""
        return self._kept_types[type]

    # ---- time ----

    def tick(self, now: float) -> None:
        """Heartbeat when due, re-send what stayed unanswered, and reconnect a dispatcher gone silent."""
        if self.refused:
            return
        if self._opening is not None and now - self._opened_at > self.timing.silence:
            self.say_hello()  # that HELLO, or its WELCOME, was lost on the way
        if now >= self._next_beat:
            self.send(MsgType.HEARTBEAT)
            self._resend_stale(now)
            self._next_beat = now + self.timing.heartbeat_interval
        self.pump()
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

    def heard_within(self, seconds: float) -> bool:
        """The dispatcher said something in the last ``seconds`` (it is there and answering)."""
        return time.monotonic() - self._last_heard < seconds

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (a poll timeout ends there)."""
        if self._reconnect_at is not None:
            return min(self._next_beat, self._reconnect_at)
        return self._next_beat

    def _resend_stale(self, now: float) -> None:
        """Queue again, in order, what stayed unacknowledged for a liveness window since it went out
        (lost on the way, or not stored yet because something before it was)."""
        stale = set()
        for key in itertools.islice(self._kept, _RESEND_PER_BEAT):
            sent = self._sent_at.get(key)
            if sent is not None and now - sent > self.timing.silence and key not in self._unsent:
                stale.add(key)
        if stale:
            self._unsent = OrderedDict.fromkeys(k for k in self._kept if k in stale or k in self._unsent)
