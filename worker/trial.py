"""The agent's side of one trial attempt: its process, its pipe, what it sent, and the files it leaves.

These run for every trial, so they avoid a selector per ``Process.is_alive()`` and pathlib
objects per file (both were a measurable share of a short trial: docs/benchmarks.md).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import select
import signal
import stat
import urllib.parse
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.process import BaseProcess
from typing import Any

from retia.artifact_paths import open_beneath
from retia.blobs import CHUNK, digest_of_fd
from retia.errors import ProtocolError
from retia.failure import Failure, FailureKind
from retia.protocol import (
    CHECKPOINT_SEQ,
    DeviceFacts,
    Done,
    FileChunk,
    InlineFile,
    MsgType,
    Outgoing,
    Report,
    Run,
    TrialState,
)

from . import pipe

__all__ = [
    "RunningTrial",
    "Upload",
    "CheckpointUpload",
    "alive",
    "chunk_count",
    "file_chunks",
    "log_tail",
    "pick_artifacts",
    "set_policy",
]

_LOG_TAIL_LINES = 50
_LOG_TAIL_BYTES = 16 << 10

_log = logging.getLogger(__name__)


@dataclass
class RunningTrial:
    """One attempt as the agent sees it: its process and pipe, what it sent, how it is to end."""

    id: str
    attempt: int
    process: BaseProcess
    conn: pipe.Reader
    output_dir: str
    log_file: str
    run: Run  # kept: queued in a child that died first, it is launched again
    timeout: float | None = None
    started: float = 0.0
    deadline: float | None = None
    error: pipe.TrialRaised | None = None  # fit raised (or the trial broke its pipe)
    returned: bool = False
    kill_reason: str = ""
    kill_state: TrialState = TrialState.FAILED
    timed_out: bool = False  # the kill was for its timeout
    sigkill_at: float | None = None
    max_artifact_bytes: int = 50 << 20
    seq: int = 0
    reports: int = 0  # numbered so far (its DONE says how many the dispatcher must hold)
    reused: bool = False  # runs in the long-lived --reuse-process child
    checkpoint_due: bool = False  # it saved a checkpoint the agent has not started sending yet
    checkpoint_seq: int = CHECKPOINT_SEQ  # the last CHECKPOINT chunk's seq

    pending: list[pipe.TrialReport] = field(default_factory=list)  # reports read, not yet sent
    skipped: bool = False  # cancelled in the child's queue before it started: it never ran
    cancel: str = ""  # a cancellation that came while it waited in the child's queue (or in its pack)
    give_back: bool = False  # that cancellation only asks to return it unstarted
    # a pack (on its first trial, which owns the process): the trials riding in its RUN, each with
    # its own messages on the one pipe, and where a SkipTrial cancels one of them
    mates: list[RunningTrial] = field(default_factory=list)
    control: Any = None
    stopped: pipe.TrialStopped | None = None  # it left its pack unfinished (cancelled, timed out)
    done_sent: bool = False  # its DONE went out (a pack's trials end one by one)
    devices: DeviceFacts | None = None  # what its GPUs were and did (its process says, at the end)

    @property
    def finished(self) -> bool:
        """Its last message came: fit returned or raised, it was skipped unstarted, or it left its pack."""
        return self.returned or self.error is not None or self.skipped or self.stopped is not None

    @property
    def members(self) -> list[RunningTrial]:
        """The trials its process runs: itself, and a pack's mates."""
        return [self, *self.mates]

    @property
    def all_finished(self) -> bool:
        """The last message of every trial of its process came."""
        return self.finished and all(mate.finished for mate in self.mates)

    @property
    def ended(self) -> bool:
        """The trial ends with its last message (fit returned or raised) or with its process; a pack
        with the last message of its last trial, or with its process."""
        if self.all_finished and not self.kill_reason:
            return True
        return not alive(self.process)

    def numbered(self, reports: list[pipe.TrialReport]) -> list[Report]:
        """The reports as wire items with the next seqs."""
        first = self.seq + 1
        self.seq += len(reports)
        self.reports += len(reports)
        return [Report(self.id, self.attempt, first + i, r.final, r.value) for i, r in enumerate(reports)]

    def read_pipe(self, max_reports: int) -> None:
        """Read what the trial process sent, up to its last message; reports wait in ``pending``.

        Never blocks: a message not yet whole waits in the pipe's reader for the next turn."""
        count = len(self.pending)
        try:
            while count < max_reports and not self.all_finished:
                message = self.conn.next()
                if message is None:
                    return
                target = self._member(message)
                if isinstance(message, pipe.TrialReport):
                    target.pending.append(message)
                    count += 1
                elif isinstance(message, pipe.TrialCheckpoint):
                    self.checkpoint_due = True
                elif isinstance(message, pipe.TrialRaised):
                    target.error = message
                elif isinstance(message, pipe.TrialReturned):
                    target.returned = True
                elif isinstance(message, pipe.TrialStopped):
                    target.stopped = message
                elif isinstance(message, pipe.TrialDevices):
                    target.devices = message.devices
                else:
                    self.skipped = True
        except ProtocolError as exc:  # the trial wrote its pipe itself: it fails, and its process goes
            reason = f"the trial wrote garbage to its report pipe: {exc}"
            self.error = pipe.TrialRaised("ProtocolError", reason, "")
            # a kill: the trial ends with its process (in a reused child, not with the next trial's)
            self.kill_reason = self.kill_reason or reason
            self.send_signal(signal.SIGKILL)
        except (EOFError, OSError):
            pass  # the process is gone; its exit status tells the rest

    def _member(self, message: pipe.TrialMessage) -> RunningTrial:
        """The trial of its process a message is about (a pack's i-th mate for member i)."""
        member = getattr(message, "member", 0)
        if not member:
            return self
        if member > len(self.mates):
            raise ProtocolError(f"a message for trial {member} of a pack of {1 + len(self.mates)}")
        return self.mates[member - 1]

    def outcome(self, now: float, seq: int, reports: list[Report], files: list[InlineFile]) -> Done:
        """The attempt's DONE: verdict, last reports, small artefacts, how many reports it sent in all,
        and for a failure the log's tail."""
        # ``now`` is the loop turn's: a trial a reused child started later in the same turn (and
        # finished at once) would have a negative duration, a DONE the dispatcher cannot take
        duration = max(0.0, now - self.started)
        if self.kill_reason:
            state, reason = self.kill_state, self.kill_reason
            kind = FailureKind.TIMEOUT if self.timed_out else FailureKind.STOPPED
            failure = Failure(kind, reason) if state is TrialState.FAILED else None
        elif self.stopped is not None:  # it left its pack: cancelled, or past its timeout
            if self.stopped.timed_out and not self.cancel:
                state, reason = TrialState.FAILED, self.stopped.reason
                failure = Failure(FailureKind.TIMEOUT, reason)
            else:
                state, reason, failure = TrialState.CANCELLED, self.cancel or self.stopped.reason, None
        elif self.error is not None:
            # cut by the trial process too; again here for one that wrote its own pipe
            error = pipe.raised(self.error.exc_type, self.error.message, self.error.traceback)
            exc_type, message, tb = error.exc_type, error.message, error.traceback
            state, reason = TrialState.FAILED, f"{exc_type}: {message}"
            failure = Failure(FailureKind.RAISED, reason, exc_type, message, tb)
        else:
            # None: a --reuse-process child lives on
            code = None if alive(self.process) else self.process.exitcode
            if self.returned and code in (0, None):
                return Done(
                    self.id,
                    self.attempt,
                    seq,
                    TrialState.SUCCEEDED,
                    "",
                    None,
                    duration,
                    reports,
                    files,
                    self.reports,
                    self.devices,
                )
            signal_name = ""
            if code is not None and code < 0:
                signal_name = _signal_name(-code)
                reason = f"trial process killed by {signal_name} before fit returned"
            else:
                reason = f"trial process exited with code {code} before fit returned"
            state = TrialState.FAILED
            failure = Failure(
                FailureKind.PROCESS_DIED,
                reason,
                "TrialProcessDiedError",
                reason,
                exit_code=code,
                signal=signal_name,
            )
        if failure is not None:
            inline_log = [f.data for f in files if f.path == "trial.log"]  # complete when it rode inline
            tail = _tail_of(inline_log[0]) if inline_log else log_tail(self.log_file)
            failure = dataclasses.replace(failure, log_tail=tail)
        return Done(
            self.id,
            self.attempt,
            seq,
            state,
            reason,
            failure,
            duration,
            reports,
            files,
            self.reports,
            self.devices,
        )

    def send_signal(self, sig: signal.Signals) -> None:
        """Signal its process group (or the process, before it called setsid)."""
        pid = self.process.pid
        if pid is None:  # never started
            return
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(pid, sig)  # it may not have called setsid yet
            except ProcessLookupError:
                pass


