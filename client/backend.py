"""The client side: ``connect(address)`` gives a :class:`Backend` to submit trials to a dispatcher.

Data flow::

    user threads --submit/cancel--> inproc queue --> I/O thread --SUBMITS/CANCEL--> dispatcher
    user threads <--Trial state, reports, callbacks-- I/O thread <--EVENTS (seq)----- dispatcher

One background thread owns the connection (a :class:`~retia.peer.Peer`). Every event from
the dispatcher carries a sequence number: the client applies each once, and after a reconnect
asks for everything after the last one it saw, so no report is lost or applied twice.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import zmq

from retia import codec
from retia.blobs import Blob
from retia.credentials import Credential, Role, cluster_credential, resolve_credential
from retia.encryption import secure_client
from retia.errors import (
    ClusterLostError,
    ConfigError,
    CredentialRefusedError,
    DispatcherLostError,
    PayloadTooLarge,
    ProtocolError,
    RetiaError,
    SubmissionRefusedError,
    TrialCancelledError,
    error_for,
)
from retia.evaluator import Evaluator, model_factory
from retia.failure import Failure, FailureKind
from retia.peer import Peer, PeerTiming
from retia.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_PACK,
    MAX_TRIAL_GPUS,
    Ack,
    BlobRef,
    Cancel,
    DeviceFacts,
    Event,
    FileChunk,
    Hello,
    Message,
    MsgType,
    Outgoing,
    StateChange,
    StatusReply,
    Submit,
    TrialState,
    id_problem,
    item_bytes,
)
from retia.reporting import Metric
from retia.seeding import check_seed, trial_seed
from retia.serializer import dump
from retia.session import Opening, Session
from retia.trace import Recipe, get_recipe, trace

from .config import ClientConfig

if TYPE_CHECKING:
    from .cluster import LocalCluster

__all__ = [
    "Backend",
    "Trial",
    "connect",
    "wait",
    "query_status",
    "check_gpus",
    "FIRST_COMPLETED",
    "ALL_COMPLETED",
]

_log = logging.getLogger(__name__)
FIRST_COMPLETED = concurrent.futures.FIRST_COMPLETED
ALL_COMPLETED = concurrent.futures.ALL_COMPLETED

_SUBMIT_BYTES_PER_MESSAGE = 1 << 20
_MAX_NAME = 256
_REFUSABLE = (MsgType.SUBMITS, MsgType.BLOB_PUT)  # a refusal of these fails the trials they carry
_FRAMING_BYTES = 4096  # version, signature, header and batch framing around one SUBMIT's fields
MiB = 1 << 20
ReportCallback = Callable[["Trial", Metric], None]
DoneCallback = Callable[["Trial"], None]


class Trial:
    """A submitted evaluation: its state, streamed reports and final result (like a Future)."""

    def __init__(
        self, backend: Backend, trial_id: str, name: str = "", arch: Any = None, seed: int | None = None
    ) -> None:
        self.id = trial_id
        self.name = name
        self.arch = arch
        self.seed = seed  # what every attempt runs under (None: submitted by an earlier process, unknown)
        self.state = TrialState.QUEUED
        self.attempt = 0
        self.worker = ""
        self.intermediates: list[Metric] = []  # of the current attempt
        self.final: Metric | None = None
        self.change: StateChange | None = None
        self.output_dir: Path | None = None
        self.submitted = time.monotonic()
        self._backend = backend
        self._all_reports: list[Metric] = []
        self._report_callbacks: list[ReportCallback] = []
        self._done_callbacks: list[DoneCallback] = []
        self._blobs: frozenset[str] = frozenset()  # digests of the blobs it needs
        self._refusal: SubmissionRefusedError | None = None  # the dispatcher refused it: failed here

    def __repr__(self) -> str:
        return f"Trial({self.id[:8]}, {self.state.value}, attempt={self.attempt})"

    def done(self) -> bool:
        return self.state.finished

    @property
    def devices(self) -> DeviceFacts | None:
        """Once it has ended: its GPUs (indices, UUIDs), peak memory and time to its first CUDA
        operation (None before, or when its process said nothing of them)."""
        return None if self.change is None else self.change.devices

    def reports(self, timeout: float | None = None) -> Iterator[Metric]:
        """Intermediate results as they arrive (a retried attempt's start again), until the trial ends."""
        index = 0
        backend = self._backend
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with backend._cond:
                more = functools.partial(self._has_more, index)
                if not backend._wait_until(more, deadline):
                    raise TimeoutError(f"no report from trial {self.id} within {timeout}s")
                batch = self._all_reports[index:]
                finished = self.done()
            index += len(batch)
            yield from batch
            if finished and index >= len(self._all_reports):
                return

    def _has_more(self, index: int) -> bool:
        return index < len(self._all_reports) or self.done()

    def result(self, timeout: float | None = None) -> Metric | None:
        """Block for the final result; raises TrialFailedError (remote traceback as cause) on failure,
        and ClusterLostError if the cluster can no longer run it (see ``Backend.lost``)."""
        backend = self._backend
        with backend._cond:
            if not backend._wait_until(self.done, None if timeout is None else time.monotonic() + timeout):
                raise TimeoutError(
                    f"trial {self.id} did not finish within {timeout}s (state {self.state.value})"
                )
        error = self.exception()
        if error is not None:
            raise error
        return self.final

    def exception(self) -> RetiaError | None:
        if self._refusal is not None:
            return self._refusal
        if self.state is TrialState.CANCELLED:
            reason = self.change.reason if self.change else ""
            return TrialCancelledError(f"trial {self.id} was cancelled{': ' + reason if reason else ''}")
        if self.state is not TrialState.FAILED or self.change is None:
            return None
        c = self.change
        failure = c.failure or Failure(FailureKind.RAISED, c.reason)
        text = f"trial {self.id} failed after {c.attempt} attempt(s): {c.reason or failure.message}"
        if failure.log_tail:
            text += "\n--- last lines of the trial log ---\n" + failure.log_tail
        return error_for(failure, text, trial_id=self.id)

    def cancel(self, reason: str = "cancelled by the client") -> None:
        self._backend._cancel(self, reason)

    def add_report_callback(self, fn: ReportCallback) -> None:
        """``fn(trial, metric)`` on each intermediate report (earlier ones first), from the I/O thread."""
        with self._backend._cond:
            earlier = list(self._all_reports)
            self._report_callbacks.append(fn)
        for value in earlier:
            fn(self, value)

    def add_done_callback(self, fn: DoneCallback) -> None:
        """``fn(trial)`` once the trial has finished (at once if it already has)."""
        with self._backend._cond:
            finished = self.done()
            if not finished:
                self._done_callbacks.append(fn)
        if finished:
            fn(self)


class Backend:
    """A connection to a dispatcher. Thread-safe; use as a context manager or call :meth:`close`."""

    def __init__(
        self,
        address: str,
        credential: Credential | bytes,
        *,
        client_id: str | None = None,
        heartbeat_interval: float = 1.0,
        liveness: int = 5,
        curve_server_key: str | Path | None = None,
        lost_after: float | None = 60.0,
    ) -> None:
        """``credential``: this client's (``retia credential issue --role client``), or the cluster key
        itself (bytes: the head node's own tools, local clusters). ``lost_after``: seconds without a
        word from the dispatcher before waits raise DispatcherLostError (the connection keeps
        retrying; None waits forever)."""
        self.config = ClientConfig(
            address,
            client_id or f"client-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            PeerTiming(heartbeat_interval, liveness, reconnect_min=0.5),
            curve_server_key,
            lost_after,
        )
        self.address = address
        self.curve_server_key = curve_server_key
        self.credential = credential if isinstance(credential, Credential) else cluster_credential(credential)
        if self.credential.role is Role.WORKER or (
            self.credential.role is Role.ADMIN and self.credential.name
        ):
            raise ConfigError(
                f"a client connects with a client credential or the cluster key, not {self.credential.label} "
                "(issue one with 'retia credential issue --role client --name NAME')"
            )
        self.client_id = self.config.client_id
        self.trials: dict[str, Trial] = {}
        self.cluster: LocalCluster | None = None  # the processes local_cluster started for this backend
        self.last_event = 0
        self._resyncing = False  # a HELLO asking for lost events went out, its WELCOME not back yet
        self._cond = threading.Condition()
        self._listeners: list[Callable[[Trial, Event], None]] = []
        self._outgoing: queue.SimpleQueue[Outgoing] = queue.SimpleQueue()
        self._seq = 0
        self._uploaded: set[str] = set()
        self._kinds: dict[int, MsgType] = {}  # seq -> type of a kept SUBMITS item or BLOB_PUT, until ACKed
        self._max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES  # the dispatcher's, once WELCOME says it
        self._heard_at = time.monotonic()  # when the dispatcher last said anything
        self._silence: DispatcherLostError | None = None  # set while it has been silent past lost_after
        # set by local_cluster's watch while its processes are gone, or for good when the dispatcher
        # refuses our credential
        self._cluster_error: ClusterLostError | None = None
        self._ctx = zmq.Context()
        self._wake_addr = f"inproc://retia-client-{id(self)}"
        self._wake_pull = self._ctx.socket(zmq.PULL)
        self._wake_pull.bind(self._wake_addr)
        self._wake_push = self._ctx.socket(zmq.PUSH)
        self._wake_push.connect(self._wake_addr)
        self._wake_lock = threading.Lock()
        self._closed = threading.Event()
        self._welcomed = threading.Event()
        self._status_wanted = threading.Event()  # status() asks; the I/O thread sends STATUS
        self._status_awaited = False  # a status() waits: asked again in a new session (a RESET lost it)
        self._status_reply: StatusReply | None = None
        self._thread = threading.Thread(target=self._io_loop, name="retia-client-io", daemon=True)
        self._thread.start()

    # ---- public API ----

    def submit(
        self,
        model: Any,
        evaluator: Evaluator,
        *,
        arch: dict[str, Any] | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        name: str = "",
        trial_id: str | None = None,
        seed: int | None = None,
        pack: int = 1,
        gpus: int | None = None,
    ) -> Trial:
        """Queue one evaluation of ``model`` (a class, a factory, or a ModelSpace with ``arch``).

        ``trial_id`` makes the submission idempotent: submitting an id the dispatcher already
        has (after a crash of this process, say) returns that trial instead of running it again
        (under the seed it was first submitted with).
        ``seed`` (0 to ``retia.seeding.SEED_MAX``) seeds the model's initialization and random
        operations on every attempt, wherever it runs (:mod:`retia.seeding`); None: the trial's own,
        ``trial_seed(trial_id)``. It is ``Trial.seed`` from the start.
        ``pack`` and ``gpus``: see :meth:`submit_many`.
        """
        return self.submit_many(
            [model],
            evaluator,
            archs=[arch],
            timeout=timeout,
            max_retries=max_retries,
            names=[name],
            trial_ids=[trial_id],
            seeds=[seed],
            pack=pack,
            gpus=gpus,
        )[0]

    def submit_many(
        self,
        models: Sequence[Any],
        evaluator: Evaluator,
        *,
        archs: Sequence[dict[str, Any] | None] | None = None,
        timeout: float | None = None,
        max_retries: int = 2,
        names: Sequence[str] | None = None,
        trial_ids: Sequence[str | None] | None = None,
        seeds: Sequence[int | None] | None = None,
        pack: int = 1,
        gpus: int | None = None,
    ) -> list[Trial]:
        """Queue several evaluations with one evaluator, serialized once (a strategy's batch of candidates).

        ``archs``, ``names``, ``trial_ids`` and ``seeds``, when given, have one entry per model (as
        ``submit``); they are all checked before anything is queued.
        ``pack`` (1 to 64): up to that many of these trials (and others of this client with the same
        evaluator) train together in one process on the same batches (:mod:`retia.packing`), each
        with its own seed, reports, result, retries and cancellation: for small models, whose
        training is mostly Lightning's per-step cost. An evaluator that cannot be packed (a
        ``FunctionalEvaluator``) runs its trials one per process, with a warning saying why.
        ``gpus``: each trial runs on a worker with at least that many GPUs and sees that many of them
        (``CUDA_VISIBLE_DEVICES``; ``retia worker --gpus all --gpus-per-trial N`` makes such workers);
        0: on any worker, seeing none (CPU); None (the default): on any worker, seeing all it has. A
        trial no connected worker can hold fails with PlacementError after the dispatcher's
        ``--placement-wait`` (60 s).
        """
        if self._closed.is_set():
            raise RetiaError("this backend is closed; connect again")
        if not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator must be a retia Evaluator, got {type(evaluator).__name__}")
        _check_limits(timeout, max_retries)
        check_gpus(gpus, "gpus")
        pack = pack_size(pack, evaluator)
        count = len(models)
        arch_list: list[dict[str, Any] | None] = list(archs) if archs is not None else [None] * count
        name_list: list[str] = list(names) if names is not None else [""] * count
        id_list: list[str | None] = list(trial_ids) if trial_ids is not None else [None] * count
        seed_list: list[int | None] = list(seeds) if seeds is not None else [None] * count
        if not len(arch_list) == len(name_list) == len(id_list) == len(seed_list) == count:
            raise ValueError(f"archs, names, trial_ids and seeds need one entry per model ({count})")
        ids = [uuid.uuid4().hex if trial_id is None else trial_id for trial_id in id_list]
        for arch, name, trial_id in zip(arch_list, name_list, ids):
            _check_arch(arch)
            _check_names(name, trial_id)
        what = "seed" if count == 1 else "seeds[{}]"
        trial_seeds = [
            trial_seed(trial_id) if seed is None else check_seed(seed, what.format(i))
            for i, (seed, trial_id) in enumerate(zip(seed_list, ids))
        ]
        searched = evaluator.search_space()  # its choices take their values from each arch
        shared: tuple[bytes, dict[str, Blob]] | None = None if searched else _dumped(evaluator)
        bodies: list[tuple[Submit, dict[str, Blob]]] = []
        for model, arch, name, trial_id, seed in zip(models, arch_list, name_list, ids, trial_seeds):
            model_arch, dumped = arch, shared
            if dumped is None:
                if arch is None:
                    raise ConfigError(
                        f"the evaluator holds choice(s) {searched!r}: pass arch= with a value for each "
                        "(or submit evaluator.freeze({label: value, ...}))"
                    )
                model_arch, dumped = _model_part(model, arch, searched), _dumped(evaluator.freeze(arch))
            evaluator_bytes, evaluator_blobs = dumped
            blobs = dict(evaluator_blobs)
            recipe = _model_recipe(model, model_arch)
            model_bytes = dump(recipe, name="model", blobs=blobs)
            refs = [BlobRef(b.digest, b.size) for b in blobs.values()]
            body = Submit(
                trial_id,
                0,
                evaluator_bytes,
                model_bytes,
                arch,
                timeout,
                max_retries,
                name,
                refs,
                seed,
                pack,
                gpus,
            )
            self._check_size(body, evaluator, recipe)  # before anything is queued
            bodies.append((body, blobs))
        trials = []
        with self._cond:
            for (body, blobs), arch, name in zip(bodies, arch_list, name_list):
                trial = self.trials.get(body.trial)
                if trial is None or trial._refusal is not None:  # a refused one may be submitted again
                    trial = Trial(self, body.trial, name, arch, body.seed)
                elif (
                    trial.seed is None
                ):  # heard of from an earlier process: the dispatcher keeps its first seed
                    trial.seed = body.seed
                trial.name, trial.arch, trial._blobs = name, arch, frozenset(blobs)
                self.trials[trial.id] = trial
                trials.append(trial)
        messages: list[tuple[MsgType, Any, str]] = []
        for body, blobs in bodies:
            for blob in blobs.values():
                messages += self._upload(blob)  # once per backend, before the SUBMIT that needs it
            messages.append((MsgType.SUBMITS, body, body.trial))
        self._enqueue_many(messages)  # together: a CANCEL after a refused blob comes after its SUBMIT
        return trials

    def _upload(self, blob: Blob) -> list[tuple[MsgType, Any, str]]:
        """The BLOB_PUT chunks of a blob the dispatcher has not been sent yet (none if it has)."""
        if blob.digest in self._uploaded:
            return []
        self._uploaded.add(blob.digest)
        pieces = list(blob.chunks()) or [(0, memoryview(b""))]
        return [
            (MsgType.BLOB_PUT, FileChunk(blob.digest, offset, bytes(data), i == len(pieces) - 1), blob.digest)
            for i, (offset, data) in enumerate(pieces)
        ]

    def _check_size(self, body: Submit, evaluator: Evaluator, recipe: Any) -> None:
        """PayloadTooLarge, naming the argument, for a SUBMIT the dispatcher would drop for its size."""
        fields = dataclasses.replace(body, evaluator=b"", model=b"")
        size = item_bytes(body) + len(codec.pack(fields)) + _FRAMING_BYTES
        limit = self._max_message_bytes
        if size <= limit:
            return
        name = "evaluator" if len(body.evaluator) >= len(body.model) else "model"
        path, part = _largest_argument(name, evaluator if name == "evaluator" else recipe)
        trial = f"trial {body.trial}" + (f" ({body.name})" if body.name else "")
        raise PayloadTooLarge(
            f"{trial} is {size / MiB:.1f} MiB serialized, over the dispatcher's {limit / MiB:.1f} MiB "
            f"message limit: its {path} takes {part / MiB:.1f} MiB inline. Build it with "
            "retia.trace so the worker re-creates it, load it inside fit, or pass the data as a tensor "
            "or numpy array (those travel as blobs, in chunks).",
            path,
            size,
        )

    def status(self, timeout: float = 5.0) -> StatusReply:
        """The dispatcher's workers and the counts of this client's trials (every trial's, with the
        cluster key), asked over this connection."""
        with self._cond:
            self._status_reply = None
            self._status_awaited = True
        self._status_wanted.set()
        self._wake()
        with self._cond:
            answered = self._wait_until(lambda: self._status_reply is not None, time.monotonic() + timeout)
            self._status_awaited = False
            if not answered:
                raise RetiaError(f"no status from the dispatcher at {self.address} within {timeout}s")
            assert self._status_reply is not None
            return self._status_reply

    def add_listener(self, fn: Callable[[Trial, Event], None]) -> None:
        """``fn(trial, event)`` for every event (a report or a state change), from the I/O thread."""
        self._listeners.append(fn)

    @property
    def lost(self) -> ClusterLostError | None:
        """Why trials cannot run now (a ClusterLostError: the dispatcher or every local worker is gone),
        or None. Waits raise it; it clears by itself if the dispatcher answers again."""
        return self._cluster_error or self._silence

    def wait_connected(self, timeout: float = 30.0) -> None:
        welcomed = self._welcomed.wait(timeout)
        if isinstance(self._cluster_error, CredentialRefusedError):
            raise self._cluster_error
        if not welcomed:
            raise RetiaError(
                f"no answer from a dispatcher at {self.address} within {timeout}s (is it running? same key?)"
            )

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake()
        self._thread.join(timeout=10)
        self._wake_push.close(linger=0)
        self._wake_pull.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- internals shared with Trial and local_cluster ----

    def _wait_until(self, ready: Callable[[], bool], deadline: float | None) -> bool:
        """With ``_cond`` held: wait until ``ready()`` (True) or ``deadline`` passes (False); while not
        ready, raise ``lost`` as soon as it is set."""
        while not ready():
            error = self.lost
            if error is not None:
                raise error
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            self._cond.wait(remaining)
        return True

    def _set_cluster_error(self, error: ClusterLostError | None) -> None:
        """Set (or clear) what local_cluster's watch found, and wake every waiter to raise it."""
        with self._cond:
            self._cluster_error = error
            self._cond.notify_all()

    def _cancel(self, trial: Trial, reason: str) -> None:
        if not trial.done():
            self._enqueue(MsgType.CANCEL, Cancel(reason), trial.id)

    def _enqueue(self, type: MsgType, body: Any, trial_id: str) -> None:
        self._enqueue_many([(type, body, trial_id)])

    def _enqueue_many(self, messages: list[tuple[MsgType, Any, str]]) -> None:
        with self._wake_lock:
            for type, body, trial_id in messages:
                self._seq += 1
                if type is MsgType.SUBMITS:
                    body = dataclasses.replace(body, seq=self._seq)
                if type in _REFUSABLE:
                    self._kinds[self._seq] = type
                self._outgoing.put(Outgoing(type, body, trial_id, 0, self._seq))
        self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            try:
                self._wake_push.send(b"", zmq.NOBLOCK)
            except (zmq.Again, zmq.ZMQError):
                pass

    # ---- the I/O thread ----

    def _io_loop(self) -> None:
        peer = Peer(
            self._ctx,
            self.address,
            self.credential,
            self.client_id,
            self._hello,
            timing=self.config.timing,
            curve_server_key=self.curve_server_key,
            max_bytes=_SUBMIT_BYTES_PER_MESSAGE,
        )
        peer.connect()
        poller = zmq.Poller()
        poller.register(self._wake_pull, zmq.POLLIN)
        registered = peer.sock
        poller.register(registered, zmq.POLLIN)
        try:
            while not self._closed.is_set():
                if peer.sock is not registered:  # reconnected: a new socket
                    poller.unregister(registered)
                    registered = peer.sock
                    poller.register(registered, zmq.POLLIN)
                timeout_ms = max(0, int((peer.next_deadline() - time.monotonic()) * 1000))
                ready = dict(poller.poll(timeout_ms))
                if self._wake_pull in ready:
                    while self._wake_pull.poll(0):
                        self._wake_pull.recv()
                self._send_outgoing(peer)
                if self._status_wanted.is_set() and peer.open:
                    self._status_wanted.clear()
                    peer.send(MsgType.STATUS)
                if registered in ready:
                    messages = peer.receive()
                    if messages:
                        self._heard(time.monotonic())
                    for msg in messages:
                        try:
                            self._handle(peer, msg)
                        except Exception:  # the I/O thread must live on: every wait depends on it
                            _log.exception("failed on %s from the dispatcher; dropped", msg.type.name)
                now = time.monotonic()
                peer.tick(now)
                self._check_silence(now)
        finally:
            peer.close(linger_ms=100)

    def _heard(self, now: float) -> None:
        self._heard_at = now
        if self._silence is not None:
            _log.info("the dispatcher at %s answers again", self.address)
            with self._cond:
                self._silence = None

    def _check_silence(self, now: float) -> None:
        """Past ``lost_after`` seconds without a word, every wait raises DispatcherLostError."""
        lost_after = self.config.lost_after
        silent = now - self._heard_at
        if lost_after is None or self._silence is not None or silent <= lost_after:
            return
        error = DispatcherLostError(
            f"no word from the dispatcher at {self.address} for {silent:.0f}s (lost_after={lost_after}s): "
            "it crashed or stopped, or the network is down. Restart it on the same journal (what it "
            "acknowledged is kept) and wait again: this client keeps reconnecting. "
            "Connect with lost_after=None to wait forever."
        )
        _log.error("%s", error)
        with self._cond:
            self._silence = error
            self._cond.notify_all()

    def _hello(self) -> Hello:
        return Hello(
            Role.CLIENT, self.client_id, socket.gethostname(), os.getpid(), last_event=self.last_event
        )

    def _send_outgoing(self, peer: Peer) -> None:
        """What user threads queued, in order, kept until acknowledged."""
        messages: list[Outgoing] = []
        while True:
            try:
                messages.append(self._outgoing.get_nowait())
            except queue.Empty:
                break
        if messages:
            peer.keep(messages)

    def _handle(self, peer: Peer, msg: Message) -> None:
        if msg.type is MsgType.ACKS:
            for ack in msg.body.items:
                kind = self._kinds.pop(ack.seq, None)
                if not ack.ok:
                    self._refused(kind, ack)
        elif msg.type is MsgType.WELCOME:
            self._resyncing = False  # the replay of what we lack follows, in order
            self._max_message_bytes = msg.body.max_message_bytes
            self._welcomed.set()
            with self._cond:  # a STATUS sent in the session this one replaces got a RESET, no reply
                if self._status_awaited and self._status_reply is None:
                    self._status_wanted.set()
        elif msg.type is MsgType.RESET:  # the dispatcher restarted: say HELLO, re-send what it lacks
            peer.reset(msg.body)
        elif msg.type is MsgType.STATUS_REPLY:
            with self._cond:
                self._status_reply = msg.body
                self._cond.notify_all()
        elif msg.type is MsgType.REFUSED:  # for good: waits raise it (a new credential needs a new client)
            error = CredentialRefusedError(
                f"the dispatcher at {self.address} refused {self.credential.label}: {msg.body.reason}"
            )
            self._set_cluster_error(error)
            self._welcomed.set()
        elif msg.type is MsgType.EVENTS:
            self._apply([event for event in msg.body.items if self._is_new(peer, event)])
        elif msg.type is MsgType.HEARTBEAT and msg.body.last_event > self.last_event:
            self._resync(peer, f"the dispatcher sent events up to {msg.body.last_event}")

    def _refused(self, kind: MsgType | None, ack: Ack) -> None:
        """A refused SUBMITS item fails its trial here; a refused blob fails (and cancels) the trials
        that need it, and is uploaded again by the next submit that does."""
        _log.error("the dispatcher refused a message about %s: %s", ack.trial, ack.reason)
        if kind is MsgType.SUBMITS:
            trial = self.trials.get(ack.trial)
            if trial is not None and not trial.done():
                self._fail_refused(
                    [trial], f"the dispatcher refused its submission: {ack.reason}", ack.reason
                )
        elif kind is MsgType.BLOB_PUT:
            self._uploaded.discard(ack.trial)
            with self._cond:
                needing = [t for t in self.trials.values() if ack.trial in t._blobs and not t.done()]
            text = f"the dispatcher refused blob {ack.trial[:12]} it needs: {ack.reason}"
            self._fail_refused(needing, text, ack.reason)
            for trial in needing:  # stored already: no worker should try it without its blob
                self._enqueue(MsgType.CANCEL, Cancel(text), trial.id)

    def _fail_refused(self, trials: list[Trial], text: str, reason: str) -> None:
        """Fail trials the dispatcher refused, here and at once, as if it had said FAILED."""
        events = []
        for trial in trials:
            trial._refusal = SubmissionRefusedError(
                f"trial {trial.id}: {text}", trial_id=trial.id, reason=reason
            )
            events.append(
                Event(0, state=StateChange(trial.id, trial.attempt, TrialState.FAILED, reason=text))
            )
        self._apply(events)

    def _is_new(self, peer: Peer, event: Event) -> bool:
        """The next event (a replay after a reconnect repeats what came before), and a real metric.

        Events are numbered 1, 2, 3, ... per client: one after a gap means some were lost on the
        way (a full send queue), so they are asked for again, in order, from the journal."""
        if event.seq <= self.last_event:
            return False
        if event.seq > self.last_event + 1:
            self._resync(peer, f"event {event.seq} came after {self.last_event}")
            return False
        self.last_event = event.seq
        if event.report is not None:
            try:
                event.report.metric  # noqa: B018 - unpacked (and checked) once, here
            except ProtocolError as exc:
                _log.warning("dropped a report of trial %s: %s", event.report.trial, exc)
                return False
        return True

    def _resync(self, peer: Peer, why: str) -> None:
        """Say HELLO again with the last event applied: the dispatcher replays the rest in order."""
        if not self._resyncing:
            self._resyncing = True
            _log.warning("events lost on the way (%s); asking for them again", why)
            peer.say_hello()

    def _apply(self, events: list[Event]) -> None:
        """Events in order, under one lock and one wake-up of the waiting threads; then the callbacks."""
        callbacks: list[Callable[[], None]] = []
        with self._cond:
            for event in events:
                callbacks += self._apply_one(event)
            self._cond.notify_all()
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a user's callback must not kill the I/O thread
                _log.exception("trial callback failed")

    def _apply_one(self, event: Event) -> list[Callable[[], None]]:
        callbacks: list[Callable[[], None]] = []
        trial_id = event.trial
        trial = self.trials.get(trial_id)
        if trial is None:  # a trial submitted by an earlier process with this client id
            trial = self.trials[trial_id] = Trial(self, trial_id)
        elif trial._refusal is not None and event.seq:  # failed here; what the dispatcher says later is moot
            return callbacks
        if event.report is not None:
            value = event.report.metric
            if event.report.final:
                trial.final = value
            else:
                trial.intermediates.append(value)
                trial._all_reports.append(value)
                callbacks += [functools.partial(fn, trial, value) for fn in trial._report_callbacks]
        elif event.state is not None:
            change: StateChange = event.state
            state = change.state
            if state is TrialState.RUNNING and change.attempt != trial.attempt:
                trial.intermediates = []
            trial.state, trial.attempt = state, change.attempt
            trial.worker, trial.change = change.worker, change
            if change.output_dir and (trial.output_dir is None or str(trial.output_dir) != change.output_dir):
                trial.output_dir = Path(change.output_dir)
            if state.finished:
                callbacks += [functools.partial(fn, trial) for fn in trial._done_callbacks]
                trial._done_callbacks.clear()
        callbacks += [functools.partial(fn, trial, event) for fn in self._listeners]
        return callbacks


def connect(
    address: str | None = None,
    key: bytes | str | None = None,
    key_file: str | Path | None = None,
    *,
    credential: Credential | str | Path | None = None,
    timeout: float = 30.0,
    **kwargs: Any,
) -> Backend:
    """Connect to a running dispatcher as ``credential`` (a client credential or its file; its address
    is the default), else ``$RETIA_CREDENTIAL``'s, else with the cluster key (``key``, ``key_file``,
    ``$RETIA_KEY`` or ~/.retia's)."""
    resolved = resolve_credential(credential, key, key_file)
    address = address or resolved.address
    if not address:
        raise ConfigError(
            f"no dispatcher address: pass one (e.g. tcp://head:5555); {resolved.label} names none"
        )
    backend = Backend(address, resolved, **kwargs)
    try:
        backend.wait_connected(timeout)
    except RetiaError:
        backend.close()
        raise
    return backend


def wait(
    trials: Iterable[Trial], timeout: float | None = None, return_when: str = ALL_COMPLETED
) -> tuple[set[Trial], set[Trial]]:
    """Like ``concurrent.futures.wait``: (done, not_done) once the condition holds or time is up.

    Raises ClusterLostError (``Backend.lost``) while it does not hold and the cluster cannot run trials."""
    pending = list(trials)
    if not pending:
        return set(), set()
    backend = pending[0]._backend
    deadline = None if timeout is None else time.monotonic() + timeout

    def ready() -> bool:
        finished = sum(t.done() for t in pending)
        return finished == len(pending) if return_when == ALL_COMPLETED else finished > 0

    with backend._cond:
        backend._wait_until(ready, deadline)
        done = {t for t in pending if t.done()}
    return done, set(pending) - done


def query_status(
    address: str,
    credential: Credential | bytes,
    *,
    timeout: float = 5.0,
    curve_server_key: str | Path | None = None,
) -> StatusReply:
    """One STATUS round trip on a short-lived admin session (the cluster key or an admin credential)."""
    cred = credential if isinstance(credential, Credential) else cluster_credential(credential)
    if cred.role is not Role.ADMIN:
        raise ConfigError(
            f"the whole cluster's status needs an admin credential or the cluster key, not {cred.label}; "
            "a client sees its own trials with Backend.status()"
        )
    sender = f"status-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    opening = Opening(cred, sender)
    session: Session | None = None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_server_key is not None:
        secure_client(sock, curve_server_key)
    elif cred.server_key:
        secure_client(sock, cred.server_key.encode())
    try:
        sock.connect(address)
        sock.send_multipart(opening.hello_frames(Hello(Role.ADMIN, sender)))
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not sock.poll(int(remaining * 1000)):
                break
            frames = sock.recv_multipart()
            try:
                msg = opening.answer(frames) if session is None else session.parse(frames)
            except RetiaError:
                continue  # not for this session (a RESET, say): the deadline bounds the wait
            if msg.type is MsgType.REFUSED:
                raise CredentialRefusedError(
                    f"the dispatcher at {address} refused {cred.label}: {msg.body.reason}"
                )
            if msg.type is MsgType.WELCOME:
                session = opening.session(msg.body)
                sock.send_multipart(session.frames(MsgType.STATUS))
            elif isinstance(msg.body, StatusReply):
                return msg.body
        raise RetiaError(
            f"no status from a dispatcher at {address} within {timeout}s (is it running? the right key "
            "or credential? if it encrypts, does the credential carry its public key, or pass "
            "--curve-server-key?)"
        )
    finally:
        sock.close()


def pack_size(pack: Any, evaluator: Evaluator) -> int:
    """The pack size to submit with: ``pack``, checked (1 to MAX_PACK, else a ConfigError); 1, with
    a warning saying why, for an evaluator that cannot share its process."""
    if isinstance(pack, bool) or not isinstance(pack, int) or not 1 <= pack <= MAX_PACK:
        raise ConfigError(f"pack must be an integer from 1 to {MAX_PACK}, got {pack!r}")
    size: int = pack
    if size == 1:
        return 1
    reason = evaluator.unpackable()
    if reason:
        _log.warning("these trials run one per process, not in packs of %d: %s", size, reason)
        return 1
    return size


def _check_limits(timeout: Any, max_retries: Any) -> None:
    """What the dispatcher would refuse, refused here with the reason (a refused SUBMITS is never stored)."""
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf
    ):
        raise ConfigError(f"timeout must be a positive number of seconds or None, got {timeout!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= 1000:
        raise ConfigError(f"max_retries must be an integer from 0 to 1000, got {max_retries!r}")


def check_gpus(gpus: Any, what: str) -> int | None:
    """A trial's GPU request: None, or a whole number from 0 to MAX_TRIAL_GPUS."""
    if gpus is not None and (
        isinstance(gpus, bool) or not isinstance(gpus, int) or not 0 <= gpus <= MAX_TRIAL_GPUS
    ):
        raise ConfigError(
            f"{what} must be None (what the worker has), 0 (CPU) or a number of GPUs up to "
            f"{MAX_TRIAL_GPUS}, got {gpus!r}"
        )
    return gpus


def _check_names(name: Any, trial_id: Any) -> None:
    """A trial's name is text for people; its id names files on the workers and the head node."""
    if not isinstance(name, str) or len(name) > _MAX_NAME:
        raise ConfigError(f"name must be a string of at most {_MAX_NAME} characters, got {name!r:.80}")
    if problem := id_problem(trial_id, "trial_id"):
        raise ConfigError(problem)


def _check_arch(arch: Any) -> None:
    """An architecture travels as JSON-able data (it is kept for bookkeeping and shown in results)."""
    try:
        codec.check_json(arch)
    except ProtocolError:
        raise TypeError(
            f"arch must be a JSON-able dict (str keys; numbers, strings, bools, lists), got {arch!r:.200}"
        ) from None


def _dumped(evaluator: Evaluator) -> tuple[bytes, dict[str, Blob]]:
    """An evaluator's bytes and the blobs they refer to."""
    blobs: dict[str, Blob] = {}
    return dump(evaluator, name="evaluator", blobs=blobs), blobs


def _model_part(model: Any, arch: dict[str, Any], searched: Mapping[str, Any]) -> dict[str, Any] | None:
    """The labels of ``arch`` the model takes: all but the evaluator's own (a label both use goes to
    both); None when that leaves nothing for a model that is no space (a search of the evaluator's
    arguments alone)."""
    is_space = hasattr(model, "search_space")
    own = set(model.search_space()) if is_space and not isinstance(model, type) else set()
    part = {label: value for label, value in arch.items() if label not in searched or label in own}
    return part if part or is_space else None


def _model_recipe(model: Any, arch: dict[str, Any] | None) -> Any:
    """What to ship for the model: the factory itself, or (space recipe, arch) for a ModelSpace."""
    if arch is None:
        if hasattr(model, "search_space") and not isinstance(model, type):
            raise TypeError("a ModelSpace instance needs arch=: pass the architecture dict to evaluate")
        return model_factory(model)
    recipe = get_recipe(model) if not isinstance(model, type) else Recipe(model)
    if recipe is None:
        raise TypeError(f"arch= needs a ModelSpace instance or class, got {type(model).__name__}")
    from retia.arch import FrozenModel

    return trace(FrozenModel)(space=recipe.target, arch=arch, args=recipe.args, kwargs=recipe.kwargs)


def _largest_argument(name: str, obj: Any) -> tuple[str, int]:
    """The argument of ``obj`` (one level into its recipe) that serializes largest: (its path, bytes)."""
    recipe = get_recipe(obj)
    parts: list[tuple[str, Any]] = [(name, obj)]
    if recipe is not None and (recipe.args or recipe.kwargs):
        parts = [(f"{name}[{i}]", v) for i, v in enumerate(recipe.args)]
        parts += [(f"{name}.{k}", v) for k, v in recipe.kwargs.items()]
    sizes = [(path, len(dump(value, name=path, blobs={}))) for path, value in parts]
    return max(sizes, key=lambda pair: pair[1])
