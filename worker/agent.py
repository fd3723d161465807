"""The worker agent: owns the connection, supervises one trial process at a time.

Data flow::

    dispatcher --RUNS/CANCEL/HEARTBEAT--> agent --process strategy--> trial process
    dispatcher <--REPORTS/FILE/DONES----- agent <--pipe messages----- trial process

The agent never loads a payload: the trial process does. Its connection is a
:class:`~retia.peer.Peer`, which keeps reports, artefact chunks and DONEs until acknowledged
and re-sends them after a reconnect. A DONE carries the reports read in the same loop turn
and doubles as READY, so a short trial costs one message each way. With ``--prefetch N`` the
agent holds up to N trials beyond the running one; with ``--reuse-process`` (see
:mod:`retia.worker.processes`) up to 8 of them queue in the child, which runs them back to
back, and the DONEs of one loop turn go out in one DONES message.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import socket
import time
from collections import deque
from typing import Any

import zmq

from retia.artifact_paths import open_beneath
from retia.blobs import BlobStore
from retia.checkpoint import CHECKPOINT_FILE
from retia.credentials import Credential, Role
from retia.errors import ConfigError
from retia.failure import Failure, FailureKind
from retia.peer import Peer
from retia.protocol import (
    Done,
    Hello,
    InlineFile,
    Message,
    MsgType,
    Outgoing,
    Ready,
    ReportBatch,
    Run,
    TrialAttempt,
    TrialState,
    batches,
    item_bytes,
)

from . import pipe, runner
from .config import WorkerConfig
from .fetch import BlobFetcher
from .gpu_memory import guard_for
from .isolation import file_access_of, secure_worker_home
from .packed import MateSpec
from .processes import Exiting, reap, strategy_for
from .trial import CheckpointUpload, RunningTrial, Upload, alive, pick_artifacts, set_policy

__all__ = ["Agent"]

_log = logging.getLogger(__name__)
_CHUNK = 1 << 20
_INLINE = 64 << 10  # artefacts up to this much in all ride inside DONE instead of FILE messages
_MAX_BATCH = 512
_REPORT_BYTES_PER_MESSAGE = 1 << 20
_INLINE_REPORT_BYTES = 256 << 10  # a DONE carries the last reports up to this much; more go before it
_BLOB_PATIENCE = 2  # liveness windows without data for a blob before it is asked for again
_BACKLOG = 64  # messages the socket has not taken: past this, the agent stops reading its trial's pipe
_DONES_PER_MESSAGE = 8
_FILE_WINDOW = 4  # FILE chunks (of _CHUNK bytes) unacknowledged at once; the rest wait on disk
# seconds a cancelled trial queued in a --reuse-process child has to be skipped before a kill
_SKIP_GRACE = 1.0


class Agent:
    """One per GPU: connects, says HELLO, runs what it is given, never runs user code itself."""

    def __init__(self, config: WorkerConfig, credential: Credential) -> None:
        if credential.name and credential.role is not Role.WORKER:
            raise ConfigError(
                f"a worker connects with a worker credential or the cluster key, not {credential.label} "
                "(issue one with 'retia credential issue --role worker --name NAME')"
            )
        self.config = config
        self._user = config.trial_account  # trials run as this user (None: as ours)
        secure_worker_home(config.home, self._user)  # first: before the blob store and the fork server
        self.id = config.name or f"{socket.gethostname()}-gpu{config.gpu}-{os.getpid()}"
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.peer = Peer(
            self._ctx,
            config.connect,
            credential,
            self.id,
            self._hello,
            timing=config.timing,
            curve_server_key=config.curve_server_key,
            after_hello=self._after_hello,
            max_items=_DONES_PER_MESSAGE,
            max_message_bytes=config.max_message_bytes,
        )
        # torch.cuda.is_available()/device_count() in the fork server (an import, a probe) then ask NVML,
        # not the CUDA runtime: cuInit there would make every forked trial fail ("Cannot re-initialize
        # CUDA in forked subprocess"). Lightning sets it on import, after torch and the preload's first
        # modules: set here, it is in the fork server's environment from its start.
        os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
        # device N of a trial is nvidia-smi's and NVML's N (CUDA's own default orders by speed)
        os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")
        # its GPUs' memory at rest, checked before each trial process (nothing on a CPU worker)
        self.gpu_guard = guard_for(
            config.gpu_list, shared=config.gpu_memory_fraction < 1, reuse_process=config.reuse_process
        )
        self._gpu_leak = ""  # why no trial starts here: a GPU holds memory after the last trial
        self._mp = multiprocessing.get_context("forkserver")
        self._mp.set_forkserver_preload([*config.preload, "retia.worker.gc_freeze"])  # gc_freeze last
        self.trial: RunningTrial | None = None  # the one running
        # --reuse-process: given to the child after the running one, not started
        self._queued: deque[RunningTrial] = deque()
        self._stopping = False
        self._held: deque[Run] = deque()  # held, not given to a process: prefetched, or blobs coming
        self._last_run = ""
        self._exiting: list[Exiting] = []  # trial processes that finished their trial, still exiting
        self._uploads: deque[Upload] = deque()  # artefacts streaming under the window, DONEs behind them
        self._checkpoint: CheckpointUpload | None = None  # the running attempt's latest, on its way
        self._poller: tuple[Any, zmq.Poller] | None = None
        self._batch = False  # the loop runs SCHED_BATCH (trials queue in the reused child)
        self.blobs = BlobStore(config.blobs_dir, config.blob_cache_bytes)
        self._trials_dir = str(config.trials_dir)
        self.processes = strategy_for(self._mp, config.reuse_process, self._trials_dir)
        self.fetcher = BlobFetcher(
            self.blobs, lambda req: self.peer.send(MsgType.BLOB_GET, req, trial=req.digest)
        )

    # ---- lifecycle ----

    def warm_up(self) -> None:
        """Start the fork server now (it imports torch and Lightning once), not on the first trial."""
        started = time.perf_counter()
        proc = self._mp.Process(target=runner.warm_up, name="retia-warmup")
        proc.start()
        proc.join()
        _log.info(
            "fork server ready in %.2fs (preloaded %s)",
            time.perf_counter() - started,
            ", ".join(self.config.preload),
        )

    def stop(self) -> None:
        """Ask the loop to exit (safe from a signal handler)."""
        self._stopping = True

    def run(self) -> None:
        self.warm_up()
        self.processes.idle()
        self.peer.connect()
        next_reap = time.monotonic()
        try:
            while not self._stopping:
                # what waits for room in the socket goes out within 10 ms
                longest = 0.01 if self.peer.backlog else 0.2
                self._poll(max(0.0, min(self.peer.next_deadline() - time.monotonic(), longest)))
                now = time.monotonic()
                self._supervise(now)
                if now >= next_reap:
                    reap(self._exiting, now)
                    if self._gpu_leak and self.trial is None and not self._held:
                        self._recheck_gpu(now)
                    if self.peer.heard_within(self.config.timing.silence):  # (down: no stall of its own)
                        self.fetcher.check_stalls(now, _BLOB_PATIENCE * self.config.timing.silence)
                    next_reap = now + self.config.heartbeat_interval
                self.peer.tick(now)
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        if self.trial is not None:
            self._kill(self.trial, "the worker is shutting down", hard=True)
            self.trial.process.join(timeout=5)
            self.trial = None
            self._queued.clear()
        for exiting in self._exiting:
            exiting.process.join(timeout=5)
        self.processes.shutdown()
        self.fetcher.close()
        self.peer.close(linger_ms=500)
        self._ctx.term()
        _log.info("worker %s stopped", self.id)

    # ---- connection (Paranoid Pirate) ----

    def _hello(self) -> Hello:
        # ended, their DONEs waiting behind streaming artefacts: still ours until those go
        running = [TrialAttempt(d.trial, d.attempt) for u in self._uploads for d in u.dones]
        running += [TrialAttempt(t.id, t.attempt) for t in self._started()]
        running += [TrialAttempt(run.trial, run.attempt) for run in self._held]
        hello = Hello(
            Role.WORKER,
            self.id,
            socket.gethostname(),
            os.getpid(),
            self.config.gpu,
            running,
            prefetch=int(self.config.prefetch),
            max_message_bytes=self.config.max_message_bytes,
        )
        return hello

    def _after_hello(self) -> None:
        """Once HELLO (and what is unacknowledged) went out: ask again for blobs, and say READY if idle."""
        self.fetcher.resume()
        if self._gpu_leak:
            self.peer.send(MsgType.READY, Ready(self._last_run, blocked=self._gpu_leak))
        elif self.trial is None and not self._held:
            self.peer.send(MsgType.READY, Ready(self._last_run))

    def _started(self) -> list[RunningTrial]:
        """The running trial (a pack's trials that have not ended) and those queued behind it in its
        child, in order."""
        processes = ([self.trial] if self.trial is not None else []) + list(self._queued)
        return [member for t in processes for member in t.members if not member.done_sent]

    def _slots_taken(self) -> int:
        """RUNs given a process: the running one (a pack is one) and those queued in its child."""
        return (self.trial is not None) + len(self._queued)

    def _reliable(self, type: MsgType, body: Any, trial: RunningTrial, *, seq: int = 0) -> None:
        """Send and keep until acknowledged; the message takes the next seq unless it names one."""
        if not seq:
            trial.seq += 1
            seq = trial.seq
        self.peer.keep([Outgoing(type, body, trial.id, trial.attempt, seq)])

    # ---- the loop's parts ----

    def _poll(self, timeout: float) -> None:
        sock = self.peer.sock
        if sock is None:
            return
        waiting_fd = self.processes.waiting_fd()
        key = (sock, self.trial and self.trial.conn, waiting_fd)
        if self._poller is None or self._poller[0] != key:  # rebuilt only when the socket or the pipes change
            poller = zmq.Poller()
            poller.register(sock, zmq.POLLIN)
            if self.trial is not None:
                poller.register(self.trial.conn.fileno(), zmq.POLLIN)
                poller.register(self.trial.process.sentinel, zmq.POLLIN)
            if waiting_fd is not None:  # the child made room for what waits to be written
                poller.register(waiting_fd, zmq.POLLOUT)
            self._poller = (key, poller)
        if self.trial is not None and self.trial.conn.buffered:
            timeout = 0.0  # a whole message read ahead waits in the pipe's reader, not in the pipe
        ready = dict(self._poller[1].poll(int(timeout * 1000)))
        if sock in ready:
            for msg in self.peer.receive():
                try:
                    self._handle(msg)
                except Exception:  # one message must not stop the worker: it is dropped, the loop goes on
                    _log.exception("failed on %s from the dispatcher; dropped, serving on", msg.type.name)

    def _handle(self, msg: Message) -> None:
        h = msg.header
        if msg.type is MsgType.RUNS:
            for run in msg.body.items:
                self._accept(run)
        elif msg.type is MsgType.BLOB_DATA:
            self.fetcher.on_data(msg.body)
        elif msg.type is MsgType.ACKS:
            for ack in msg.body.items:  # (the peer dropped what they acknowledge)
                if not ack.ok:
                    self.fetcher.give_up(ack.trial, ack.reason)
        elif msg.type is MsgType.CANCEL:
            self._cancel(h.trial, h.attempt, msg.body.reason, msg.body.give_back)
        elif msg.type is MsgType.RESET:
            self.peer.reset(msg.body)
        elif msg.type is MsgType.SHUTDOWN:
            self.stop()
        elif msg.type is MsgType.REFUSED:  # for good (a revoked credential): the peer logged it, we stop
            self.stop()
        elif msg.type not in (MsgType.HEARTBEAT, MsgType.WELCOME):
            _log.warning("unexpected %s from the dispatcher", msg.type.name)

    def _accept(self, run: Run) -> None:
        if self.config.trial_devices(run.gpus) is None:  # (the dispatcher places by what we said we have)
            reason = f"it asks for {run.gpus} GPUs and worker {self.id} has {len(self.config.gpu_list)}"
            for trial, attempt in ((run.trial, run.attempt), *((m.trial, m.attempt) for m in run.mates)):
                self._end_unstarted(trial, attempt, TrialState.FAILED, reason, FailureKind.UNPLACEABLE)
            return
        if self._slots_taken() + len(self._held) > self.config.prefetch:
            # (the dispatcher's view lagged, e.g. an attempt it gave up still runs here): it goes
            # back to the queue unstarted, no attempt spent, rather than failing
            _log.warning("RUN for %s while busy; giving it back", run.trial)
            self._end_unstarted(run.trial, run.attempt, TrialState.QUEUED, "the worker was busy")
            return
        self._last_run = run.trial
        if run.blobs:
            self.fetcher.need(run.blobs)
        self._held.append(run)
        self._launch_held()

    def _launch_held(self) -> None:
        """Hand held runs to a process, in order: a free one, or the queue of its --reuse-process child."""
        while self._held:
            run = self._held[0]
            failed = [self.fetcher.failed[b.digest] for b in run.blobs if b.digest in self.fetcher.failed]
            if failed:
                self._held.popleft()
                self._end_unstarted(
                    run.trial, run.attempt, TrialState.FAILED, "; ".join(failed), FailureKind.BLOB
                )
            elif not self.fetcher.ready(run.blobs) or not (
                self.trial is None or (self._running_takes_more() and not run.mates)
            ):
                return  # (a pack gets a process of its own)
            elif self.trial is None and not self._gpu_free(time.monotonic()):
                return
            else:
                self._launch(self._held.popleft())

    def _gpu_free(self, now: float) -> bool:
        """A new trial process may start: its GPUs are back to their idle level. Memory held past
        --gpu-release-wait blocks this worker: it gives back what it holds and tells the dispatcher."""
        if self.gpu_guard is None:
            return True
        if not self._gpu_leak:
            leak = self.gpu_guard.leak(now)
            if leak is None:
                return True
            if leak.seen_for < self.config.gpu_release_wait:
                return False  # (the driver frees an exited process's memory a moment later)
            self._gpu_leak = leak.describe()
            _log.error("worker %s: %s", self.id, self._gpu_leak)
            self.peer.send(MsgType.READY, Ready(self._last_run, blocked=self._gpu_leak))
        while self._held:  # unstarted: back to the queue, no attempt spent
            run = self._held.popleft()
            for trial, attempt in ((run.trial, run.attempt), *((m.trial, m.attempt) for m in run.mates)):
                self._end_unstarted(trial, attempt, TrialState.QUEUED, self._gpu_leak)
        return False

    def _recheck_gpu(self, now: float) -> None:
        """Blocked and idle: once the memory is freed, it says READY and takes trials again."""
        assert self.gpu_guard is not None
        if self.gpu_guard.leak(now) is None:
            _log.warning("worker %s: its GPU memory is back to its idle level; taking trials again", self.id)
            self._gpu_leak = ""
            self.peer.send(MsgType.READY, Ready(self._last_run))

    def _running_takes_more(self) -> bool:
        """The running trial's process can queue more trials (a healthy --reuse-process child)."""
        trial = self.trial
        return (
            trial is not None
            and not trial.kill_reason
            and self.processes.takes_more(trial.process, len(self._queued))
        )

    def _cancel(self, trial_id: str, attempt: int, reason: str, give_back: bool = False) -> None:
        """Stop a trial, or drop it unstarted; ``give_back``: only if unstarted, back to the queue."""
        key = (trial_id, attempt)
        running = self.trial
        member = next((m for m in running.members if (m.id, m.attempt) == key), None) if running else None
        if running is not None and member is not None:
            if give_back or member.finished:
                return
            if any(not m.finished for m in running.members if m is not member):
                member.cancel = reason  # one trial of a pack: it leaves, the others train on
                self._tell_pack(running, pipe.SkipTrial(trial_id, attempt))
                return
            self._kill(running, reason, state=TrialState.CANCELLED)
            return
        for queued in self._queued:
            if (queued.id, queued.attempt) == key and not queued.cancel:
                # the child skips it; if it started meanwhile, a cancelled one is killed when it comes up
                queued.cancel, queued.give_back = reason, give_back
                self.processes.skip(trial_id, attempt)
                return
        for run in self._held:
            if (run.trial, run.attempt) == key:
                self._held.remove(run)
                self._end_unstarted(
                    run.trial, run.attempt, TrialState.QUEUED if give_back else TrialState.CANCELLED, reason
                )
                return

    def _tell_pack(self, pack: RunningTrial, message: pipe.SkipTrial) -> None:
        """A message on a pack process's control pipe (it reads it between batches)."""
        try:
            pack.control.send(message)
        except (OSError, AttributeError) as exc:  # gone: its end comes through its exit status
            _log.warning("trial %s: could not tell its pack to stop it: %s", message.trial, exc)

    def _end_unstarted(
        self,
        trial: str,
        attempt: int,
        state: TrialState,
        reason: str,
        kind: FailureKind = FailureKind.STOPPED,
    ) -> None:
        """DONE for a trial that never got a process (its blobs failed, or it was cancelled first)."""
        failure = Failure(kind, reason, message=reason) if state is TrialState.FAILED else None
        done = Done(trial, attempt, 1, state, reason, failure)
        message = Outgoing(MsgType.DONES, done, trial, attempt, 1)
        self.peer.keep([message])

    def _launch(self, run: Run) -> None:
        """Give a RUN to a process: the running trial's child queues it, or it starts now."""
        devices = self.config.trial_devices(run.gpus)
        assert devices is not None  # (_accept ended a RUN asking for more)
        digests = {blob.digest for blob in run.blobs}
        if digests:  # (a trial without blobs brings none in: nothing to evict)
            for digest in digests:
                self.blobs.touch(digest)
            self.blobs.evict(keep=digests)
        out = self._output_dir(run.trial, run.attempt)  # the trial process creates it
        log_file = os.path.join(out, "trial.log")
        spec = runner.TrialSpec(
            run.trial,
            run.attempt,
            run.evaluator,
            run.model,
            out,
            log_file,
            devices,
            self.config.trial_threads,
            str(self.config.blobs_dir),
            self.processes.scratch,
            self._user,
            run.resume.digest if run.resume is not None else "",
            run.seed,
            tuple(
                MateSpec(m.trial, m.attempt, m.model, self._output_dir(m.trial, m.attempt), m.seed, m.timeout)
                for m in run.mates
            ),
            run.timeout,
            self.config.trial_memory_bytes,
            gpu_memory_fraction=self.config.gpu_memory_fraction,
        )
        launched = self.processes.launch(spec, busy=self.trial is not None)
        if launched is None:  # the running trial's child died under it: this one waits for the next child
            self._held.appendleft(run)
            return
        trial = RunningTrial(
            run.trial, run.attempt, launched.process, launched.messages, out, log_file, run, run.timeout
        )
        trial.reused = self.processes.reused and not run.mates
        trial.max_artifact_bytes = min(run.max_artifact_bytes, self.config.max_artifact_bytes)
        if run.mates:
            self._make_pack(trial, run, launched.control)
        if self.trial is None:
            self._make_current(trial, time.monotonic())
        else:
            self._queued.append(trial)

    def _output_dir(self, trial: str, attempt: int) -> str:
        return os.path.join(self._trials_dir, f"{trial}-{attempt}")

    def _make_pack(self, first: RunningTrial, run: Run, control: Any) -> None:
        """The trials riding in a pack's RUN, on its process and pipe; each trial's own timeout is the
        pack's to keep, the agent's deadline only a backstop past the longest."""
        for mate in run.mates:
            out = self._output_dir(mate.trial, mate.attempt)
            member = RunningTrial(
                mate.trial, mate.attempt, first.process, first.conn, out, os.path.join(out, "trial.log"), run
            )
            member.max_artifact_bytes = first.max_artifact_bytes
            first.mates.append(member)
        first.control = control
        timeouts = [run.timeout, *(m.timeout for m in run.mates)]
        first.timeout = (
            None if None in timeouts else max(t or 0.0 for t in timeouts) + 2 * self.config.kill_grace
        )

    def _make_current(self, trial: RunningTrial, now: float) -> None:
        """It is the running trial from now: its clock starts."""
        trial.started = now
        killed_unless_skipped = trial.cancel and not trial.give_back
        limit = _SKIP_GRACE if killed_unless_skipped else trial.timeout  # skipped by then, or killed
        trial.deadline = now + limit if limit else None
        self.trial = trial
        _log.debug("trial %s attempt %d started (pid %d)", trial.id, trial.attempt, trial.process.pid)

    def _drain(self, trial: RunningTrial) -> None:
        """Read what a dead trial process left in the pipe for this trial (a flood can outlive its writer)."""
        while True:
            trial.read_pipe(_MAX_BATCH)
            # stopped at its end, not at the batch limit
            if trial.all_finished or len(trial.pending) < _MAX_BATCH:
                return
            for member in trial.members:
                self._send_reports(member)

    def _send_reports(self, trial: RunningTrial) -> None:
        """The pending reports in one message: one ACK (for the last), one journal transaction."""
        reports, trial.pending = trial.pending, []
        if reports:  # each message kept under its last report's seq, so report seqs stay contiguous
            items = trial.numbered(reports)
            for part in batches(items, item_bytes, _MAX_BATCH, _REPORT_BYTES_PER_MESSAGE):
                self._reliable(MsgType.REPORTS, ReportBatch(part), trial, seq=part[-1].seq)

    def _supervise(self, now: float) -> None:
        self.processes.flush()
        self._launch_held()
        dones: list[Outgoing] = []
        while self.trial is not None:
            trial = self.trial
            if trial.deadline is not None and now > trial.deadline and not trial.kill_reason:
                if trial.cancel:
                    self._kill(trial, trial.cancel, state=TrialState.CANCELLED)
                else:
                    trial.timed_out = True
                    self._kill(trial, f"timed out after {trial.deadline - trial.started:.1f}s")
            if trial.sigkill_at is not None and now > trial.sigkill_at:
                trial.send_signal(signal.SIGKILL)
                trial.sigkill_at = None
            if self.peer.backlog < _BACKLOG:  # else the trial waits on its pipe: back-pressure, not drops
                trial.read_pipe(_MAX_BATCH)
            if not trial.ended:
                for member in trial.members:
                    self._send_reports(member)
                    if member.finished and trial.mates and not member.done_sent:  # a pack's, one by one
                        with file_access_of(self._user):
                            dones.append(self._done_of(member, now))
                if trial.checkpoint_due:
                    self._take_checkpoint(trial)
                self._stream_checkpoint()
                break
            dones += self._end(trial, now)
            if len(dones) >= _DONES_PER_MESSAGE:  # the dispatcher refills these slots while the child runs on
                self._send_dones(dones)
                dones = []
        self._send_dones(dones)
        self._launch_held()  # a held trial starts now, not a loop turn later
        if self.trial is None and not self._held:
            self.processes.idle()  # forking blocks ~20 ms: while idle, not while a trial's reports come in
        if self._batch != bool(self._queued):
            self._batch = bool(self._queued)
            set_policy(self._batch)

    def _take_checkpoint(self, trial: RunningTrial) -> None:
        """The trial saved a checkpoint: it replaces the one on its way (whose rest is not sent: the
        dispatcher keeps the last complete one), and goes out under the window."""
        trial.checkpoint_due = False
        base = self.processes.scratch if trial.reused else trial.output_dir
        try:
            with file_access_of(self._user):  # what the trial could not read, it cannot make us send
                fd = open_beneath(base, [CHECKPOINT_FILE], os.O_RDONLY)
        except OSError as exc:
            _log.warning("trial %s: checkpoint not sent: %s", trial.id, exc)
            return
        size = os.fstat(fd).st_size
        if size > trial.max_artifact_bytes:
            os.close(fd)
            _log.warning(
                "trial %s: checkpoint of %d bytes exceeds the artefact cap of %d bytes; not sent",
                trial.id,
                size,
                trial.max_artifact_bytes,
            )
            return
        if self._checkpoint is not None:
            self._checkpoint.close()
        self._checkpoint = CheckpointUpload(trial, fd)

    def _stream_checkpoint(self) -> None:
        """Send the checkpoint's chunks while fewer than the window wait for an ACK."""
        upload = self._checkpoint
        while upload is not None and self.peer.kept_count(MsgType.CHECKPOINT) < _FILE_WINDOW:
            chunk = upload.next()
            if chunk is None:
                self._checkpoint = upload = None
            else:
                self.peer.keep([chunk])

    def _end(self, trial: RunningTrial, now: float) -> list[Outgoing]:
        """The running trial's process is done with it: its DONE (a pack's, for each of its trials
        not ended before), and the next one comes up."""
        if self._checkpoint is not None and self._checkpoint.trial == trial.id:
            self._checkpoint.close()  # the attempt is over: its files come home with its DONE
            self._checkpoint = None
        dead = not alive(trial.process)
        if dead:
            trial.process.join()
            self._drain(trial)
        # the process ended with this trial (not after it, as a fresh one does)
        went_down = dead and not (trial.all_finished and not trial.kill_reason)
        if went_down and trial.reused:
            with file_access_of(self._user):  # (in the trial user's directory: as that user)
                self.processes.file_scratch(
                    trial.output_dir, lambda: f"trial {trial.id} attempt {trial.attempt}"
                )
        if went_down or not trial.reused or (dead and not self._queued):
            if not dead:  # fit is over; the process exits on its own, reaped later
                self._exiting.append(Exiting(trial.process, now + self.config.kill_grace))
            trial.conn.close()
            self.processes.retire(trial.process)
            # what was queued behind it in the dead child never started: it goes to a new one, in order
            for queued in reversed(self._queued):
                if queued.cancel:
                    state = TrialState.QUEUED if queued.give_back else TrialState.CANCELLED
                    self._end_unstarted(queued.run.trial, queued.run.attempt, state, queued.cancel)
                else:
                    self._held.appendleft(queued.run)
            self._queued.clear()
        messages = []
        for member in trial.members:
            if member.done_sent:
                continue
            if member is not trial and not member.finished:  # the pack was stopped, or died, with it
                member.kill_reason, member.kill_state = trial.kill_reason, trial.kill_state
                member.timed_out = trial.timed_out
            with file_access_of(self._user):  # what the trial could not read, it cannot make us send
                messages.append(self._done_of(member, now))
        self.trial = None  # DONE tells the dispatcher we are free: no READY needed
        if self._queued:
            self._make_current(self._queued.popleft(), now)
        return messages

    def _done_of(self, trial: RunningTrial, now: float) -> Outgoing:
        """A trial's DONE (kept until acknowledged): its last reports, its verdict, its files."""
        if sum(len(report.value) for report in trial.pending) > _INLINE_REPORT_BYTES:
            self._send_reports(trial)
        reports, trial.pending = trial.pending, []
        items = trial.numbered(reports)
        if trial.skipped and not trial.kill_reason:
            state = TrialState.QUEUED if trial.give_back else TrialState.CANCELLED
            done = Done(
                trial.id, trial.attempt, trial.seq + 1, state, trial.cancel or "cancelled before it started"
            )
        else:
            files = self._ship_artifacts(trial)  # FILE chunks take seqs before the DONE's
            done = trial.outcome(now, trial.seq + 1, items, files)
        trial.seq += 1
        trial.done_sent = True
        return Outgoing(MsgType.DONES, done, trial.id, trial.attempt, trial.seq)

    def _send_dones(self, dones: list[Outgoing]) -> None:
        """The DONEs of one loop turn, together in one DONES message (each acknowledged on its own);
        while artefacts stream, they wait behind the last one's chunks, in order."""
        if self._uploads:
            self._uploads[-1].dones += dones
        elif dones:
            self.peer.keep(dones)
        self._stream()

    def _kill(
        self, trial: RunningTrial, reason: str, *, state: TrialState = TrialState.FAILED, hard: bool = False
    ) -> None:
        """SIGTERM the trial's process group now and SIGKILL it after the grace period."""
        if not hard and not trial.kill_reason:
            trial.read_pipe(_MAX_BATCH)
            if trial.all_finished:  # it ended meanwhile: the process may already run the next one
                return
        if not trial.kill_reason:
            trial.kill_reason, trial.kill_state = reason, state
            _log.info("stopping trial %s attempt %d: %s", trial.id, trial.attempt, reason)
        trial.send_signal(signal.SIGKILL if hard else signal.SIGTERM)
        if not hard:
            trial.sigkill_at = time.monotonic() + self.config.kill_grace

    def _ship_artifacts(self, trial: RunningTrial) -> list[InlineFile]:
        """Send the trial's output files home, up to the per-trial cap: the first 64 KiB inside
        DONE (returned), the rest in FILE chunks, which take their seqs now (before the DONE's)
        and go out under the window; the DONE follows the last."""
        inline, streamed = pick_artifacts(trial.output_dir, trial.max_artifact_bytes, _INLINE)
        if streamed:
            upload = Upload(trial.id, trial.attempt, trial.seq + 1, streamed, _CHUNK)
            trial.seq += upload.count
            self._uploads.append(upload)
        return inline

    def _stream(self) -> None:
        """Send FILE chunks while fewer than the window wait for an ACK; a finished upload's DONEs go."""
        while self._uploads:
            upload = self._uploads[0]
            while self.peer.kept_count(MsgType.FILE) < _FILE_WINDOW:
                with file_access_of(self._user):  # (a chunk opens its file)
                    chunk = upload.next()
                if chunk is None:
                    break
                self.peer.keep([chunk])
            else:
                return  # the window is full: more as ACKs come
            self._uploads.popleft()
            if upload.dones:
                self.peer.keep(upload.dones)
