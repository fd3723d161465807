"""A pack in its trial process: the RUN's trial and its mates trained together by :mod:`retia.packing`.

Each trial of the pack keeps its own messages on the trial's pipe (``member`` 0 is the RUN's
own trial, i its i-th mate): its reports, then its last message as soon as it ends (fit done,
failed, or stopped), while the others train on. A mate is cancelled by a :class:`~retia.worker.
pipe.SkipTrial` naming it on the agent's control pipe; a trial past its own timeout is stopped
by the pack itself. Every mate's output directory gets the pack's log as its ``trial.log``.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from . import pipe

__all__ = ["MateSpec", "evaluate_pack"]


@dataclass(frozen=True)
class MateSpec:
    """A trial riding in another's RUN: what the trial process needs of it."""

    trial: str
    attempt: int
    model: bytes
    output_dir: str
    seed: int | None = None
    timeout: float | None = None


@dataclass
class _Member:
    index: int
    trial: str
    attempt: int
    model: bytes
    output_dir: str
    seed: int
    deadline: float | None
    timeout: float | None
    ended: bool = False


def evaluate_pack(
    spec: Any,
    output_dir: str,
    log_file: str,
    conn: Connection,
    cancelled: Callable[[], set[tuple[str, int]]],
    reporter_of: Callable[[Connection, int], Any],
) -> None:
    """Train the RUN's trial (``spec``, in ``output_dir``) and its mates as one pack; each trial's
    last message goes out when it ends. ``cancelled()`` gives the (trial, attempt) the agent
    cancelled so far; ``reporter_of(conn, member)`` a member's reporter on the pipe."""
    from retia.packing import PackedOutcome, PackMember, fit_pack
    from retia.serializer import load

    now = time.monotonic()
    members = [
        _Member(
            0,
            spec.trial,
            spec.attempt,
            spec.model,
            output_dir,
            _seed(spec.seed, spec.trial),
            None,
            spec.timeout,
        )
    ]
    members += [
        _Member(i, m.trial, m.attempt, m.model, m.output_dir, _seed(m.seed, m.trial), None, m.timeout)
        for i, m in enumerate(spec.mates, start=1)
    ]
    for member in members:
        if member.timeout:
            member.deadline = now + member.timeout
    print(f"retia: a pack of {len(members)} trials: {', '.join(m.trial for m in members)}", flush=True)

    def end(member: _Member, message: pipe.TrialMessage) -> None:
        if member.ended:
            return
        member.ended = True
        sys.stdout.flush()
        sys.stderr.flush()
        if member.index:
            _copy_log(log_file, member.output_dir)
        pipe.send(conn, message)

    def ended(member: _Member) -> Callable[[PackedOutcome], None]:
        def tell(outcome: PackedOutcome) -> None:
            if outcome.error is not None:
                error = outcome.error
                end(member, pipe.raised(type(error).__name__, str(error), outcome.traceback, member.index))
            elif outcome.stopped:
                timed_out = member.deadline is not None and time.monotonic() > member.deadline
                end(member, pipe.TrialStopped(member.index, outcome.stopped, timed_out))
            else:
                end(member, pipe.TrialReturned(member.index))

        return tell

    def stop(member: _Member) -> Callable[[], str]:
        def reason() -> str:
            if (member.trial, member.attempt) in cancelled():
                return "cancelled"
            if member.deadline is not None and time.monotonic() > member.deadline:
                return f"timed out after {member.timeout:.1f}s"
            return ""

        return reason

    pack: list[PackMember] = []
    watchdog = _Watchdog({}, stop)
    try:
        blob_dir = Path(spec.blob_dir) if spec.blob_dir else None
        evaluator = load(spec.evaluator, blob_dir=blob_dir)
        for member in members:
            os.makedirs(member.output_dir, exist_ok=True)
            try:
                model = load(member.model, blob_dir=blob_dir)
            except Exception as exc:  # this trial's payload: it fails alone
                end(member, _raised(exc, member.index))
                continue
            reporter = reporter_of(conn, member.index)
            pack.append(
                PackMember(model, member.seed, Path(member.output_dir), reporter, stop(member), ended(member))
            )
            watchdog.members[id(pack[-1])] = member
        with watchdog:
            fit_pack(evaluator, pack)
    except BaseException as exc:  # the pack's own failure (its evaluator, its trainer): every trial's
        for member in members:
            end(member, _raised(exc, member.index))


class _Watchdog:
    """Between its batches a pack stops the trials past their timeout or cancelled; a trial whose
    own code does not come back (a step that hangs in Python, a sleep) is stopped from a timer
    signal instead, raised into that trial's code alone (code stuck in C is the agent's to kill)."""

    INTERVAL = 0.5

    def __init__(self, members: dict[int, _Member], stop: Callable[[_Member], Callable[[], str]]) -> None:
        self.members = members  # by id() of their PackMember
        self.stop = stop
        self._previous: Any = None

    def __enter__(self) -> _Watchdog:
        self._previous = signal.signal(signal.SIGALRM, self._tick)
        signal.setitimer(signal.ITIMER_REAL, self.INTERVAL, self.INTERVAL)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._previous)

    def _tick(self, signum: int, frame: Any) -> None:
        from retia.packing import StopCandidate, running_member

        running = running_member()
        member = self.members.get(id(running)) if running is not None else None
        if member is None:
            return  # between the trials' own code (Lightning's loop, the data): nothing to stop
        reason = self.stop(member)()
        if reason:
            raise StopCandidate(reason)


def _seed(seed: int | None, trial: str) -> int:
    from retia.seeding import trial_seed

    return trial_seed(trial) if seed is None else seed


def _raised(exc: BaseException, member: int) -> pipe.TrialRaised:
    text = "".join(traceback.format_exception(exc))
    sys.stderr.write(text)
    return pipe.raised(type(exc).__name__, str(exc), text, member)


def _copy_log(log_file: str, output_dir: str) -> None:
    """The pack's log so far, as a mate's own ``trial.log``."""
    try:
        shutil.copyfile(log_file, os.path.join(output_dir, "trial.log"))
    except OSError as exc:
        print(f"retia: the pack's log was not copied to {output_dir}: {exc}", flush=True)
