"""Where a trial runs: a fresh process per trial (forked ahead, while idle), or one reused child.

Both strategies answer the agent the same questions: give this spec a process, may the running
trial's process take more, skip this queued one, the running trial's process is done with. The
agent's loop stays the same either way.

- :class:`FreshProcesses` forks one process per trial from the fork server; the next one is
  forked while the agent idles (a "spare" waiting on a pipe for its spec), so a RUN starts at once.
- :class:`ReusedChild` (``--reuse-process``) keeps one long-lived child that runs the specs queued
  in its pipe back to back, in one scratch directory (see :mod:`retia.worker.runner`).

A trial process kills what it started before its last message; what one that died left (orphans
of a double fork or a ``setsid``) goes to the fork server, a child subreaper (see
:mod:`retia.worker.gc_freeze`): when the agent retires a process, every child of the fork server
that is not a trial process of ours is killed, with its descendants.
"""

from __future__ import annotations

import logging
import os
import signal
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from typing import Any, Protocol

from . import pipe, runner
from .trial import alive

__all__ = [
    "Launched",
    "Exiting",
    "ProcessStrategy",
    "FreshProcesses",
    "ReusedChild",
    "strategy_for",
    "launch_pack",
    "reap",
    "CHILD_AHEAD",
]

_log = logging.getLogger(__name__)
CHILD_AHEAD = 8  # --reuse-process: trials queued in the child's pipe; the rest wait in the agent