_SENTINELS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def alive(process: Any) -> bool:
    """``process.is_alive()`` without a new selector per call: it is asked several times per trial.

    The process's sentinel becomes readable when it ends; only then is the real check made."""
    poller = _SENTINELS.get(process, ())
    if poller == ():
        poller = _SENTINELS[process] = select.poll()
        poller.register(process.sentinel, select.POLLIN)
    if poller is None:  # found dead before (the sentinel need not stay readable once its status was read)
        return False
    if not poller.poll(0) or process.is_alive():
        return True
    _SENTINELS[process] = None
    return False


def _signal_name(number: int) -> str:
    """SIGKILL for 9; a real-time signal has no name in ``signal.Signals``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _list_files(root: str) -> list[tuple[str, str, int]]:
    """(path relative to root with "/", real path, size) of every regular file under root, sorted.

    A symbolic link to a file ships that file under the link's name only when it resolves inside
    root: a link out (to the worker's key, to ``/etc/shadow`` when the agent runs as root) is
    skipped, and logged. Paths are real (no link in them), so :func:`_open_artifact` can reach each
    without following any link. ``os.scandir`` rather than ``Path.rglob``: it runs for every trial,
    and rglob's path objects were a measurable share of a short trial's cost (docs/benchmarks.md).
    """
    found: list[tuple[str, str, int]] = []
    real_root = _real_path(root)
    stack = [(real_root, "")]
    while stack:
        directory, prefix = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, f"{prefix}{entry.name}/"))
                elif entry.is_file(follow_symlinks=False):
                    found.append((_wire_name(prefix + entry.name), entry.path, entry.stat().st_size))
                elif entry.is_symlink() and (target := _link_inside(entry.path, real_root)):
                    found.append((_wire_name(prefix + entry.name), target, os.stat(target).st_size))
            except OSError:
                continue  # gone meanwhile
    return sorted(found)


def _real_path(directory: str) -> str:
    """``os.path.realpath(directory)`` at the cost of one ``lstat`` when it is no link: its
    parent (the agent's trials or scratch directory) is resolved once (each ``realpath`` costs an
    ``lstat`` per component, and this runs for every trial)."""
    parent, name = os.path.split(directory)
    real = os.path.join(_real_parent(parent), name)
    try:
        if not stat.S_ISLNK(os.lstat(real).st_mode):
            return real
    except OSError:
        return real  # not there (a quiet trial of a reused child): nothing to list
    return os.path.realpath(directory)  # a link: the slow way says where it leads


@functools.lru_cache(maxsize=64)
def _real_parent(parent: str) -> str:
    return os.path.realpath(parent)


def _link_inside(link: str, real_root: str) -> str:
    """The real path of the regular file ``link`` points to, when it lies under ``real_root``; else
    "" (logged when it points out: its target is not the trial's to send)."""
    target = os.path.realpath(link)
    if os.path.commonpath([target, real_root]) != real_root:
        _log.warning("artefact %s links to %s, outside the trial's output directory; not sent", link, target)
        return ""
    return target if os.path.isfile(target) else ""


def _open_artifact(path: str) -> int:
    """A descriptor of the regular file at the real path ``path`` (from :func:`_list_files`), reached
    without following any link: one swapped in since the listing raises ``OSError`` instead."""
    return open_beneath("/", path.split("/")[1:], os.O_RDONLY)


def _wire_name(rel: str) -> str:
    """The name a file travels under: itself, or, when it is not UTF-8 (a name of raw bytes, which
    Python keeps as surrogates and msgpack cannot pack), its bytes percent-encoded: lossless, and
    ``urllib.parse.unquote_to_bytes`` gives the original back."""
    try:
        rel.encode("utf-8")
    except UnicodeEncodeError:
        escaped = urllib.parse.quote(os.fsencode(rel), safe="/")
        _log.warning("artefact %r is not a UTF-8 name; shipped as %s", rel, escaped)
        return escaped
    return rel


def pick_artifacts(
    root: str, budget: int, inline_limit: int
) -> tuple[list[InlineFile], list[tuple[str, str, int]]]:
    """The files under ``root`` to send home within ``budget`` bytes: the small ones read
    now, up to ``inline_limit`` bytes in all (they ride inside DONE), and ``(relative path, path,
    size)`` of the rest, to stream. Each is read only up to the size checked against the budget
    (a file still growing does not overshoot it). An empty ``trial.log`` stays behind."""
    inline: list[InlineFile] = []
    streamed: list[tuple[str, str, int]] = []
    inline_bytes = 0
    for rel, path, size in _list_files(root):
        if rel == "trial.log" and not size:
            continue  # the trial printed nothing: no file to bring home
        if size > budget:
            _log.warning(
                "artefact %s (%d bytes) exceeds the remaining cap of %d bytes; not sent", path, size, budget
            )
            continue
        budget -= size
        if inline_bytes + size > inline_limit:
            streamed.append((rel, path, size))
            continue
        try:
            with open(_open_artifact(path), "rb") as f:
                inline.append(InlineFile(rel, f.read(size)))  # at most what was checked, if it grew since
        except OSError as exc:
            _log.warning("artefact %s not sent: %s", path, exc)
            continue
        inline_bytes += len(inline[-1].data)
    return inline, streamed


def chunk_count(size: int, chunk: int) -> int:
    """How many FILE chunks a file of ``size`` bytes travels in (an empty one: one empty chunk)."""
    return max(1, -(-size // chunk))


def file_chunks(rel: str, path: str, chunk: int, size: int) -> Iterator[FileChunk]:
    """The first ``size`` bytes of a file in exactly ``chunk_count(size, chunk)`` FILE chunks (the last
    says so): what was checked, never more; if the file shrank or went, the rest are empty."""
    count = chunk_count(size, chunk)
    try:
        f = open(_open_artifact(path), "rb", buffering=0)  # unbuffered: no read past what was checked
    except OSError as exc:
        _log.warning("artefact %s not sent: %s", path, exc)
        f = None
    try:
        for i in range(count):
            offset = i * chunk
            data = f.read(min(chunk, size - offset)) if f is not None else b""
            yield FileChunk(rel, offset, data, i == count - 1)
    finally:
        if f is not None:
            f.close()


@dataclass
class Upload:
    """A finished attempt's streamed artefacts: FILE chunks with seqs allotted up front (before its
    DONE's), read from disk only as the agent's window lets them go. DONEs wait behind it, in order."""

    trial: str
    attempt: int
    first_seq: int
    files: list[tuple[str, str, int]]
    chunk: int
    dones: list[Outgoing] = field(default_factory=list)  # sent once its last chunk is
    _chunks: Iterator[FileChunk] | None = None
    _seq: int = 0

    @property
    def count(self) -> int:
        """How many seqs its chunks take."""
        return sum(chunk_count(size, self.chunk) for _, _, size in self.files)

    def next(self) -> Outgoing | None:
        """The next FILE message, or None when all were given out."""
        if self._chunks is None:
            self._chunks = (
                c for rel, path, size in self.files for c in file_chunks(rel, path, self.chunk, size)
            )
            self._seq = self.first_seq
        chunk = next(self._chunks, None)
        if chunk is None:
            return None
        self._seq += 1
        return Outgoing(MsgType.FILE, chunk, self.trial, self.attempt, self._seq - 1)


class CheckpointUpload:
    """An attempt's latest checkpoint on its way as CHECKPOINT chunks (named by its digest, so the
    dispatcher keeps it only if it arrives whole and unchanged), read from a descriptor opened when
    the trial saved it: the trial's next save is a new file and leaves this one as it was."""

    def __init__(self, trial: RunningTrial, fd: int) -> None:
        self.trial, self.attempt = trial.id, trial.attempt
        self.fd = fd
        self.size = os.fstat(fd).st_size
        self.digest = digest_of_fd(fd)
        self.offset = 0
        self.done = False
        self._owner = trial

    def next(self) -> Outgoing | None:
        """The next chunk (the last says so), or None when all went (the descriptor is then closed)."""
        if self.done:
            return None
        data = os.pread(self.fd, min(CHUNK, self.size - self.offset), self.offset)
        last = self.offset + len(data) >= self.size or not data
        chunk = FileChunk(self.digest, self.offset, data, last)
        self.offset += len(data)
        self._owner.checkpoint_seq += 1
        if last:
            self.close()
        return Outgoing(MsgType.CHECKPOINT, chunk, self.trial, self.attempt, self._owner.checkpoint_seq)

    def close(self) -> None:
        if not self.done:
            self.done = True
            os.close(self.fd)


def set_policy(batch: bool) -> None:
    """SCHED_BATCH while short trials queue in a --reuse-process child: woken by the running trial's
    message, the agent does not preempt it, so it finishes and the agent reads its final report and
    its "done" in one turn (half the messages on two busy cores). Otherwise the normal policy, so a
    lone trial's reports go out at once. Only the calling thread: the fork server and its trials
    keep the normal policy. Elsewhere than Linux a no-op."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH if batch else os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # not Linux, or a sandbox that forbids it
        _log.debug("agent keeps its scheduling policy: %s", exc)


def log_tail(path: str, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a trial's log (at most its last 64 KiB are read); "" when it is not a
    regular file any more: the trial may have swapped it for a FIFO (an open() of which would block
    the agent for good) or a link (whose target is not the trial's to send)."""
    real = os.path.join(_real_path(os.path.dirname(path)), os.path.basename(path))
    try:
        with open(_open_artifact(real), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return _tail_of(f.read(), lines)
    except OSError:
        return ""


def _tail_of(data: bytes, lines: int = _LOG_TAIL_LINES) -> str:
    """The last lines of a log's bytes, as text: at most its last 16 KiB (one line can be huge)."""
    tail = "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
    return pipe.bounded(tail, _LOG_TAIL_BYTES, keep="tail")
