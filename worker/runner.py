"""The trial process: forked from the preloaded fork server, runs one evaluation, reports over a pipe.

It never touches the network. It tells the agent what happens in :mod:`retia.worker.pipe`
messages on a one-way pipe: reports, then exactly one of "raised" or "returned". Whatever
else happens (a segfault, ``os._exit``, a SIGKILL) the agent sees through the process's exit
status.

With ``--reuse-process`` the agent queues several specs in the child's pipe and the child
runs them in order, so the agent tells trials apart by order alone; a spec cancelled
before it started (a ``SkipTrial`` on the same pipe) is answered with ``TrialSkipped`` in
its place. Such a child runs every trial in one scratch directory
(its output directory, with ``trial.log`` for what it prints) and renames it to the
trial's own directory before its last message, only if the trial left something there:
a quiet trial creates no directory and no file (creating them costs as much as the rest of a
no-op trial: docs/benchmarks.md). If the child dies mid-trial, the agent does the renaming.

Every process a trial starts dies with it: the trial process is a child subreaper (Linux), so
what its descendants orphan (a double fork, ``setsid``) comes back to it, and before its last
message it kills and reaps all of them. A reused child also puts back the environment and the
working directory it had before the trial. What a trial process that died leaves (its orphans
go to the fork server, a subreaper too) the agent kills (:mod:`retia.worker.processes`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
import traceback
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from retia.devices import TRIAL_GPUS_ENV

from . import pipe, trial_devices
from .isolation import TrialUser, become, forget_credentials, limit_memory
from .packed import MateSpec, evaluate_pack

__all__ = [
    "TrialSpec",
    "run_trial",
    "run_pack",
    "await_trial",
    "serve_trials",
    "warm_up",
    "file_scratch",
    "remove_quiet_scratch",
    "become_subreaper",
    "children_of",
    "descendants",
    "kill_descendants",
]

GPU_MEMORY_FRACTION_ENV = "RETIA_GPU_MEMORY_FRACTION"  # a trial's share of its GPU, when it shares one
_PR_SET_PDEATHSIG = 1
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
_REAP_SECONDS = 2.0  # how long a trial process waits for the processes it killed to be reaped


def _preload() -> None:
    """Runs when the fork server imports this module: every trial forks with warm caches."""
    from retia.serializer import warm_up as _warm_serializer

    _warm_serializer()


_preload()


@dataclass(frozen=True)
class TrialSpec:
    """Everything the child needs; built by the agent from a verified RUN message."""

    trial: str
    attempt: int
    evaluator: bytes
    model: bytes
    output_dir: str
    log_file: str
    cuda_visible_devices: str
    threads: int
    blob_dir: str = ""
    scratch: str = ""  # --reuse-process: the trial runs here; renamed to output_dir if it left anything
    user: TrialUser | None = None  # --trial-user: the process becomes this user before the trial's code runs
    resume: str = ""  # the digest of the checkpoint a previous attempt left (in blob_dir): put in place first
    seed: int | None = None  # the trial's (every attempt's): what it runs under (None: nothing seeded)
    # a pack: the trials trained with this one in its process (retia.worker.packed), and its own
    # timeout, which the pack enforces for each of its trials
    mates: tuple[MateSpec, ...] = ()
    timeout: float | None = None
    memory_limit: int = 0  # --trial-memory-mb: bytes it may allocate beyond the fork server's (0: no cap)
    gpu_memory_fraction: float = 1.0  # --trials-per-gpu: its share of each of its GPUs' memory


def warm_up() -> None:
    """A no-op child: starting it makes the fork server import torch and Lightning once, up front."""


def run_trial(spec: TrialSpec, conn: Connection) -> None:
    """Run one trial in this fresh process, then exit."""
    _become_trial_process(spec)
    outcome = _evaluate(spec, spec.output_dir, conn)
    kill_descendants()
    pipe.send(conn, outcome)
    conn.close()


def run_pack(spec: TrialSpec, conn: Connection, control: Connection) -> None:
    """Run a pack (the spec's trial and its mates) in this fresh process, then exit; a
    :class:`~retia.worker.pipe.SkipTrial` on ``control`` cancels one of its trials."""
    _become_trial_process(spec)
    cancelled: set[tuple[str, int]] = set()

    reading = [False]  # (the pack's watchdog may ask from a signal handler while a batch asks)

    def read_control() -> set[tuple[str, int]]:
        if reading[0]:
            return cancelled
        reading[0] = True
        try:
            while control.poll():
                item = control.recv()
                if isinstance(item, pipe.SkipTrial):
                    cancelled.add((item.trial, item.attempt))
        except (EOFError, OSError):
            pass  # the agent is gone: this process dies with it
        finally:
            reading[0] = False
        return cancelled

    evaluate_pack(spec, spec.output_dir, spec.log_file, conn, read_control, _pipe_reporter)
    kill_descendants()
    conn.close()


def await_trial(specs: Connection, conn: Connection) -> None:
    """A spare, forked ahead of time: waits for one trial, runs it in this fresh process, exits."""
    try:
        spec = specs.recv()
    except EOFError:
        return  # the agent stopped (or died) before it needed us
    specs.close()
    _become_trial_process(spec)
    outcome = _evaluate(spec, spec.output_dir, conn)
    kill_descendants()
    pipe.send(conn, outcome)
    conn.close()


def serve_trials(first: TrialSpec, specs: Connection, conn: Connection) -> None:
    """``--reuse-process``: run queued trials one after another in this long-lived process."""
    _become_trial_process(first)
    environ, cwd = dict(os.environ), os.getcwd()  # what each trial starts from
    snapshot = _environ_snapshot()
    backlog: deque[TrialSpec] = deque([first])
    cancelled: set[tuple[str, int]] = set()
    while True:
        try:
            while not backlog or specs.poll():  # take what the agent sent, without waiting when there is work
                item = specs.recv()
                if isinstance(item, TrialSpec):
                    backlog.append(item)
                elif isinstance(item, pipe.SkipTrial):
                    cancelled.add((item.trial, item.attempt))
        except EOFError:
            return  # the agent stopped
        spec = backlog.popleft()
        if (spec.trial, spec.attempt) in cancelled:
            cancelled.discard((spec.trial, spec.attempt))
            pipe.send(conn, pipe.TrialSkipped())
            continue
        outcome = _evaluate(spec, spec.scratch, conn)
        kill_descendants()  # what this trial started ends with it, before the next starts
        _restore(environ, snapshot, cwd)
        _file_scratch(spec)
        pipe.send(conn, outcome)


def _become_trial_process(spec: TrialSpec) -> None:
    os.setsid()  # own process group: the agent kills the trial and anything it spawned together
    if spec.user is not None:
        become(spec.user)
        # Linux made it non-dumpable (its /proc files root's: the trial could not read even its
        # own); it holds nothing of root's (the fork server started without the credential)
        _prctl(_PR_SET_DUMPABLE, 1)
        if not os.access(os.getcwd(), os.X_OK):  # the worker's directory is not the trial user's
            os.chdir(os.path.dirname(spec.output_dir))
    _die_with_parent()  # (after the switch: a change of uid clears the parent-death signal)
    become_subreaper()  # what escapes the group (setsid, a double fork) stays ours to kill
    forget_credentials()  # the worker took them out before the fork server started: again, to be sure
    if spec.memory_limit:
        limit_memory(spec.memory_limit)
    os.environ["CUDA_VISIBLE_DEVICES"] = os.environ[TRIAL_GPUS_ENV] = spec.cuda_visible_devices
    _share_gpus(spec)
    _redirect_output(_scratch_log(spec.scratch) if spec.scratch else spec.log_file)
    if spec.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(spec.threads)


def _share_gpus(spec: TrialSpec) -> None:
    """A trial sharing its GPU (``--trials-per-gpu``) is capped at its share of the device's memory
    (``RETIA_GPU_MEMORY_FRACTION`` says it to the trial's code too): past it, it runs out of memory,
    not its neighbours. Here in the trial process, which may initialize CUDA (the fork server may not)."""
    if spec.gpu_memory_fraction >= 1.0:
        os.environ.pop(GPU_MEMORY_FRACTION_ENV, None)
        return
    os.environ[GPU_MEMORY_FRACTION_ENV] = str(spec.gpu_memory_fraction)
    torch = sys.modules.get("torch")
    if torch is not None and spec.cuda_visible_devices and torch.cuda.is_available():
        for device in range(torch.cuda.device_count()):
            torch.cuda.set_per_process_memory_fraction(spec.gpu_memory_fraction, device)


def _evaluate(spec: TrialSpec, output_dir: str, conn: Connection) -> pipe.TrialRaised | pipe.TrialReturned:
    """Run fit (reports go out as they come); the trial's last message, sent once its files are in place."""
    from retia.seeding import seed_everything
    from retia.serializer import load  # preloaded by the fork server: a dictionary lookup

    trial_devices.watch()
    try:
        return _fit(spec, output_dir, conn, load, seed_everything)
    finally:  # what its GPUs were and did, just before its last message
        pipe.send(conn, pipe.TrialDevices(trial_devices.facts(spec.cuda_visible_devices)))


def _fit(
    spec: TrialSpec, output_dir: str, conn: Connection, load: Any, seed_everything: Any
) -> pipe.TrialRaised | pipe.TrialReturned:
    try:
        blob_dir = Path(spec.blob_dir) if spec.blob_dir else None
        if spec.resume and blob_dir is not None:
            _place_checkpoint(blob_dir / spec.resume, output_dir)
        if spec.seed is not None:  # what rebuilding the payloads draws (a dataset's split, say) repeats too
            seed_everything(spec.seed)
        evaluator = load(spec.evaluator, blob_dir=blob_dir)
        model = load(spec.model, blob_dir=blob_dir)
        # (evaluate seeds again right before it builds the model: what comes before cannot shift it)
        evaluator.evaluate(model, output_dir=output_dir, reporter=_pipe_reporter(conn), seed=spec.seed)
    except BaseException as exc:
        text = traceback.format_exc()
        sys.stderr.write(text)  # in full to trial.log; cut to its bounds for DONE
        sys.stderr.flush()
        return pipe.raised(type(exc).__name__, _describe(exc), text)
    sys.stdout.flush()
    sys.stderr.flush()
    return pipe.TrialReturned()


def _place_checkpoint(blob: Path, output_dir: str) -> None:
    """The previous attempt's checkpoint, copied where ``retia.checkpoint.restore()`` finds it."""
    import shutil

    from retia.checkpoint import CHECKPOINT_FILE

    os.makedirs(output_dir, exist_ok=True)
    shutil.copyfile(blob, os.path.join(output_dir, CHECKPOINT_FILE))
    print(f"retia: resuming from the checkpoint of a previous attempt ({blob.name[:12]})", flush=True)


def _scratch_log(scratch: str) -> str:
    return os.path.join(scratch, "trial.log")


def file_scratch(scratch: str, output_dir: str) -> bool:
    """Rename the scratch directory to the trial's own if the trial left anything in it.

    True when the scratch is gone (renamed, or removed by fit itself) and must be made again."""
    try:
        entries = os.listdir(scratch)
    except FileNotFoundError:
        return True
    if _quiet(scratch, entries):
        return False  # a quiet trial: no directory of its own, nothing to ship
    if entries:
        _relink(scratch)
        os.rename(scratch, output_dir)
    else:
        os.rmdir(scratch)  # fit removed even the log
    return True


def remove_quiet_scratch(scratch: str) -> None:
    """At a clean stop: the scratch directory goes if it holds only its empty log."""
    try:
        if _quiet(scratch, os.listdir(scratch)):
            os.remove(_scratch_log(scratch))
            os.rmdir(scratch)
    except OSError:
        pass  # gone already, or the last trial left something: kept for a look


def _quiet(scratch: str, entries: list[str]) -> bool:
    return entries == ["trial.log"] and os.stat(_scratch_log(scratch)).st_size == 0


def _relink(scratch: str) -> None:
    """Absolute links into the scratch directory become relative, so they survive its renaming."""
    prefix = scratch + os.sep
    for directory, dirs, files in os.walk(scratch):
        for name in dirs + files:
            path = os.path.join(directory, name)
            if os.path.islink(path) and (target := os.readlink(path)).startswith(prefix):
                os.unlink(path)
                os.symlink(os.path.relpath(target, directory), path)


def _file_scratch(spec: TrialSpec) -> None:
    if file_scratch(spec.scratch, spec.output_dir):
        _redirect_output(_scratch_log(spec.scratch))  # the next trial gets a fresh scratch and log


def _pipe_reporter(conn: Connection, member: int = 0) -> Any:
    """A Reporter that sends each metric to the agent as it comes (``member``: which trial of a pack)."""
    from retia.protocol import pack_metric
    from retia.reporting import Reporter

    global _PipeReporter
    if _PipeReporter is None:

        class _Reporter(Reporter):
            def __init__(self, conn: Connection, member: int) -> None:
                super().__init__()
                self.conn = conn
                self.member = member

            def _emit(self, final: bool, value: Any) -> None:
                report = pipe.TrialReport(final, pack_metric(value), self.member)  # packed once, here
                pipe.send(self.conn, report)

            def checkpoint(self) -> None:
                pipe.send(self.conn, pipe.TrialCheckpoint())

        _PipeReporter = _Reporter
    return _PipeReporter(conn, member)


_PipeReporter: Any = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"fit called sys.exit({exc.code!r})"
    return str(exc)


def _redirect_output(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)  # here, not in the agent: a skipped trial leaves none
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _environ_snapshot() -> object:
    """What to compare the environment with after a trial: CPython's encoded copy when it has one
    (comparing it costs about 1 us; comparing ``os.environ`` itself decodes every variable, about 20,
    and this runs for every trial of a reused child)."""
    data = getattr(os.environ, "_data", None)
    return dict(data) if isinstance(data, dict) else dict(os.environ)


def _restore(environ: dict[str, str], snapshot: object, cwd: str) -> None:
    """Put back the environment and working directory a reused child had before the trial."""
    if _environ_snapshot() != snapshot:
        for name in [name for name in os.environ if name not in environ]:
            del os.environ[name]
        for name, value in environ.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
    try:
        if os.getcwd() != cwd:
            os.chdir(cwd)
    except OSError:  # the trial removed the directory it was in
        os.chdir(cwd)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the fork server (its parent) dies with the agent."""
    _prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL))


def become_subreaper() -> None:
    """Orphaned descendants of this process come to it, not to init (Linux; elsewhere a no-op)."""
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def _prctl(option: int, value: int) -> None:
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value)
    except (OSError, AttributeError):
        pass


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid``, parents before their children (Linux's /proc; else none)."""
    found: list[int] = []
    parents = [pid]
    while parents:
        children = [child for parent in parents for child in children_of(parent)]
        found += children
        parents = children
    return found


def children_of(pid: int) -> list[int]:
    """The children of ``pid`` (zombies included), from every thread's /proc list; [] without /proc."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []  # gone, or no /proc
    children: list[int] = []
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                children += [int(child) for child in f.read().split()]
        except OSError:
            pass  # the thread ended
    return children


def kill_descendants() -> None:
    """SIGKILL every descendant of this process, again for any forked meanwhile, and reap them
    (as a subreaper it is the parent of their orphans); gives up on what outlives 2 s."""
    try:
        os.waitpid(-1, os.WNOHANG)  # (a child that ended is reaped here: it would be below anyway)
    except ChildProcessError:
        return  # no child at all, so no descendant (an orphan comes to us): one system call
    deadline = time.monotonic() + _REAP_SECONDS
    while (found := descendants(os.getpid())) and time.monotonic() < deadline:
        for child in found:
            try:
                os.kill(child, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _reap(deadline)


def _reap(deadline: float) -> None:
    """Wait for this process's children (all of them killed) until none is left or ``deadline``."""
    while True:
        try:
            child, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if child == 0:
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