class SpecWriter:
    """The agent's end of a --reuse-process child's spec pipe, which never blocks the agent.

    The child reads its pipe only between trials; a spec larger than what the pipe holds
    (64 KiB on Linux) would stop the agent's loop until the running trial ended, heartbeats
    and all. What the pipe cannot take yet waits here, written as the child makes room;
    the framing is ``Connection.send``'s, so the child reads with ``Connection.recv``."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.fd = conn.fileno()
        os.set_blocking(self.fd, False)
        self._frames: deque[memoryview] = deque()

    @property
    def pending(self) -> bool:
        """Some bytes wait for the child to read."""
        return bool(self._frames)

    def send(self, obj: Any) -> None:
        """Queue ``obj`` and write as much as the pipe takes; raises OSError when the child is gone."""
        data = ForkingPickler.dumps(obj)
        self._frames.append(memoryview(struct.pack("!i", len(data)) + bytes(data)))
        self.flush()

    def flush(self) -> None:
        while self._frames:
            try:
                written = os.write(self.fd, self._frames[0])
            except BlockingIOError:
                return
            if written == len(self._frames[0]):
                self._frames.popleft()
            else:
                self._frames[0] = self._frames[0][written:]

    def close(self) -> None:
        self._frames.clear()
        self.conn.close()


@dataclass
class Launched:
    """The process a spec was given to, and the pipe its trial's messages come on; a pack's process
    also has a control pipe (a :class:`~retia.worker.pipe.SkipTrial` there cancels one of its trials)."""

    process: BaseProcess
    messages: pipe.Reader
    control: Connection | None = None


@dataclass
class Exiting:
    """A trial process whose trial has ended, left to exit on its own until ``deadline``."""

    process: BaseProcess
    deadline: float


@dataclass
class _Spare:
    """A fresh process forked ahead of time, waiting on ``specs`` for its one trial."""

    process: BaseProcess
    specs: Connection
    messages: pipe.Reader


@dataclass
class _Child:
    """The long-lived ``--reuse-process`` child: specs go in without blocking, messages come out."""

    process: BaseProcess
    specs: SpecWriter
    messages: pipe.Reader


class ProcessStrategy(Protocol):
    reused: bool
    scratch: str  # the directory a reused child runs trials in ("" for fresh processes)

    def launch(self, spec: runner.TrialSpec, busy: bool) -> Launched | None:
        """A process for ``spec``; None when it must wait (``busy``: the running trial's child died)."""

    def takes_more(self, process: BaseProcess, queued: int) -> bool:
        """The running trial's process can take one more spec now."""

    def skip(self, trial: str, attempt: int) -> None:
        """A spec queued in the child must not start."""

    def retire(self, process: BaseProcess) -> None:
        """The agent is done with this process (it died, or ran its one trial)."""

    def flush(self) -> None:
        """Write what waits for the child, as far as its pipe takes it."""

    def waiting_fd(self) -> int | None:
        """The pipe to poll for room while something waits to be written to the child."""

    def idle(self) -> None:
        """Nothing runs and nothing waits: a moment to prepare the next process."""

    def shutdown(self) -> None:
        """Stop every process this strategy started (the running trial's is the agent's)."""

    def file_scratch(self, output_dir: str, describe: Callable[[], str]) -> None:
        """The process died in a trial: what it left in a shared scratch directory is that trial's."""


class _Orphans:
    """The trial processes a strategy started, to tell them from what they left under the fork server."""

    def __init__(self) -> None:
        self._ours: list[BaseProcess] = []
        self._server: int | None = None  # the fork server's pid: the parent of every trial process

    def started(self, process: BaseProcess) -> None:
        self._ours = [p for p in self._ours if alive(p)]
        self._ours.append(process)
        if self._server is None and process.pid is not None:
            self._server = _parent(process.pid)

    def kill(self) -> None:
        """SIGKILL every child of the fork server that is not a living trial process, and its descendants."""
        if self._server is None:
            return
        ours = {p.pid for p in self._ours if alive(p)}
        for child in runner.children_of(self._server):
            if child not in ours and not _zombie(child):
                for pid in [child, *runner.descendants(child)]:
                    _log.info("killing process %d, left by a trial process that ended", pid)
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass


def launch_pack(mp: ForkServerContext, spec: runner.TrialSpec, orphans: _Orphans) -> Launched:
    """A fresh process of its own for a pack (whatever the strategy), with its control pipe."""
    reader, writer = mp.Pipe(duplex=False)
    control_reader, control_writer = mp.Pipe(duplex=False)
    process = mp.Process(
        target=runner.run_pack, args=(spec, writer, control_reader), name=f"retia-pack-{spec.trial}"
    )
    process.start()
    orphans.started(process)
    writer.close()
    control_reader.close()
    return Launched(process, pipe.Reader(reader), control_writer)


class FreshProcesses:
    """A new process per trial; the next one forked while idle."""

    reused = False
    scratch = ""

    def __init__(self, mp: ForkServerContext) -> None:
        self._mp = mp
        self._spare: _Spare | None = None
        self._orphans = _Orphans()

    def launch(self, spec: runner.TrialSpec, busy: bool) -> Launched | None:
        if spec.mates:
            return launch_pack(self._mp, spec, self._orphans)
        spare, self._spare = self._spare, None
        if spare is not None and alive(spare.process):
            spare.specs.send(spec)
            spare.specs.close()
            return Launched(spare.process, spare.messages)
        if spare is not None:
            _discard(spare)
        reader, writer = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=runner.run_trial, args=(spec, writer), name=f"retia-trial-{spec.trial}"
        )
        process.start()
        self._orphans.started(process)
        writer.close()
        return Launched(process, pipe.Reader(reader))

    def takes_more(self, process: BaseProcess, queued: int) -> bool:
        return False

    def skip(self, trial: str, attempt: int) -> None:
        """Nothing queues in a fresh process."""

    def retire(self, process: BaseProcess) -> None:
        """A fresh process exits by itself after its trial; what a dead one left is killed."""
        self._orphans.kill()

    def flush(self) -> None:
        """Nothing is ever written to a running fresh process."""

    def waiting_fd(self) -> int | None:
        return None

    def idle(self) -> None:
        """Fork the next trial's process now (~20 ms), while no trial's reports wait on it."""
        if self._spare is not None and alive(self._spare.process):
            return
        if self._spare is not None:  # it died while waiting (killed from outside): replace it
            _discard(self._spare)
        reader, writer = self._mp.Pipe(duplex=False)
        spec_reader, spec_writer = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=runner.await_trial, args=(spec_reader, writer), name="retia-trial-spare"
        )
        process.start()
        self._orphans.started(process)
        writer.close()
        spec_reader.close()
        self._spare = _Spare(process, spec_writer, pipe.Reader(reader))

    def file_scratch(self, output_dir: str, describe: Callable[[], str]) -> None:
        """A fresh process writes straight into its trial's own directory."""

    def shutdown(self) -> None:
        if self._spare is not None:
            self._spare.specs.close()  # it sees EOF and exits
            self._spare.messages.close()
            _stop(self._spare.process)
            self._spare = None
        self._orphans.kill()


