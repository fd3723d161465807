"""The trial process: forked from the preloaded fork server, runs one evaluation, reports over a pipe.

It never touches the network. Messages to the agent are tuples on a one-way pipe:
``("report", final, value)``, then exactly one of ``("error", type, message, traceback)``
or ``("done",)``. Whatever else happens (a segfault, ``os._exit``, a SIGKILL) the agent
sees through the process's exit status.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

__all__ = ["TrialSpec", "run_trial", "await_trial", "serve_trials", "warm_up", "MSG_REPORT", "MSG_ERROR", "MSG_DONE"]

MSG_REPORT, MSG_ERROR, MSG_DONE = "report", "error", "done"


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


def warm_up() -> None:
    """A no-op child: starting it makes the fork server import torch and Lightning once, up front."""


def run_trial(spec: TrialSpec, conn: Connection) -> None:
    """Run one trial in this fresh process, then exit."""
    _become_trial_process(spec)
    _evaluate(spec, conn)
    conn.close()


def await_trial(specs: Connection, conn: Connection) -> None:
    """A spare, forked ahead of time: waits for one trial, runs it in this fresh process, exits."""
    try:
        spec = specs.recv()
    except EOFError:
        return  # the agent stopped (or died) before it needed us
    specs.close()
    _become_trial_process(spec)
    _evaluate(spec, conn)
    conn.close()


def serve_trials(first: TrialSpec, specs: Connection, conn: Connection) -> None:
    """``--reuse-process``: run trials one after another in this long-lived process."""
    _become_trial_process(first)
    spec: TrialSpec | None = first
    while spec is not None:
        _redirect_output(spec.log_file)
        _evaluate(spec, conn)
        try:
            spec = specs.recv()
        except EOFError:
            spec = None


def _become_trial_process(spec: TrialSpec) -> None:
    os.setsid()  # own process group: the agent kills the trial and anything it spawned together
    _die_with_parent()
    os.environ["CUDA_VISIBLE_DEVICES"] = spec.cuda_visible_devices
    _redirect_output(spec.log_file)
    if spec.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(spec.threads)
        torch = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(spec.threads)


def _evaluate(spec: TrialSpec, conn: Connection) -> None:
    # Imported here, after the fork, so the fork server only carries what it preloaded.
    from retia.reporting import Reporter
    from retia.serializer import load

    class _PipeReporter(Reporter):
        def _emit(self, final: bool, value: Any) -> None:
            conn.send((MSG_REPORT, final, value))

    try:
        blob_dir = Path(spec.blob_dir) if spec.blob_dir else None
        evaluator = load(spec.evaluator, blob_dir=blob_dir)
        model = load(spec.model, blob_dir=blob_dir)
        print(f"[retia] trial {spec.trial} attempt {spec.attempt} pid {os.getpid()}: {evaluator!r}", flush=True)
        evaluator.evaluate(model, output_dir=spec.output_dir, reporter=_PipeReporter())
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are trial failures too
        text = traceback.format_exc()
        sys.stderr.write(text)
        sys.stderr.flush()
        conn.send((MSG_ERROR, type(exc).__name__, _describe(exc), text))
        return
    sys.stdout.flush()
    sys.stderr.flush()
    conn.send((MSG_DONE,))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"fit called sys.exit({exc.code!r})"
    return str(exc)


def _redirect_output(path: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when the fork server (its parent) dies with the agent."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
