"""The dispatcher: one ROUTER socket, the handlers per role, and the journal behind them.

Data flow (one thread, one loop)::

    client --SUBMITS/CANCEL-->  +------------+  --RUNS/CANCEL-->   worker agent
    client <--EVENTS/ACKS-----  | dispatcher |  <--REPORTS/DONES-- worker agent
                                +-----+------+
                                      | every change, before its ACK
                                   journal (SQLite, WAL)

Each loop turn reads a batch of messages. A route without a session may only say HELLO, which
opens one if its credential checks out (``links``); every other message is checked by its route's
session and handed to the table of that session's role; the handlers change the
in-memory state and the journal, with the trial's moves decided by ``lifecycle`` and the
placements by ``Scheduler``. Then the turn commits once and sends what it produced: the
replies it queued (WELCOME, RUNS, CANCEL, ...), then one ACKS message per peer, then EVENTS per
client. User payloads are opaque bytes here: the dispatcher never loads them.

Acknowledged means stored: a turn whose commit fails (a full or read-only disk) sends nothing,
and the in-memory view is rebuilt from the journal as at a restart (:meth:`Dispatcher._reload`).
Until the disk takes writes again the dispatcher is degraded (``storage``): it serves what needs
no write, refuses new trials with the reason, and leaves what peers must keep unacknowledged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import zmq

from retia.blobs import CHUNK as BLOB_CHUNK
from retia.blobs import BlobStore
from retia.credentials import Role
from retia.droplog import DropLog
from retia.encryption import reachable_from_afar, secure_server, server_certificate
from retia.errors import AuthenticationError, MessageTooLarge, ProtocolError, StorageFault
from retia.failure import Failure, FailureKind
from retia.protocol import (
    MAX_PREFETCH,
    Ack,
    BlobRef,
    BlobRequest,
    Cancel,
    Done,
    Event,
    FileChunk,
    Heartbeat,
    Hello,
    Mate,
    Message,
    MsgType,
    Ready,
    Refused,
    Report,
    Run,
    RunBatch,
    StateChange,
    StatusReply,
    Submit,
    TrialState,
    Welcome,
    WorkerInfo,
    batches,
    item_bytes,
)
from retia.seeding import trial_seed
from retia.session import Greeting, Session, accept, peek_header, read_hello, reset_frames, welcome_frames

from . import lifecycle
from .artifacts import ArtifactStore
from .config import DispatcherConfig
from .drops import ResetLimiter
from .journal import Journal, TrialRecord
from .links import Gate, Link
from .outbox import Outbox
from .peers import Client, Worker
from .scheduler import Scheduler
from .storage import StorageWatch, storage_fault

__all__ = ["Dispatcher"]

_log = logging.getLogger(__name__)
_BATCH = 512
_HEADROOM = 64 << 10  # a message's header and framing, beyond its items
_TURN = 0.005  # a burst of SUBMITs must not hold back the RUNs it could already send
_UNPROVEN = 4096  # sessions opened by a HELLO and not yet used: the oldest are dropped beyond this
P = TypeVar("P", Link, Worker, Client)  # who sent a message: an admin's link, a worker, a client


class Dispatcher:
    """Serves workers and clients until :meth:`stop`; state survives restarts through the journal."""

    def __init__(self, config: DispatcherConfig, key: bytes) -> None:
        self.config = config
        self.id = f"dispatcher-{socket.gethostname()}-{os.getpid()}"
        self.journal = Journal(config.journal_path)
        self.gate = Gate(key, self.journal)
        self.links: dict[bytes, Link] = {}  # route -> its session (workers and clients are joined ones)
        self._hellos: dict[bytes, Hello] = {}  # what unproven links said, to join them by once proven
        self.artifacts = ArtifactStore(config.artifacts_dir)
        self.blobs = BlobStore(config.home_dir / "blobs", config.blob_budget_bytes)
        journal_dir = [] if config.journal_path == ":memory:" else [Path(config.journal_path).parent]
        self.storage = StorageWatch([*journal_dir, config.artifacts_dir, self.blobs.root])
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)  # a slow peer must not make the ROUTER drop its events
        self._sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes * 16)
        if config.encrypted:
            public, secret = server_certificate(config.home_dir)
            secure_server(self._sock, secret)
            _log.info("CurveZMQ on: credentials issued here carry its public key (%s)", public)
        elif reachable_from_afar(config.bind):
            _log.warning(
                "--insecure: payloads (your code and data), results and logs cross the network in clear "
                "on %s; anyone on the path can read them",
                config.bind,
            )
        self._sock.bind(config.bind)
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[str, Client] = {}
        self._client_at: dict[bytes, Client] = {}  # the same clients, by routing id
        self.trials: dict[str, TrialRecord] = {}
        self.scheduler = self._new_scheduler()
        self._payloads: dict[str, tuple[bytes, bytes]] = {}  # submitted, not yet sent: saves a journal read
        self._orphans: dict[str, float] = {}  # RUNNING at restart: trial -> adoption deadline
        self._unfit_since: dict[str, float] = {}  # queued, asking for more GPUs than any worker has: since
        # DONEs that came before some of their attempt's reports: (trial, attempt) -> first seen
        self._short: dict[tuple[str, int], float] = {}
        self.outbox = Outbox(self._session_of, self._sock)
        self._drops = DropLog(
            _log
        )  # nothing per peer before a valid HELLO: junk costs bounded memory and log
        self._resets = ResetLimiter(config.expiry)
        self._stopping = False
        self._started = time.monotonic()
        self.messages_handled = 0
        # Who may send what, by the role of the session (a route without one may only say HELLO).
        self._from_admin: dict[MsgType, Callable[[Link, Message], None]] = {
            MsgType.HEARTBEAT: _nothing,
            MsgType.STATUS: self._on_status,
            MsgType.BYE: self._on_admin_bye,
        }
        self._from_worker: dict[MsgType, Callable[[Worker, Message], None]] = {
            MsgType.HEARTBEAT: _nothing,
            MsgType.READY: self._on_ready,
            MsgType.REPORTS: self._on_reports,
            MsgType.DONES: self._on_dones,
            MsgType.FILE: self._on_file,
            MsgType.CHECKPOINT: self._on_checkpoint,
            MsgType.BLOB_GET: self._on_blob_get,
            MsgType.BYE: self._on_worker_bye,
        }
        self._from_client: dict[MsgType, Callable[[Client, Message], None]] = {
            MsgType.HEARTBEAT: _nothing,
            MsgType.SUBMITS: self._on_submits,
            MsgType.BLOB_PUT: self._on_blob_put,
            MsgType.CANCEL: self._on_client_cancel,
            MsgType.STATUS: self._on_client_status,
            MsgType.BYE: self._on_client_bye,
        }
        self._gate_writes()
        self._recover()

    # ---- lifecycle ----

    def _new_scheduler(self) -> Scheduler:
        return Scheduler(self._packing, self.config.pack_wait, self._needs)

    def _packing(self, trial: str) -> tuple[str, int]:
        """A trial's pack key and pack size, for the scheduler (1: it runs alone)."""
        rec = self.trials.get(trial)
        return ("", 1) if rec is None else (rec.pack_key, rec.pack)

    def _needs(self, trial: str) -> int:
        """The GPUs a trial's worker must have, for the scheduler (0: any worker)."""
        rec = self.trials.get(trial)
        return 0 if rec is None else rec.gpus or 0

    def _recover(self, adoption_deadline: float = 0.0) -> None:
        """Trials from the journal; RUNNING ones wait for their workers until ``adoption_deadline``
        (0: from when the loop starts serving)."""
        for rec in self.journal.trials():
            self.trials[rec.id] = rec
            if rec.state is TrialState.QUEUED:
                self.scheduler.enqueue(rec.id)
            elif rec.state is TrialState.RUNNING:
                rec.reports = self.journal.report_count(rec.id, rec.attempt)
                self._orphans[rec.id] = adoption_deadline
        if self.trials:
            _log.info(
                "recovered %d trials from %s: %d queued, %d running (awaiting their workers)",
                len(self.trials),
                self.config.journal_path,
                len(self.scheduler.queue),
                len(self._orphans),
            )

    def _reload(self) -> None:
        """Start again from the journal as a restart would (after a lost commit, and when the disk
        takes writes again): nothing the turn queued is sent; trials are reloaded, running ones
        waiting for their workers; peers are forgotten, so their next message gets a RESET and they
        say HELLO again, re-sending all they hold unacknowledged (workers adopt their trials)."""
        sent = self.outbox.bytes_sent
        self.outbox = Outbox(self._session_of, self._sock)
        self.outbox.bytes_sent = sent
        self.links.clear()
        self._hellos.clear()
        self.workers.clear()
        self.clients.clear()
        self._client_at.clear()
        self.trials.clear()
        self._payloads.clear()
        self._orphans.clear()
        self._short.clear()
        self._resets = ResetLimiter(self.config.expiry)  # every peer is to be asked for HELLO at once
        self.scheduler = self._new_scheduler()
        self._recover(time.monotonic() + self.config.expiry)

    def _gate_writes(self) -> None:
        """While the disk refuses writes, what would write does not reach its handler: new trials are
        refused with the reason; what peers must keep (reports, DONEs, files, blob chunks, cancels) is
        left unacknowledged, so they send it again, and it is stored once the dispatcher resumes."""
        for kind in (MsgType.REPORTS, MsgType.DONES, MsgType.FILE, MsgType.CHECKPOINT):
            self._from_worker[kind] = self._unless_degraded(self._from_worker[kind], _nothing)
        for kind in (MsgType.BLOB_PUT, MsgType.CANCEL):
            self._from_client[kind] = self._unless_degraded(self._from_client[kind], _nothing)
        submits = self._from_client[MsgType.SUBMITS]
        self._from_client[MsgType.SUBMITS] = self._unless_degraded(submits, self._refuse_submits)

    def _unless_degraded(
        self, handler: Callable[[P, Message], None], instead: Callable[[P, Message], None]
    ) -> Callable[[P, Message], None]:
        def gated(peer: P, msg: Message) -> None:
            (instead if self.storage.degraded else handler)(peer, msg)

        return gated

    def _refuse_submits(self, client: Client, msg: Message) -> None:
        """Degraded: a trial stored already is acknowledged (a re-send), a new one refused with why."""
        why = self.storage.fault.reason if self.storage.fault else "the dispatcher's disk refuses writes"
        for sub in msg.body.items:
            rec = self.trials.get(sub.trial)
            if rec is not None and rec.client == client.id:
                self.outbox.ack(client.identity, Ack(sub.trial, 0, sub.seq))
            else:
                reason = f"trial not accepted: {why}; submit it again then"
                self.outbox.ack(client.identity, Ack(sub.trial, 0, sub.seq, False, reason))

    def _storage_step(self, now: float) -> None:
        """Degraded: probe the disk when due (resuming as after a restart once it takes writes), and
        keep trials whose workers may be waiting to send their DONE from being given up meanwhile."""
        if self.storage.probe(now):
            self._reload()
            return
        deadline = now + self.config.expiry
        for trial in self._orphans:
            self._orphans[trial] = max(self._orphans[trial], deadline)

    def stop(self) -> None:
        """Ask the loop to exit after its current turn (safe from a signal handler)."""
        self._stopping = True

    def serve_forever(self) -> None:
        if self.config.ready_file is not None:
            tmp = self.config.ready_file.with_suffix(".tmp")
            tmp.write_text(self.address)
            tmp.rename(self.config.ready_file)
        _log.info("dispatcher %s listening on %s", self.id, self.address)
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        next_beat = time.monotonic()
        for trial_id in self._orphans:  # counted from now, when their workers can reach us
            self._orphans[trial_id] = next_beat + self.config.expiry
        try:
            while not self._stopping:
                if self.storage.degraded:  # between turns: the journal holds no open transaction
                    self._guarded("probing the disk", self._storage_step, time.monotonic())
                # a pack that stops waiting wakes the loop; one whose wait is over goes on the next
                # worker message (a deadline already past would make the loop spin)
                pack_due = self.scheduler.wake_at()
                wake = pack_due if time.monotonic() < pack_due < next_beat else next_beat
                wait_ms = max(0.0, wake - time.monotonic()) * 1000
                if poller.poll(int(min(wait_ms, 200))):
                    self._read_batch()
                now = time.monotonic()
                if now >= next_beat:
                    self._guarded("expiring peers", self._beat, now)
                    next_beat = now + self.config.heartbeat_interval
                if not self.storage.failed_since_probe:  # a RUN needs a write: after one failed, wait
                    self._guarded("placing trials", self._dispatch)
                self._flush()
        finally:
            self.close()

    def close(self) -> None:
        self._flush(reload=False)
        self.journal.close()
        self._sock.close(linger=0)
        self._ctx.term()

    # ---- I/O ----

    def _read_batch(self) -> None:
        """Up to _BATCH messages, then dispatch and reply (one commit for all: a report flood needs
        big turns); after _TURN seconds already, when queued trials wait for free workers."""
        deadline = time.monotonic() + _TURN
        for _ in range(_BATCH):
            if self.scheduler.can_place and time.monotonic() > deadline:
                break
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            identity, rest = frames[0], frames[1:]
            link = self.links.get(identity)
            if link is None:
                self._guarded(f"a message from route {identity!r}", self._greet, identity, rest)
                continue
            try:
                msg = link.session.parse(rest)
            except MessageTooLarge as exc:
                self._drop(identity, exc)
                if exc.message is not None:
                    self._guarded("refusing a message too large", self._refuse_large, identity, exc)
                continue
            except AuthenticationError as exc:  # not of this session: a new HELLO on this route?
                if not self._guarded(f"a HELLO on route {identity!r}", self._greet, identity, rest, link):
                    self._drop(identity, exc)
                continue
            except ProtocolError as exc:
                self._drop(identity, exc)
                continue
            self.messages_handled += 1
            if not link.proven and not self._guarded(
                f"{link.role.value} {link.peer_id!r} joining", self._join, link
            ):
                continue
            self._handle(link, msg)
        self._drops.tick(time.monotonic())

    def _session_of(self, identity: bytes) -> Session | None:
        link = self.links.get(identity)
        return link.session if link is not None else None

    def _refuse_large(self, identity: bytes, exc: MessageTooLarge) -> None:
        """A signed message over the size limit is answered, so that nothing waits for it forever: a
        SUBMITS item or a kept message is refused (its sender fails the trial, or drops it), and a
        DONE ends its trial FAILED, saying why (its reports and files are not kept)."""
        msg: Message = exc.message
        reason = f"{exc}: pass large arguments as tensors or arrays (they travel as blobs)"
        worker, client = self.workers.get(identity), self._client_at.get(identity)
        if client is not None and msg.type is MsgType.SUBMITS:
            for sub in msg.body.items:
                self.outbox.ack(identity, Ack(sub.trial, 0, sub.seq, False, reason))
        elif worker is not None and msg.type is MsgType.DONES:
            failure = Failure(FailureKind.STOPPED, f"its DONE was too large ({exc})")
            small = [
                Done(d.trial, d.attempt, d.seq, TrialState.FAILED, failure.reason, failure)
                for d in msg.body.items
            ]
            self._take_dones(worker, small)
        elif worker is not None or client is not None:
            h = msg.header
            self.outbox.ack(identity, Ack(h.trial, h.attempt, h.seq, False, reason))

    def _drop(self, identity: bytes, exc: Exception | str) -> None:
        """A message refused unread: counted, and logged within a budget shared by all senders."""
        self._drops.drop(identity, str(exc), time.monotonic())

    # ---- sessions ----

    def _greet(self, identity: bytes, frames: list[bytes], link: Link | None = None) -> bool:
        """A message on a route without a session (or not of its session): a HELLO whose credential
        checks out opens one (answered by WELCOME, or by REFUSED when the credential may not); from an
        unknown peer, anything else gets a RESET (we restarted, or gave it up). True if it was a HELLO
        signed with the key its credential names."""
        try:
            greeting = read_hello(frames)
        except ProtocolError as exc:
            if link is None:
                try:
                    self._reset(identity, peek_header(frames).time)
                except ProtocolError:
                    self._drop(identity, exc)
            return False
        hello = greeting.hello
        if identity[:1] != b"\0":
            self._drop(identity, "a HELLO from a peer-chosen routing id (peers must not set one)")
            return False
        key = self.gate.key_for(hello.role, hello.credential, hello.issued)
        if not greeting.verify(key):
            who = f"credential {hello.credential!r}" if hello.credential else "the cluster key"
            self._drop(identity, f"a HELLO whose signature is not {who}'s, as a {hello.role.value}")
            return False
        refusal = self.gate.refusal(hello.role, hello.peer_id, hello.credential, hello.issued)
        if refusal:
            _log.warning("refused %s %r: %s", hello.role.value, hello.peer_id, refusal)
            self.outbox.raw(identity, welcome_frames(greeting, key, self.id, Refused(refusal)))
            return True
        session, nonce = accept(greeting, key, self.id, max_message_bytes=self.config.max_message_bytes)
        welcome = Welcome(
            self.config.heartbeat_interval,
            self.config.liveness,
            self.id,
            self.config.max_message_bytes,
            nonce,
        )
        self.outbox.raw(identity, welcome_frames(greeting, key, self.id, welcome))
        self._open_link(
            Link(identity, session, hello.role, hello.peer_id, hello.credential, hello.issued), greeting
        )
        return True

    def _open_link(self, link: Link, greeting: Greeting) -> None:
        """The route's session is the new one from now on; the peer joins once it uses it."""
        self._hellos[link.identity] = greeting.hello
        self.links[link.identity] = link
        unproven = [other for other in self.links.values() if not other.proven]
        if len(unproven) > _UNPROVEN:  # HELLOs nobody followed up (replays, a flood): the oldest go
            oldest = min(unproven, key=lambda other: other.opened)
            self.links.pop(oldest.identity, None)
            self._hellos.pop(oldest.identity, None)

    def _join(self, link: Link) -> bool:
        """The first message signed in a link's session came: its HELLO was the peer's own, so the
        peer joins now, as its HELLO said (a worker with what it runs, a client from its last event).
        False if it may not after all (another credential took its id since its HELLO)."""
        hello = self._hellos.pop(link.identity, None)
        if hello is None:  # (links and their HELLOs are kept and dropped together: not expected)
            self.links.pop(link.identity, None)
            self._reset(link.identity, 0.0)
            return False
        refusal = self.gate.admit(link)
        if refusal:
            self._send(link.identity, MsgType.REFUSED, Refused(refusal))
            self.links.pop(link.identity, None)
            return False
        link.proven = True
        if link.role is Role.CLIENT:
            self._join_client(link, hello)
        elif link.role is Role.WORKER:
            self._join_worker(link, hello)
        return True

    def _join_client(self, link: Link, hello: Hello) -> None:
        identity = link.identity
        old = self.clients.get(hello.peer_id)
        if old is not None and old.identity != identity:  # it reconnected: the old route is done
            self._client_at.pop(old.identity, None)
            self.links.pop(old.identity, None)
            self.outbox.forget(old.identity)
        client = self.clients[hello.peer_id] = Client(
            hello.peer_id, identity, time.monotonic() + self.config.expiry, link.sees_all
        )
        self._client_at[identity] = client
        self.outbox.forget(identity)  # this turn's events are in the journal: the replay has them, in order
        for event in self.journal.events_after(hello.peer_id, hello.last_event):
            self.outbox.event(identity, event)
        _log.info("client %s connected (replaying events after %d)", hello.peer_id, hello.last_event)

    def _join_worker(self, link: Link, hello: Hello) -> None:
        identity = link.identity
        old_worker = self.workers.get(identity)
        if old_worker is None:  # it reconnected on a new route: its trials come with it
            old_worker = next((w for w in self.workers.values() if w.id == hello.peer_id), None)
            if old_worker is not None:
                self.workers.pop(old_worker.identity, None)
                self.links.pop(old_worker.identity, None)
                self.scheduler.forget(old_worker)
        worker = Worker(
            hello.peer_id,
            identity,
            hello.host,
            hello.gpu,
            hello.pid,
            time.monotonic() + self.config.expiry,
            max_message_bytes=hello.max_message_bytes,
            slots=1 + hello.prefetch,
            credential=link.credential,
        )
        if old_worker is not None:
            worker.since, worker.trials, worker.packs = old_worker.since, old_worker.trials, old_worker.packs
            worker.last_trial, worker.last_devices = old_worker.last_trial, old_worker.last_devices
        self.workers[identity] = worker
        # what it lists is all it runs or holds: a given-up attempt not listed has ended
        worker.stopping = set()
        for running in hello.running:
            trial_id, attempt = running.trial, running.attempt
            rec = self.trials.get(trial_id)
            ours = rec is not None and rec.state is TrialState.RUNNING and rec.attempt == attempt
            if ours and rec is not None and (rec.worker == worker.id or trial_id in self._orphans):
                self._orphans.pop(trial_id, None)
                rec.worker = worker.id
                # in the worker's order: the running one, then those it holds
                if trial_id not in worker.trials:
                    worker.trials.append(trial_id)
                self.journal.update_trial(rec)
                _log.info("worker %s still runs trial %s attempt %d: adopted", worker.id, trial_id, attempt)
            else:
                worker.stopping.add((trial_id, attempt))
                cancel = Cancel("this attempt was given up")
                self._send(identity, MsgType.CANCEL, cancel, trial=trial_id, attempt=attempt)
        if old_worker is None:
            _log.info(
                "worker %s joined from %s (gpu %s, pid %d)", worker.id, worker.host, worker.gpu, worker.pid
            )

    def _reset(self, identity: bytes, sent: float) -> None:
        """Ask an unknown peer to say HELLO, once per liveness window: each RESET makes it re-send all it
        keeps, and a restarted dispatcher hears many messages from each peer before their HELLO.
        ``sent``, the time of the message it answers, lets the peer ignore one older than its HELLO."""
        if self._resets.allow(identity, time.monotonic()):
            self.outbox.raw(identity, reset_frames(sent))

    def _send(
        self, identity: bytes, type: MsgType, body: object = None, *, trial: str = "", attempt: int = 0
    ) -> None:
        self.outbox.send(identity, type, body, trial=trial, attempt=attempt)

    def _flush(self, *, reload: bool = True) -> None:
        """Send what the loop turn produced, once the journal holds it. If the commit fails, SQLite
        has rolled the turn back: nothing of it goes out, and (``reload``) the in-memory view, which
        the turn changed too, is rebuilt from the journal."""
        try:
            self.journal.commit()
        except StorageFault as fault:
            self.storage.failed(fault)
            if reload:
                self._reload()
            else:
                self.outbox = Outbox(self._session_of, self._sock)
            return
        self.outbox.flush()

    # ---- message handling ----

    def _handle(self, link: Link, msg: Message) -> None:
        """One message of a proven session, by the table of its role."""
        identity = link.identity
        expiry = time.monotonic() + self.config.expiry
        if link.role is Role.WORKER:
            worker = self.workers.get(identity)
            if worker is not None:
                worker.expiry = expiry
                self._route(self._from_worker, worker, identity, msg, "a worker")
        elif link.role is Role.CLIENT:
            client = self._client_at.get(identity)
            if client is not None:
                client.expiry = expiry
                self._route(self._from_client, client, identity, msg, "a client")
        else:
            link.opened = time.monotonic()  # an admin's link lives while it talks
            self._route(self._from_admin, link, identity, msg, "an admin")

    def _route(
        self,
        table: dict[MsgType, Callable[[P, Message], None]],
        peer: P,
        identity: bytes,
        msg: Message,
        role: str,
    ) -> None:
        handler = table.get(msg.type)
        if handler is None:
            self._drop(identity, ProtocolError(f"{msg.type.name} is not a message {role} may send"))
            return
        self._guarded(f"{msg.type.name} from peer {identity!r}", handler, peer, msg)

    @staticmethod
    def _guarded(what: str, step: Callable[..., object], *args: object) -> bool:
        """A handler or a step of the loop that fails is logged and given up; the dispatcher serves on
        (one bad message must not stop the cluster). What the step returned (False if it failed)."""
        try:
            return bool(step(*args))
        except Exception:
            _log.exception("failed: %s; dropped, serving on", what)
            return False

    def _on_status(self, link: Link, msg: Message) -> None:
        self._send(link.identity, MsgType.STATUS_REPLY, self.status())

    def _on_client_status(self, client: Client, msg: Message) -> None:
        """A client sees the workers and its own trials (the cluster key, every trial)."""
        self._send(client.identity, MsgType.STATUS_REPLY, self.status(None if client.sees_all else client.id))

    def _on_admin_bye(self, link: Link, msg: Message) -> None:
        self.links.pop(link.identity, None)

    def _on_submits(self, client: Client, msg: Message) -> None:
        """New trials, each acknowledged on its own (a re-sent one is acknowledged, not queued twice)."""
        for sub in msg.body.items:
            ack = Ack(sub.trial, 0, sub.seq)
            self._ack(client, self._stored(ack, functools.partial(self._submit, client, sub)))

    def _ack(self, peer: Worker | Client, ack: Ack | None) -> None:
        """Acknowledge (or refuse) one item; None: not yet, its sender sends it again later."""
        if ack is not None:
            self.outbox.ack(peer.identity, ack)

    def _submit(self, client: Client, sub: Submit) -> bool:
        known = self.trials.get(sub.trial)
        if known is not None and known.client != client.id:
            raise _Refused(
                f"trial id {sub.trial!r} is taken by another client: ids are unique in a cluster; "
                "leave trial_id unset (a fresh UUID) or make yours unique, e.g. prefixed with the experiment"
            )
        rec = TrialRecord(
            sub.trial,
            client.id,
            sub.name,
            TrialState.QUEUED,
            0,
            sub.max_retries,
            sub.timeout,
            sub.arch,
            trial_seed(sub.trial) if sub.seed is None else sub.seed,
            blobs=list(sub.blobs),
            pack=sub.pack,
            pack_key=_pack_key(client.id, sub.evaluator, sub.gpus) if sub.pack > 1 else "",
            gpus=sub.gpus,
        )
        if self.journal.add_trial(rec, sub.evaluator, sub.model):
            self._payloads[sub.trial] = (sub.evaluator, sub.model)
            self.trials[sub.trial] = rec
            self.scheduler.enqueue(sub.trial)  # no QUEUED event: the client's Trial starts out QUEUED
            _log.debug("trial %s (%s) QUEUED", sub.trial, sub.name or "unnamed")
        return True

    def _on_blob_put(self, client: Client, msg: Message) -> None:
        """A chunk of a client's blob; the last one is verified against the digest before it is kept."""
        chunk: FileChunk = msg.body
        ok, reason = True, ""
        try:
            if not self.blobs.has(chunk.path):
                self.blobs.write(chunk.path, chunk.offset, chunk.data)
                if chunk.last and not self.blobs.finish(chunk.path):
                    ok, reason = False, f"blob {chunk.path[:12]} did not match its digest; send it again"
                    _log.warning("%s (from client %s)", reason, client.id)
        except ValueError as exc:
            ok, reason = False, str(exc)
        except OSError as exc:
            fault = storage_fault(exc, "a blob", self.blobs.root / chunk.path)
            if fault is None:
                raise
            self.storage.failed(fault)  # unacknowledged: the client sends the chunk again
            return
        self.outbox.ack(client.identity, Ack(msg.header.trial, 0, msg.header.seq, ok, reason))

    def _on_blob_get(self, worker: Worker, msg: Message) -> None:
        """Stream one range of a blob from disk: workers pull what they lack, a window at a time."""
        req: BlobRequest = msg.body
        try:
            data = self.blobs.read(req.digest, req.offset, min(req.length, BLOB_CHUNK))
            size = self.blobs.size(req.digest)
        except (OSError, ValueError):
            missing = Ack(req.digest, 0, 0, False, f"blob {req.digest[:12]} is not on the dispatcher")
            self.outbox.ack(worker.identity, missing)
            return
        self.blobs.touch(req.digest)
        last = req.offset + len(data) >= size
        chunk = FileChunk(req.digest, req.offset, data, last)
        self._send(worker.identity, MsgType.BLOB_DATA, chunk, trial=req.digest)

    def _on_ready(self, worker: Worker, msg: Message) -> None:
        ready: Ready = msg.body
        if ready.blocked:  # it starts nothing until a plain READY: what it holds comes back unstarted
            if worker.blocked != ready.blocked:
                _log.error("worker %s takes no trials: %s", worker.id, ready.blocked)
            worker.blocked = ready.blocked
            self.scheduler.forget(worker)
            return
        blocked, worker.blocked = worker.blocked, ""
        if blocked:
            _log.warning("worker %s takes trials again", worker.id)
        if worker.trials and ready.last_run != worker.last_run:
            return  # sent before our last RUN reached it (a HELLO repeated after RESETs): it is busy now
        # (a blocked worker started none of its trials: their attempts are not spent)
        self._lose_all(
            worker, f"worker {worker.id} became ready without finishing it", unstarted=bool(blocked)
        )
        worker.trials, worker.stopping, worker.packs = [], set(), {}
        self.scheduler.became_idle(worker)

    def _current(self, worker: Worker, trial: str, attempt: int, what: str) -> TrialRecord | None:
        """The trial a worker's message is about, if that attempt is still the live one."""
        rec = self.trials.get(trial)
        if (
            rec is None
            or rec.state is not TrialState.RUNNING
            or rec.attempt != attempt
            or rec.worker != worker.id
        ):
            _log.info(
                "ignored %s for trial %s attempt %d from worker %s: not the live attempt",
                what,
                trial,
                attempt,
                worker.id,
            )
            return None
        return rec

    def _on_reports(self, worker: Worker, msg: Message) -> None:
        """Reports, each stored once and relayed to its client as an event; acknowledged by the last one."""
        reports: list[Report] = msg.body.items
        last = reports[-1]
        ack = Ack(last.trial, last.attempt, last.seq)
        self._ack(worker, self._stored(ack, lambda: self._store_reports(worker, reports)))

    def _store_reports(self, worker: Worker, reports: list[Report]) -> bool:
        """Store them in order; False (not acknowledged) at a gap: an earlier message was lost on the
        way, and the worker sends it again, then this one."""
        rec: TrialRecord | None = None
        for report in reports:
            if rec is None or (rec.id, rec.attempt) != (report.trial, report.attempt):
                rec = self._current(worker, report.trial, report.attempt, "REPORTS")
            if rec is not None and not self._store_report(rec, report):
                return False
        return True

    def _store_report(self, rec: TrialRecord, report: Report) -> bool:
        """Store the attempt's next report once; False if it is not the next (one before is missing)."""
        if report.seq <= rec.reports:
            return True  # stored before: a re-send
        if report.seq > rec.reports + 1:
            _log.info(
                "trial %s attempt %d: report %d came before report %d; waiting for the re-send",
                rec.id,
                rec.attempt,
                report.seq,
                rec.reports + 1,
            )
            return False
        seq = self.journal.add_report(rec.client, report)
        rec.reports = report.seq
        if seq:
            self._event(rec, Event(seq, report=report))
        return True

    def _on_dones(self, worker: Worker, msg: Message) -> None:
        self._take_dones(worker, msg.body.items)

    def _take_dones(self, worker: Worker, dones: list[Done]) -> None:
        """Each DONE handled and acknowledged on its own (or left for its re-send)."""
        for done in dones:
            ack = Ack(done.trial, done.attempt, done.seq)
            self._ack(worker, self._stored(ack, functools.partial(self._done, worker, done)))

    def _stored(self, ack: Ack, store: Callable[[], bool]) -> Ack | None:
        """``ack`` once ``store()`` stored the item; None when it says not yet (the sender sends it
        again); if it raised, a refusal that says why (the sender drops it, rather than re-sending
        what fails the same way), and the dispatcher goes on. A full or read-only disk is no reason
        to refuse: the journal's transaction is lost with it, so nothing of this turn is sent (the
        commit raises and the turn is dropped); the sender keeps the item."""
        try:
            if not store():
                return None
        except _Refused as exc:
            _log.warning("refused the item %s/%d/%d: %s", ack.trial, ack.attempt, ack.seq, exc)
            return Ack(ack.trial, ack.attempt, ack.seq, False, str(exc))
        except StorageFault as fault:
            self.journal.fail(fault)
            self.storage.failed(fault)
            return None
        except Exception as exc:
            _log.exception("could not handle the item %s/%d/%d; refused", ack.trial, ack.attempt, ack.seq)
            return Ack(ack.trial, ack.attempt, ack.seq, False, f"the dispatcher failed on it: {exc!r:.300}")
        return ack

    def _done(self, worker: Worker, done: Done) -> bool:
        """The attempt ended (its last reports ride along) and the worker is free for the next RUN;
        False (not acknowledged) while reports it sent before are missing: they come again first."""
        key = (done.trial, done.attempt)
        rec = self._current(worker, done.trial, done.attempt, "DONE")
        if rec is not None and done.state is not TrialState.QUEUED and not self._complete(rec, done):
            return False
        if done.trial in worker.trials and (rec is None or rec.attempt == done.attempt):
            worker.trials.remove(done.trial)  # the next one it holds, if any, starts now
            worker.packs.pop(done.trial, None)  # (a pack's slot is free once the last of it ends)
            self.scheduler.worker_done(worker)
        elif key in worker.stopping:  # a given-up attempt it was told to stop: its slot is free
            worker.stopping.discard(key)
            self.scheduler.worker_done(worker)
        if rec is None:
            return True
        if done.state is TrialState.QUEUED:
            self._given_back(rec)
            return True
        for inline in done.files:  # before the final state goes out: the client finds them there
            self.artifacts.write(rec.client, rec.id, FileChunk(inline.path, 0, inline.data, True))
        rec.devices = done.devices
        if done.devices is not None:
            worker.last_trial, worker.last_devices = rec.id, done.devices
        missing = done.report_count - rec.reports
        if missing > 0:
            reason = (
                f"reports {rec.reports + 1}-{done.report_count} of attempt {rec.attempt} never reached "
                f"the dispatcher (its worker sent {done.report_count})"
            )
            _log.error("trial %s: %s", rec.id, reason)
            self._finish(rec, lifecycle.failed(rec, Failure(FailureKind.REPORTS_LOST, reason)))
        else:
            self._finish(rec, lifecycle.finished(rec, done))
        return True

    def _complete(self, rec: TrialRecord, done: Done) -> bool:
        """The DONE's reports stored, and every report its attempt sent before: True to finish it. When
        some are missing, False, until the re-sends had time to come (three liveness windows)."""
        for report in done.reports:
            if not self._store_report(rec, report):
                break
        key = (rec.id, rec.attempt)
        if rec.reports >= done.report_count:
            self._short.pop(key, None)
            return True
        first_seen = self._short.setdefault(key, time.monotonic())
        if time.monotonic() - first_seen < 3 * self.config.expiry:
            _log.info(
                "trial %s attempt %d: DONE before reports %d-%d; waiting for their re-send",
                rec.id,
                rec.attempt,
                rec.reports + 1,
                done.report_count,
            )
            return False
        self._short.pop(key, None)
        return True  # given up waiting: _done fails it, naming the missing reports

    def _given_back(self, rec: TrialRecord) -> None:
        """A worker returned a held trial it never started: first in the queue again, no attempt spent."""
        lifecycle.given_back(rec)
        self.journal.update_trial(rec, requeue=True)
        self.scheduler.enqueue(rec.id, front=True)
        self._event_state(rec)
        _log.debug("trial %s given back unstarted: queued again", rec.id)

    def _on_file(self, worker: Worker, msg: Message) -> None:
        """A chunk of an artefact, written only for the live attempt, by the worker that runs it."""
        h = msg.header
        rec = self._current(worker, h.trial, h.attempt, "FILE")
        ok = rec is not None
        refused = "" if ok else f"attempt {h.attempt} of trial {h.trial!r} is not running on this worker"
        if rec is not None:
            try:
                refused = self.artifacts.write(rec.client, rec.id, msg.body)
            except StorageFault as fault:
                self.storage.failed(fault)  # unacknowledged: the worker sends the chunk again
                return
        self.outbox.ack(worker.identity, Ack(h.trial, h.attempt, h.seq, ok and not refused, refused))

    def _on_checkpoint(self, worker: Worker, msg: Message) -> None:
        """A chunk of the live attempt's latest checkpoint, written as a blob named by its digest: only
        once its last chunk came and the bytes match the name does it become the trial's checkpoint,
        so a torn or forged one never replaces the one kept (acknowledged with the journal's commit)."""
        h, chunk = msg.header, msg.body
        rec = self._current(worker, h.trial, h.attempt, "CHECKPOINT")
        ok, reason = rec is not None, ""
        if rec is None:
            reason = f"attempt {h.attempt} of trial {h.trial!r} is not running on this worker"
        else:
            try:
                if not self.blobs.has(chunk.path):
                    self.blobs.write(chunk.path, chunk.offset, chunk.data)
                    if chunk.last and not self.blobs.finish(chunk.path):
                        ok, reason = False, f"checkpoint {chunk.path[:12]} did not match its digest"
                if ok and chunk.last:
                    rec.checkpoint = BlobRef(chunk.path, self.blobs.size(chunk.path))
                    self.journal.set_checkpoint(rec.id, rec.attempt, rec.checkpoint)
            except ValueError as exc:  # not a digest, a chunk past its end, over the store's budget
                ok, reason = False, str(exc)
            except OSError as exc:
                fault = storage_fault(exc, "a checkpoint", self.blobs.root / chunk.path[:64])
                if fault is None:
                    raise
                self.storage.failed(fault)  # unacknowledged: the worker sends the chunk again
                return
            except StorageFault as fault:  # the journal's write: this turn is lost, the chunk re-sent
                self.storage.failed(fault)
                return
        if not ok:
            _log.warning("trial %s: refused a checkpoint chunk: %s", h.trial, reason)
        self.outbox.ack(worker.identity, Ack(h.trial, h.attempt, h.seq, ok, reason))

    def _on_client_cancel(self, client: Client, msg: Message) -> None:
        """A client cancels its own trials (the cluster key, any)."""
        h = msg.header
        rec = self.trials.get(h.trial)
        if rec is not None and rec.client != client.id and not client.sees_all:
            why = f"trial {h.trial!r} is not this client's: a client cancels only its own trials"
            _log.warning("refused a CANCEL from client %s: %s", client.id, why)
            self.outbox.ack(client.identity, Ack(h.trial, h.attempt, h.seq, False, why))
            return
        self._cancel(h.trial, msg.body.reason)
        self.outbox.ack(client.identity, Ack(h.trial, h.attempt, h.seq))

    def _cancel(self, trial_id: str, reason: str) -> None:
        rec = self.trials.get(trial_id)
        if rec is None or rec.state.finished:
            return
        was_queued = rec.state is TrialState.QUEUED
        if lifecycle.cancel(rec, reason) is TrialState.CANCELLED:
            if was_queued:
                self.scheduler.dequeue(trial_id)
            self._finish(rec, TrialState.CANCELLED)
            return
        self.journal.update_trial(rec)
        for worker in self.workers.values():
            if worker.id == rec.worker:
                self._send(worker.identity, MsgType.CANCEL, Cancel(reason), trial=rec.id, attempt=rec.attempt)

    def _on_worker_bye(self, worker: Worker, msg: Message) -> None:
        self._remove_worker(worker, "left")

    def _on_client_bye(self, client: Client, msg: Message) -> None:
        self._forget_client(client)

    def _forget_client(self, client: Client) -> None:
        if self.clients.get(client.id) is client:
            del self.clients[client.id]
        self._client_at.pop(client.identity, None)
        self.links.pop(client.identity, None)
        self.outbox.forget(client.identity)

    # ---- state changes ----

    def _remove_worker(self, worker: Worker, why: str) -> None:
        self.workers.pop(worker.identity, None)
        self.links.pop(worker.identity, None)
        self.scheduler.forget(worker)
        _log.log(logging.INFO if why == "left" else logging.WARNING, "worker %s %s", worker.id, why)
        self._lose_all(worker, f"worker lost: {worker.id} {why}")

    def _lose_all(self, worker: Worker, reason: str, *, unstarted: bool = False) -> None:
        """Its trials go back to the front of the queue in their order (held ones after the running one;
        ``unstarted``: the first one too never started, so no attempt is spent)."""
        for index in reversed(range(len(worker.trials))):
            rec = self.trials.get(worker.trials[index])
            if rec is not None and rec.state is TrialState.RUNNING and rec.worker == worker.id:
                self._lost(rec, reason, held=unstarted or index > 0)

    def _lost(self, rec: TrialRecord, reason: str, *, held: bool = False) -> None:
        """The attempt's worker is gone: queued again as a new attempt, or ended (lifecycle.lost)."""
        final_stored = self.journal.has_final(rec.id, rec.attempt)
        state = lifecycle.lost(rec, reason, held=held, final_stored=final_stored)
        if state is TrialState.QUEUED:
            self.journal.update_trial(rec, requeue=True)
            self.scheduler.enqueue(rec.id, front=True)
            self._event_state(rec)
            _log.warning("trial %s attempt %d lost (%s): re-queued", rec.id, rec.attempt, reason)
        else:
            self._finish(rec, state)

    def _finish(self, rec: TrialRecord, state: TrialState) -> None:
        """The trial has ended in ``state``: journaled, its payload dropped, its client told."""
        self.journal.update_trial(rec)
        self.journal.drop_payload(rec.id)
        self._payloads.pop(rec.id, None)
        self._short.pop((rec.id, rec.attempt), None)
        if rec.blobs or rec.checkpoint:
            needed = {b.digest for r in self.trials.values() if not r.state.finished for b in r.blobs}
            needed |= {
                r.checkpoint.digest for r in self.trials.values() if r.checkpoint and not r.state.finished
            }
            self.blobs.evict(keep=needed)
        self._orphans.pop(rec.id, None)
        self._event_state(rec)
        _log.log(  # a success is in the journal and the client's table; a log line each is noise at 1,000/s
            logging.DEBUG if state is TrialState.SUCCEEDED else logging.INFO,
            "trial %s %s (attempt %d on %s)%s",
            rec.id,
            state.value,
            rec.attempt,
            rec.worker or "no worker",
            f": {rec.reason}" if rec.reason else "",
        )

    def _event_state(self, rec: TrialRecord) -> None:
        output_dir = self.artifacts.trial_path(rec.client, rec.id)
        devices = rec.devices if rec.state.finished else None
        change = StateChange(
            rec.id, rec.attempt, rec.state, rec.worker, rec.reason, rec.failure, output_dir, devices
        )
        self._event(rec, Event(self.journal.add_state(rec.client, change), state=change))

    def _event(self, rec: TrialRecord, event: Event) -> None:
        """To the trial's client, if it is there (else its next HELLO replays it from the journal)."""
        client = self.clients.get(rec.client)
        if client is not None:
            link = self.links.get(client.identity)
            if link is not None and link.proven:  # an unproven one gets the replay when it joins
                self.outbox.event(client.identity, event)

    def _dispatch(self) -> None:
        """Queued trials to idle workers first, then round-robin to the free slots of busy ones.

        A worker given several trials in one turn gets them in one RUNS message."""
        runs: dict[bytes, list[Run]] = {}
        for placed in self.scheduler.placements(self.workers):
            worker, rec = placed.worker, self.trials[placed.trial]
            mates = [self.trials[mate] for mate in placed.mates]
            evaluator, model = self._payload(rec)
            packed = [(mate, self._payload(mate)[1]) for mate in mates]
            for started in (rec, *mates):
                lifecycle.start(started, worker.id)
                self.journal.update_trial(started)
            resume = rec.checkpoint if not mates else None  # a pack starts from the beginning
            blobs = [*rec.blobs, *(b for mate in mates for b in mate.blobs if b not in rec.blobs)]
            run = Run(
                rec.id,
                rec.attempt,
                evaluator,
                model,
                rec.timeout,
                rec.name,
                blobs=blobs if resume is None else [*blobs, resume],
                resume=resume,
                seed=rec.seed,  # the same on every attempt: a retry repeats what was lost
                mates=[Mate(m.id, m.attempt, b, m.seed, m.timeout, m.name) for m, b in packed],
                gpus=rec.gpus,
            )
            if item_bytes(run) > worker.max_message_bytes - _HEADROOM:
                for started in (rec, *mates):
                    self._too_large(worker, started, item_bytes(run))
                continue
            for started in (rec, *mates):
                self._event_state(started)
                _log.debug("trial %s RUNNING on %s (attempt %d)", started.id, worker.id, started.attempt)
            runs.setdefault(worker.identity, []).append(run)
        for recall in self.scheduler.recalls(self.workers):
            donor, trial = recall.worker, recall.trial
            cancel = Cancel(f"given back to start on an idle worker, not after {donor.trial}", give_back=True)
            self._send(
                donor.identity, MsgType.CANCEL, cancel, trial=trial, attempt=self.trials[trial].attempt
            )
        for identity, items in runs.items():
            limit = self.workers[identity].max_message_bytes // 2
            for part in batches(items, item_bytes, MAX_PREFETCH + 1, limit):  # each fits its worker
                self._send(identity, MsgType.RUNS, RunBatch(part))

    def _payload(self, rec: TrialRecord) -> tuple[bytes, bytes]:
        """A trial's evaluator and model bytes: kept since its SUBMIT, else from the journal."""
        payload = self._payloads.pop(rec.id, None)
        return payload if payload is not None else self.journal.payload(rec.id)

    def _too_large(self, worker: Worker, rec: TrialRecord, size: int) -> None:
        """A trial whose RUN would not fit in its worker's messages fails, saying what to change."""
        worker.trials.remove(rec.id)
        worker.packs.pop(rec.id, None)
        self.scheduler.worker_done(worker)
        reason = (
            f"its payload ({size} bytes) exceeds worker {worker.id}'s message limit "
            f"({worker.max_message_bytes} bytes): pass large arguments as tensors or arrays (they travel "
            "as blobs), or raise the workers' message limit"
        )
        self._finish(
            rec, lifecycle.failed(rec, Failure(FailureKind.STOPPED, reason, "PayloadTooLarge", reason))
        )

    def _beat(self, now: float) -> None:
        self._revoke(self.gate.refresh())
        for link in list(self.links.values()):  # sessions opened and never used, admins gone quiet
            if (not link.proven or link.role is Role.ADMIN) and link.opened + self.config.expiry < now:
                self.links.pop(link.identity, None)
                self._hellos.pop(link.identity, None)
        for worker in list(self.workers.values()):
            if worker.expiry < now:
                self._remove_worker(worker, f"missed heartbeats for {self.config.expiry:.1f}s")
            else:
                self._send(worker.identity, MsgType.HEARTBEAT)
        for client in list(self.clients.values()):
            if client.expiry < now:
                self._forget_client(client)
                _log.info("client %s went silent; its events wait in the journal", client.id)
            else:
                last_event = self.outbox.events_through.get(client.identity, 0)
                self._send(client.identity, MsgType.HEARTBEAT, Heartbeat(last_event))
        for trial_id, deadline in list(self._orphans.items()):
            if deadline < now:
                del self._orphans[trial_id]
                rec = self.trials[trial_id]
                if rec.state is TrialState.RUNNING:
                    self._lost(rec, f"worker {rec.worker} did not come back after a dispatcher restart")
        self._refuse_unfit(now)

    def _refuse_unfit(self, now: float) -> None:
        """A queued trial asking for more GPUs than any connected worker has fails once it has waited
        ``placement_wait`` seconds for one to join (said at once in the log), never pends silently."""
        unfit = self.scheduler.unfit(self.workers)
        for trial_id in set(self._unfit_since) - set(unfit):
            del self._unfit_since[trial_id]  # placed, cancelled, or a worker big enough came
        for trial_id in unfit:
            rec = self.trials[trial_id]
            most = max(worker.gpu_count for worker in self.workers.values())
            reason = (
                f"it asks for {rec.gpus} GPUs and no worker has that many (the most: {most}); start a "
                f"worker with them (retia worker --gpus all --gpus-per-trial {rec.gpus}), or ask for fewer"
            )
            since = self._unfit_since.setdefault(trial_id, now)
            if since == now:
                _log.warning("trial %s waits up to %.0fs: %s", trial_id, self.config.placement_wait, reason)
            if now - since >= self.config.placement_wait:
                del self._unfit_since[trial_id]
                self.scheduler.dequeue(trial_id)
                failure = Failure(FailureKind.UNPLACEABLE, reason, "PlacementError", reason)
                self._finish(rec, lifecycle.failed(rec, failure))

    def _revoke(self, revoked: list[tuple[str, int]]) -> None:
        """Cut the sessions of credentials just revoked: told REFUSED, their peers forgotten (a worker's
        trials are queued again, as when it is lost)."""
        if not revoked:
            return
        for link in list(self.links.values()):
            if not self.gate.revoked(link):
                continue
            reason = f"credential {link.credential!r} was revoked"
            self._send(link.identity, MsgType.REFUSED, Refused(reason))
            worker, client = self.workers.get(link.identity), self._client_at.get(link.identity)
            if worker is not None:
                self._remove_worker(worker, reason)
            elif client is not None:
                self._forget_client(client)
            self.links.pop(link.identity, None)
            _log.warning("cut %s %r: %s", link.role.value, link.peer_id, reason)

    # ---- status ----

    def status(self, client: str | None = None) -> StatusReply:
        """Workers and trial counts: of every trial, or of one client's."""
        counts = {state.value: 0 for state in TrialState}
        for rec in self.trials.values():
            if client is None or rec.client == client:
                counts[rec.state.value] += 1
        now = time.time()
        workers = [
            WorkerInfo(
                w.id,
                w.host,
                w.gpu,
                w.pid,
                "blocked" if w.blocked else "busy" if w.trial else "idle",
                w.trial,
                now - w.since,
                w.last_trial,
                w.last_devices,
                w.blocked,
            )
            for w in self.workers.values()
        ]
        return StatusReply(self.id, workers, counts, time.monotonic() - self._started, self.outbox.bytes_sent)


class _Refused(Exception):
    """An item the dispatcher will not take, for a reason its sender is told (an expected refusal:
    logged without a traceback)."""


def _nothing(peer: object, msg: Message) -> None:
    """A heartbeat: receiving it was the point."""


def _pack_key(client: str, evaluator: bytes, gpus: int | None) -> str:
    """What trials that pack together share: one client, the same evaluator (its bytes, which name
    its blobs by digest) and the GPUs they ask for."""
    asked = b"" if gpus is None else str(gpus).encode()
    return hashlib.blake2b(client.encode() + b"\0" + asked + b"\0" + evaluator, digest_size=16).hexdigest()