class ReusedChild:
    """One long-lived child (``--reuse-process``) running the specs queued in its pipe in order."""

    reused = True

    def __init__(self, mp: ForkServerContext, scratch: str) -> None:
        self._mp = mp
        self.scratch = scratch
        self._child: _Child | None = None
        self._orphans = _Orphans()

    def launch(self, spec: runner.TrialSpec, busy: bool) -> Launched | None:
        if spec.mates:  # beside the child, which runs single trials
            return launch_pack(self._mp, spec, self._orphans)
        child = self._child
        if child is not None:
            if self._send(spec):
                return Launched(child.process, child.messages)
            if busy:
                return None  # it died under the running trial: this one waits for the next child
            self._child = None  # it died while idle (killed from outside): replace it
            child.specs.close()
            child.messages.close()
            child.process.join()
        reader, writer = self._mp.Pipe(duplex=False)
        spec_reader, spec_writer = self._mp.Pipe(duplex=False)
        process = self._mp.Process(
            target=runner.serve_trials, args=(spec, spec_reader, writer), name=f"retia-trial-{spec.trial}"
        )
        process.start()
        self._orphans.started(process)
        writer.close()
        spec_reader.close()
        self._child = _Child(process, SpecWriter(spec_writer), pipe.Reader(reader))
        return Launched(process, self._child.messages)

    def takes_more(self, process: BaseProcess, queued: int) -> bool:
        child = self._child
        return (
            child is not None
            and child.process is process
            and queued < CHILD_AHEAD
            and not child.specs.pending
            and alive(process)
        )

    def skip(self, trial: str, attempt: int) -> None:
        """The child answers TrialSkipped in its place; if it started meanwhile, the agent kills it."""
        if self._child is not None:
            self._send(pipe.SkipTrial(trial, attempt))

    def retire(self, process: BaseProcess) -> None:
        if self._child is not None and self._child.process is process:
            self._child.specs.close()
            self._child = None
        self._orphans.kill()  # the child died: what its trial started went to the fork server

    def flush(self) -> None:
        child = self._child
        if child is not None and child.specs.pending:
            try:
                child.specs.flush()
            except OSError:
                pass  # the child is gone: its exit is seen through its sentinel

    def waiting_fd(self) -> int | None:
        child = self._child
        return child.specs.fd if child is not None and child.specs.pending else None

    def idle(self) -> None:
        """The child stays up between trials: nothing to prepare."""

    def shutdown(self) -> None:
        if self._child is not None:
            self._child.specs.close()  # the child's recv() sees EOF and it exits
            _stop(self._child.process)
            self._child = None
        self._orphans.kill()
        runner.remove_quiet_scratch(self.scratch)

    def file_scratch(self, output_dir: str, describe: Callable[[], str]) -> None:
        """The child died in a trial: what it left in the scratch directory is that trial's."""
        try:
            runner.file_scratch(self.scratch, output_dir)
        except OSError as exc:
            _log.warning("files of %s left in %s: %s", describe(), self.scratch, exc)

    def _send(self, item: Any) -> bool:
        """Into the child's queue; False when it has died."""
        child = self._child
        if child is None or not alive(child.process):
            return False
        try:
            child.specs.send(item)
            return True
        except OSError:
            return False


def strategy_for(mp: ForkServerContext, reuse_process: bool, trials_dir: str) -> ProcessStrategy:
    """The strategy a worker's settings ask for; a reused child's scratch is one per agent process."""
    if reuse_process:
        return ReusedChild(mp, os.path.join(trials_dir, f".reused-{os.getpid()}"))
    return FreshProcesses(mp)


def _stat(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command's name: state, parent, ... ([] when gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _parent(pid: int) -> int | None:
    """The parent of ``pid`` (None without /proc, or when it is gone)."""
    fields = _stat(pid)
    return int(fields[1]) if len(fields) > 1 else None


def _zombie(pid: int) -> bool:
    """It exited and waits for its parent to reap it (or is gone): nothing to kill."""
    fields = _stat(pid)
    return not fields or fields[0] == b"Z"


def _discard(spare: _Spare) -> None:
    spare.process.join()
    spare.specs.close()
    spare.messages.close()


def _stop(process: BaseProcess) -> None:
    process.join(timeout=5)
    if process.is_alive():
        process.kill()
        process.join()


def reap(exiting: list[Exiting], now: float) -> None:
    """Join trial processes that exited after fit ended; SIGKILL the group of one past its deadline."""
    for entry in list(exiting):
        if not entry.process.is_alive():
            entry.process.join()
            exiting.remove(entry)
        elif now > entry.deadline:
            pid = entry.process.pid
            _log.warning("trial process %s lingers after fit ended; killing it", pid)
            try:
                if pid is None:  # never started: nothing of it runs
                    raise ProcessLookupError
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                entry.process.kill()
