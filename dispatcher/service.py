"""The dispatcher: one ROUTER socket, a FIFO of trials, idle workers, and the journal.

Data flow (one thread, one loop)::

    client --SUBMIT/CANCEL-->  +------------+  --RUN/CANCEL-->  worker agent
    client <--EVENTS/ACKS----  | dispatcher |  <--REPORT/DONE-- worker agent
                               +-----+------+
                                     | every change, before its ACK
                                  journal (SQLite, WAL)

Each loop turn reads a batch of messages, applies them to the in-memory state and the
journal, commits once, then sends the queued replies: one ACKS message per peer and one
EVENTS message per client for the whole batch, then RUNs. User payloads are opaque bytes
here: the dispatcher never loads them.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable

import zmq

from retia.blobs import CHUNK as BLOB_CHUNK
from retia.blobs import BlobStore
from retia.curve import secure_server, server_certificate
from retia.errors import AuthenticationError, ProtocolError
from retia.protocol import (
    Ack,
    BlobRequest,
    Cancel,
    Done,
    FileChunk,
    Hello,
    Message,
    MsgType,
    Ready,
    Report,
    Role,
    Run,
    RunBatch,
    Session,
    StateChange,
    StatusReply,
    Submit,
    TrialState,
    Welcome,
    WorkerInfo,
)

from .artifacts import ArtifactStore
from .config import DispatcherConfig
from .journal import Journal, TrialRecord
from .outbox import Outbox
from .peers import Client, Worker, pick_recalls

__all__ = ["Dispatcher"]

_log = logging.getLogger(__name__)
_BATCH = 512
_TURN = 0.005  # a burst of SUBMITs must not hold back the RUNs it could already send
_MAX_PREFETCH = 64


class Dispatcher:
    """Serves workers and clients until :meth:`stop`; state survives restarts through the journal."""

    def __init__(self, config: DispatcherConfig, key: bytes) -> None:
        self.config = config
        self.id = f"dispatcher-{socket.gethostname()}-{os.getpid()}"
        self.session = Session(key, self.id, max_message_bytes=config.max_message_bytes, reject_replays=True)
        self.journal = Journal(config.journal_path)
        self.artifacts = ArtifactStore(config.artifacts_dir)
        self.blobs = BlobStore(config.home_dir / "blobs", config.blob_budget_bytes)
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)  # a slow peer must not make the ROUTER drop its events
        self._sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes * 16)
        if config.curve:
            public, secret = server_certificate(config.home_dir)
            secure_server(self._sock, secret)
            _log.info("CurveZMQ on: peers need the public certificate %s", public)
        self._sock.bind(config.bind)
        self.address: str = self._sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.workers: dict[bytes, Worker] = {}
        self.clients: dict[str, Client] = {}
        self.trials: dict[str, TrialRecord] = {}
        self.queue: deque[str] = deque()
        self.idle: deque[bytes] = deque()
        self.prefetching: deque[bytes] = deque()  # busy workers with a free prefetch slot
        self._recalled: set[str] = set()  # held trials asked back for idle workers, not answered yet
        self._payloads: dict[str, tuple[bytes, bytes]] = {}  # submitted, not yet sent: saves a journal read
        self._rebalance_due = False
        self._orphans: dict[str, float] = {}  # RUNNING at restart: trial -> adoption deadline
        self.outbox = Outbox(self.session, self._sock)
        self._dropped: dict[bytes, int] = {}
        self._stopping = False
        self._started = time.monotonic()
        self.messages_handled = 0
        self._recover()

    # ---- lifecycle ----

    def _recover(self) -> None:
        deadline = time.monotonic() + self.config.expiry
        for rec in self.journal.trials():
            self.trials[rec.id] = rec
            if rec.state is TrialState.QUEUED:
                self.queue.append(rec.id)
            elif rec.state is TrialState.RUNNING:
                self._orphans[rec.id] = deadline
        if self.trials:
            _log.info(
                "recovered %d trials from %s: %d queued, %d running (awaiting their workers)",
                len(self.trials),
                self.config.journal_path,
                len(self.queue),
                len(self._orphans),
            )

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
        try:
            while not self._stopping:
                wait_ms = max(0.0, next_beat - time.monotonic()) * 1000
                if poller.poll(min(wait_ms, 200)):
                    self._read_batch()
                now = time.monotonic()
                if now >= next_beat:
                    self._beat(now)
                    next_beat = now + self.config.heartbeat_interval
                self._dispatch()
                self._flush()
        finally:
            self.close()

    def close(self) -> None:
        self._flush()
        self.journal.close()
        self._sock.close(linger=0)
        self._ctx.term()

    # ---- I/O ----

    def _read_batch(self) -> None:
        """Up to _BATCH messages, then dispatch and reply (one commit for all: a report flood needs big turns);
        after _TURN seconds already, when queued trials wait for free workers."""
        deadline = time.monotonic() + _TURN
        for _ in range(_BATCH):
            if self.queue and (self.idle or self.prefetching) and time.monotonic() > deadline:
                break
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=True)
            except zmq.Again:
                break
            identity, rest = frames[0], frames[1:]
            try:
                msg = self.session.parse(rest)
            except (ProtocolError, AuthenticationError) as exc:
                self._drop(identity, exc)
                continue
            self.messages_handled += 1
            self._handle(identity, msg)

    def _drop(self, identity: bytes, exc: Exception) -> None:
        count = self._dropped.get(identity, 0) + 1
        self._dropped[identity] = count
        if count <= 20 or count % 1000 == 0:  # a flood from one peer must not flood the log
            _log.warning("dropped message from peer %r (%d so far): %s", identity, count, exc)

    def _send(self, identity: bytes, type: MsgType, body: object = None, **header: object) -> None:
        self.outbox.send(identity, type, body, **header)

    def _ack(self, identity: bytes, msg: Message) -> None:
        self.outbox.ack(identity, msg.header)

    def _flush(self) -> None:
        """Send what the loop turn produced, once the journal holds it."""
        self.journal.commit()
        self.outbox.flush()

    # ---- message handling ----

    def _handle(self, identity: bytes, msg: Message) -> None:
        kind = msg.type
        if kind is MsgType.HELLO:
            self._on_hello(identity, msg.body)
        elif kind is MsgType.STATUS:
            self._send(identity, MsgType.STATUS_REPLY, self.status())
        elif kind is MsgType.SUBMIT:
            self._on_submit(identity, msg)
        elif kind is MsgType.SUBMITS:
            self._each(identity, msg, self._on_submit)
        elif kind is MsgType.BLOB_PUT:
            self._on_blob_put(identity, msg)
        elif not self._touch(identity):
            self._send(identity, MsgType.RESET)  # we do not know it (restarted, or it was declared dead)
        elif kind is MsgType.HEARTBEAT:
            pass
        elif kind is MsgType.READY:
            self._on_ready(identity, msg.body)
        elif kind is MsgType.REPORT:
            self._on_report(identity, msg)
        elif kind is MsgType.REPORTS:
            self._on_reports(identity, msg)
        elif kind is MsgType.DONE:
            self._on_done(identity, msg)
        elif kind is MsgType.DONES:
            self._each(identity, msg, self._on_done)
        elif kind is MsgType.FILE:
            self._on_file(identity, msg)
        elif kind is MsgType.BLOB_GET:
            self._on_blob_get(identity, msg.body)
        elif kind is MsgType.CANCEL:
            self._on_cancel(msg.header.trial, msg.body.reason)
            self._ack(identity, msg)
        elif kind is MsgType.BYE:
            self._on_bye(identity)
        else:
            self._drop(identity, ProtocolError(f"unexpected {kind.name} sent to the dispatcher"))

    def _each(self, identity: bytes, msg: Message, handler: Callable[[bytes, Message], None]) -> None:
        """A batch (SUBMITS, DONES): each item handled as the message it stands for."""
        try:
            items = msg.body.messages(msg.header.sender)
        except (TypeError, ValueError) as exc:
            self._drop(identity, ProtocolError(f"malformed {msg.type.name}: {exc}"))
            return
        for item in items:
            handler(identity, item)

    def _touch(self, identity: bytes) -> bool:
        expiry = time.monotonic() + self.config.expiry
        worker = self.workers.get(identity)
        if worker is not None:
            worker.expiry = expiry
            return True
        for client in self.clients.values():
            if client.identity == identity:
                client.expiry = expiry
                return True
        return False

    def _on_hello(self, identity: bytes, hello: Hello) -> None:
        expiry = time.monotonic() + self.config.expiry
        welcome = Welcome(self.config.heartbeat_interval, self.config.liveness, self.id)
        if hello.role == Role.CLIENT.value:
            self.clients[hello.peer_id] = Client(hello.peer_id, identity, expiry)
            self._send(identity, MsgType.WELCOME, welcome)
            for event in self.journal.events_after(hello.peer_id, hello.last_event):
                self.outbox.event(identity, event.kind, event.trial, event.attempt, event.seq, event.body)
            _log.info("client %s connected (replaying events after %d)", hello.peer_id, hello.last_event)
            return
        if hello.role != Role.WORKER.value:
            self._drop(identity, ProtocolError(f"unknown role {hello.role!r}"))
            return
        old = self.workers.get(identity)
        slots = 1 + min(max(0, int(hello.prefetch)), _MAX_PREFETCH)
        worker = Worker(hello.peer_id, identity, hello.host, hello.gpu, hello.pid, expiry, slots=slots)
        if old is not None:
            worker.since, worker.trials = old.since, old.trials
        self.workers[identity] = worker
        self._send(identity, MsgType.WELCOME, welcome)
        for trial_id, attempt in hello.running:
            rec = self.trials.get(trial_id)
            ours = rec is not None and rec.state is TrialState.RUNNING and rec.attempt == attempt
            if ours and rec is not None and (rec.worker == worker.id or trial_id in self._orphans):
                self._orphans.pop(trial_id, None)
                rec.worker = worker.id
                if (
                    trial_id not in worker.trials
                ):  # in the worker's order: the running one, then those it holds
                    worker.trials.append(trial_id)
                self.journal.update_trial(rec)
                _log.info("worker %s still runs trial %s attempt %d: adopted", worker.id, trial_id, attempt)
            else:
                self._send(
                    identity,
                    MsgType.CANCEL,
                    Cancel("this attempt was given up"),
                    trial=trial_id,
                    attempt=attempt,
                )
        if old is None:
            _log.info(
                "worker %s joined from %s (gpu %s, pid %d)", worker.id, worker.host, worker.gpu, worker.pid
            )

    def _on_submit(self, identity: bytes, msg: Message) -> None:
        sub: Submit = msg.body
        trial_id, client_id = msg.header.trial, msg.header.sender
        if not trial_id:
            self._send(identity, MsgType.ACK, Ack(False, "a trial id is required"), seq=msg.header.seq)
            return
        if client_id not in self.clients:
            self.clients[client_id] = Client(client_id, identity, time.monotonic() + self.config.expiry)
        rec = TrialRecord(
            trial_id,
            client_id,
            sub.name,
            TrialState.QUEUED,
            0,
            max(0, sub.max_retries),
            sub.timeout,
            sub.arch,
            blobs=[list(b) for b in sub.blobs],
        )
        if self.journal.add_trial(rec, sub.evaluator, sub.model):
            self._payloads[trial_id] = (sub.evaluator, sub.model)
            self.trials[trial_id] = rec
            self.queue.append(trial_id)  # no QUEUED event: the client's Trial starts out QUEUED
            _log.debug("trial %s (%s) QUEUED", trial_id, sub.name or "unnamed")
        self._ack(identity, msg)

    def _on_blob_put(self, identity: bytes, msg: Message) -> None:
        """A chunk of a client's blob; the last one is verified against the digest before it is kept."""
        chunk: FileChunk = msg.body
        ok, reason = True, ""
        try:
            if not self.blobs.has(chunk.path):
                self.blobs.write(chunk.path, chunk.offset, chunk.data)
                if chunk.last and not self.blobs.finish(chunk.path):
                    ok, reason = False, f"blob {chunk.path[:12]} did not match its digest; send it again"
                    _log.warning("%s (from %r)", reason, identity)
        except ValueError as exc:
            ok, reason = False, str(exc)
        self._send(identity, MsgType.ACK, Ack(ok, reason), trial=msg.header.trial, seq=msg.header.seq)

    def _on_blob_get(self, identity: bytes, req: BlobRequest) -> None:
        """Stream one range of a blob from disk: workers pull what they lack, a window at a time."""
        try:
            data = self.blobs.read(req.digest, req.offset, min(req.length, BLOB_CHUNK))
            size = self.blobs.size(req.digest)
        except (OSError, ValueError):
            self._send(
                identity,
                MsgType.ACK,
                Ack(False, f"blob {req.digest[:12]} is not on the dispatcher"),
                trial=req.digest,
            )
            return
        self.blobs.touch(req.digest)
        last = req.offset + len(data) >= size
        self._send(
            identity, MsgType.BLOB_DATA, FileChunk(req.digest, req.offset, data, last), trial=req.digest
        )

    def _on_ready(self, identity: bytes, ready: Ready) -> None:
        worker = self.workers[identity]
        if worker.trials and ready.last_run != worker.trials[-1]:
            return  # sent before our last RUN reached it (a HELLO repeated after RESETs): it is busy now
        self._lose_all(worker, f"worker {worker.id} became ready without finishing it")
        worker.trials = []
        self._became_idle(worker)

    def _current(self, identity: bytes, msg: Message) -> TrialRecord | None:
        """The trial a worker's message is about, if that attempt is still the live one."""
        worker = self.workers[identity]
        rec = self.trials.get(msg.header.trial)
        if (
            rec is None
            or rec.state is not TrialState.RUNNING
            or rec.attempt != msg.header.attempt
            or rec.worker != worker.id
        ):
            _log.info(
                "ignored %s for trial %s attempt %d from worker %s: not the live attempt",
                msg.type.name,
                msg.header.trial,
                msg.header.attempt,
                worker.id,
            )
            return None
        return rec

    def _on_report(self, identity: bytes, msg: Message) -> None:
        h = msg.header
        rec = self._current(identity, msg)
        if rec is not None and self.journal.add_report(
            h.trial, h.attempt, h.seq, msg.body.final, msg.payload
        ):
            self._event(rec, MsgType.REPORT, msg.payload)
        self._ack(identity, msg)

    def _on_reports(self, identity: bytes, msg: Message) -> None:
        """A burst of reports: each stored once and relayed to the client as its own event."""
        rec = self._current(identity, msg)
        if rec is not None:
            self._store_reports(rec, msg.body.items)
        self._ack(identity, msg)

    def _store_reports(self, rec: TrialRecord, items: list[list[object]]) -> None:
        for seq, final, value in items:
            body = self.session.pack_body(Report(bool(final), value))  # type: ignore[arg-type]
            if self.journal.add_report(rec.id, rec.attempt, int(seq), bool(final), body):  # type: ignore[call-overload]
                self._event(rec, MsgType.REPORT, body)

    def _on_done(self, identity: bytes, msg: Message) -> None:
        """The attempt ended (its last reports ride along) and the worker is free for the next RUN."""
        h, done = msg.header, msg.body
        rec = self._current(identity, msg)
        worker = self.workers[identity]
        if h.trial in worker.trials and (rec is None or rec.attempt == h.attempt):
            worker.trials.remove(h.trial)  # the next one it holds, if any, starts now
            if not worker.trials:
                self._became_idle(worker)
            else:
                self._offer_slot(worker)
        if rec is not None and done.state == TrialState.QUEUED.value:
            self._given_back(rec)
        elif rec is not None:
            self._store_reports(rec, done.reports)
            for path, data in done.files:  # before the final state goes out: the client finds them there
                self.artifacts.write(rec.client, rec.id, FileChunk(str(path), 0, bytes(data), True))
            self._finish(rec, self._outcome(rec, done))
        self._ack(identity, msg)

    def _became_idle(self, worker: Worker) -> None:
        if worker.identity not in self.idle:
            self.idle.append(worker.identity)
        self._rebalance_due = True

    def _rebalance(self) -> None:
        """Idle workers and an empty queue while busy ones hold trials they have not started: ask for
        some back (CANCEL with give_back; a worker that started one already runs it on)."""
        if self.queue or not self.idle:
            return
        holders = [w for w in self.workers.values() if len(w.trials) > 1]
        self._recalled &= {t for w in holders for t in w.trials[1:]}  # forget those answered or gone
        for donor, trial in pick_recalls(holders, self._recalled, len(self.idle) - len(self._recalled)):
            cancel = Cancel(f"given back to start on an idle worker, not after {donor.trial}", give_back=True)
            self._send(
                donor.identity, MsgType.CANCEL, cancel, trial=trial, attempt=self.trials[trial].attempt
            )

    def _given_back(self, rec: TrialRecord) -> None:
        """A worker returned a held trial it never started: first in the queue again, the attempt not spent."""
        rec.state, rec.worker, rec.attempt = TrialState.QUEUED, "", rec.attempt - 1
        self.journal.update_trial(rec, requeue=True)
        self.queue.appendleft(rec.id)
        self._event_state(rec)
        _log.debug("trial %s given back unstarted: queued again", rec.id)

    def _offer_slot(self, worker: Worker) -> None:
        """Queue a busy worker's free slot; one entry per worker, so slots fill round-robin."""
        if len(worker.trials) < worker.slots and worker.identity not in self.prefetching:
            self.prefetching.append(worker.identity)

    @staticmethod
    def _outcome(rec: TrialRecord, done: Done) -> TrialState:
        state = TrialState(done.state)
        if rec.cancel_requested and state is not TrialState.SUCCEEDED:
            state = TrialState.CANCELLED
        rec.reason, rec.exc_type, rec.message = done.reason, done.exc_type, done.message
        rec.traceback, rec.log_tail = done.traceback, done.log_tail
        return state

    def _on_file(self, identity: bytes, msg: Message) -> None:
        h = msg.header
        rec = self.trials.get(h.trial)
        ok = rec is not None and rec.attempt == h.attempt
        if rec is not None and ok:
            self.artifacts.write(rec.client, rec.id, msg.body)
        if ok:
            self._ack(identity, msg)
        else:
            self._send(identity, MsgType.ACK, Ack(False), trial=h.trial, attempt=h.attempt, seq=h.seq)

    def _on_cancel(self, trial_id: str, reason: str) -> None:
        rec = self.trials.get(trial_id)
        if rec is None or rec.state.finished:
            return
        rec.cancel_requested = True
        rec.reason = reason
        if rec.state is TrialState.QUEUED:
            self.queue.remove(trial_id)
            self._finish(rec, TrialState.CANCELLED)
            return
        self.journal.update_trial(rec)
        for worker in self.workers.values():
            if worker.id == rec.worker:
                self._send(worker.identity, MsgType.CANCEL, Cancel(reason), trial=rec.id, attempt=rec.attempt)

    def _on_bye(self, identity: bytes) -> None:
        worker = self.workers.get(identity)
        if worker is not None:
            self._remove_worker(worker, "left")
        for client in list(self.clients.values()):
            if client.identity == identity:
                del self.clients[client.id]

    # ---- state changes ----

    def _remove_worker(self, worker: Worker, why: str) -> None:
        self.workers.pop(worker.identity, None)
        if worker.identity in self.idle:
            self.idle.remove(worker.identity)
        _log.log(logging.INFO if why == "left" else logging.WARNING, "worker %s %s", worker.id, why)
        self._lose_all(worker, f"worker lost: {worker.id} {why}")

    def _lose_all(self, worker: Worker, reason: str) -> None:
        """Its trials go back to the front of the queue in their order (the held ones after the running one)."""
        for index in reversed(range(len(worker.trials))):
            rec = self.trials.get(worker.trials[index])
            if rec is not None and rec.state is TrialState.RUNNING and rec.worker == worker.id:
                self._lost(rec, reason, held=index > 0)

    def _lost(self, rec: TrialRecord, reason: str, *, held: bool = False) -> None:
        """The attempt's worker is gone: re-queue as a new attempt, or fail when retries are spent.

        A trial the worker held behind the running one is re-queued whatever its attempt count:
        it most likely never started, and it cannot have caused the loss."""
        rec.reason = reason
        if self.journal.has_final(
            rec.id, rec.attempt
        ):  # its result is in: running it again would report twice
            rec.reason = f"{reason} after its final result was stored"
            self._finish(rec, TrialState.SUCCEEDED)
        elif rec.cancel_requested:
            self._finish(rec, TrialState.CANCELLED)
        elif held or rec.attempt <= rec.max_retries:
            rec.state, rec.worker = TrialState.QUEUED, ""
            self.journal.update_trial(rec, requeue=True)
            self.queue.appendleft(rec.id)
            self._event_state(rec)
            _log.warning("trial %s attempt %d lost (%s): re-queued", rec.id, rec.attempt, reason)
        else:
            rec.exc_type = "WorkerLostError"
            rec.reason = f"{reason} (after {rec.attempt} attempts)"
            self._finish(rec, TrialState.FAILED)

    def _finish(self, rec: TrialRecord, state: TrialState) -> None:
        rec.state = state
        self.journal.update_trial(rec)
        self.journal.drop_payload(rec.id)
        self._payloads.pop(rec.id, None)
        if rec.blobs:
            needed = {b[0] for r in self.trials.values() if not r.state.finished for b in r.blobs}
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
        change = StateChange(
            rec.state.value,
            rec.attempt,
            rec.worker,
            rec.reason,
            rec.exc_type,
            rec.message,
            rec.traceback,
            rec.log_tail,
            self.artifacts.trial_path(rec.client, rec.id),
        )
        self._event(rec, MsgType.STATE, self.session.pack_body(change))

    def _event(self, rec: TrialRecord, kind: MsgType, body: bytes) -> None:
        seq = self.journal.add_event(rec.client, rec.id, rec.attempt, int(kind), body)
        client = self.clients.get(rec.client)
        if client is not None:
            self.outbox.event(client.identity, int(kind), rec.id, rec.attempt, seq, body)

    def _dispatch(self) -> None:
        """Queued trials to idle workers first, then round-robin to the free slots of busy ones.

        A worker given several trials in one turn gets them in one RUNS message."""
        runs: dict[bytes, list[list[object]]] = {}
        while self.queue and (self.idle or self.prefetching):
            identity = (self.idle or self.prefetching).popleft()
            worker = self.workers.get(identity)
            if worker is None or len(worker.trials) >= worker.slots:
                continue
            rec = self.trials[self.queue.popleft()]
            worker.trials.append(rec.id)
            self._offer_slot(worker)
            evaluator, model = self._payloads.pop(rec.id, None) or self.journal.payload(rec.id)
            rec.state, rec.attempt, rec.worker, rec.reason = (
                TrialState.RUNNING,
                rec.attempt + 1,
                worker.id,
                "",
            )
            self.journal.update_trial(rec)
            self._event_state(rec)
            runs.setdefault(identity, []).append(
                [rec.id, rec.attempt, evaluator, model, rec.timeout, rec.name, rec.blobs]
            )
            _log.debug("trial %s RUNNING on %s (attempt %d)", rec.id, worker.id, rec.attempt)
        if self._rebalance_due:
            self._rebalance_due = False
            self._rebalance()
        for identity, items in runs.items():
            if len(items) == 1:
                trial, attempt, evaluator, model, timeout, name, blobs = items[0]
                run = Run(evaluator, model, timeout, name, blobs=blobs)  # type: ignore[arg-type]
                self._send(identity, MsgType.RUN, run, trial=trial, attempt=attempt)  # type: ignore[arg-type]
            else:
                self._send(identity, MsgType.RUNS, RunBatch(items))

    def _beat(self, now: float) -> None:
        for worker in list(self.workers.values()):
            if worker.expiry < now:
                self._remove_worker(worker, f"missed heartbeats for {self.config.expiry:.1f}s")
            else:
                self._send(worker.identity, MsgType.HEARTBEAT)
        for client in list(self.clients.values()):
            if client.expiry < now:
                del self.clients[client.id]
                _log.info("client %s went silent; its events wait in the journal", client.id)
            else:
                self._send(client.identity, MsgType.HEARTBEAT)
        for trial_id, deadline in list(self._orphans.items()):
            if deadline < now:
                del self._orphans[trial_id]
                rec = self.trials[trial_id]
                if rec.state is TrialState.RUNNING:
                    self._lost(rec, f"worker {rec.worker} did not come back after a dispatcher restart")

    # ---- status ----

    def status(self) -> StatusReply:
        counts = {state.value: 0 for state in TrialState}
        for rec in self.trials.values():
            counts[rec.state.value] += 1
        now = time.time()
        workers = [
            WorkerInfo(w.id, w.host, w.gpu, w.pid, "busy" if w.trial else "idle", w.trial, now - w.since)
            for w in self.workers.values()
        ]
        return StatusReply(self.id, workers, counts, time.monotonic() - self._started, self.outbox.bytes_sent)
