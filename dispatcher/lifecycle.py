"""A trial's states and the moves between them, decided apart from sockets and the journal.

::

    QUEUED --start--> RUNNING --finished--> SUCCEEDED | FAILED | CANCELLED
    RUNNING --failed (too large for its worker, reports lost)--> FAILED
    QUEUED --cancel--> CANCELLED
    QUEUED --failed (no worker has the GPUs it asks for)--> FAILED
    RUNNING --lost, retries left (or only held there)--> QUEUED      (the attempt is spent)
    RUNNING --given back unstarted--> QUEUED                          (the attempt is not spent)
    RUNNING --lost: final stored | cancel asked | retries spent--> SUCCEEDED | CANCELLED | FAILED

Each function changes one :class:`~retia.dispatcher.journal.TrialRecord` and returns the state
it is now in; the service journals it, tells the client and moves the queue. A move the table
does not allow raises :class:`~retia.errors.TrialStateError`.
"""

from __future__ import annotations

from retia.errors import TrialStateError
from retia.failure import Failure, FailureKind
from retia.protocol import Done, TrialState

from .journal import TrialRecord

__all__ = ["ALLOWED", "start", "finished", "failed", "lost", "given_back", "cancel"]

ALLOWED: dict[TrialState, frozenset[TrialState]] = {
    TrialState.QUEUED: frozenset({TrialState.RUNNING, TrialState.CANCELLED, TrialState.FAILED}),
    TrialState.RUNNING: frozenset(
        {TrialState.QUEUED, TrialState.SUCCEEDED, TrialState.FAILED, TrialState.CANCELLED}
    ),
    TrialState.SUCCEEDED: frozenset(),
    TrialState.FAILED: frozenset(),
    TrialState.CANCELLED: frozenset(),
}


def _move(rec: TrialRecord, to: TrialState) -> TrialState:
    if to not in ALLOWED[rec.state]:
        raise TrialStateError(f"trial {rec.id} cannot go from {rec.state.value} to {to.value}")
    rec.state = to
    return to


def start(rec: TrialRecord, worker: str) -> TrialState:
    """Given to a worker: a new attempt, with nothing left of the last one's failure."""
    _move(rec, TrialState.RUNNING)
    rec.attempt, rec.worker, rec.reason, rec.failure = rec.attempt + 1, worker, "", None
    rec.reports = 0
    return rec.state


def failed(rec: TrialRecord, failure: Failure) -> TrialState:
    """The attempt cannot go on, for a reason the dispatcher found (not its worker's verdict)."""
    rec.reason, rec.failure = failure.reason, failure
    return _move(rec, TrialState.FAILED)


def finished(rec: TrialRecord, done: Done) -> TrialState:
    """The worker says how the attempt ended; a cancelled trial that did not succeed is CANCELLED."""
    state = done.state
    if rec.cancel_requested and state is not TrialState.SUCCEEDED:
        state = TrialState.CANCELLED
    rec.reason = done.reason or (done.failure.reason if done.failure else "")
    rec.failure = done.failure
    return _move(rec, state)


def lost(rec: TrialRecord, reason: str, *, held: bool, final_stored: bool) -> TrialState:
    """The attempt's worker is gone: run it again if it may, else end it as its record says.

    A trial the worker only held behind the running one is queued again whatever its attempt
    count: it most likely never started, and it cannot have caused the loss."""
    rec.reason = reason
    if final_stored:  # its result is in: running it again would report a second final
        rec.reason = f"{reason} after its final result was stored"
        return _move(rec, TrialState.SUCCEEDED)
    if rec.cancel_requested:
        return _move(rec, TrialState.CANCELLED)
    if held or rec.attempt <= rec.max_retries:
        rec.worker = ""
        return _move(rec, TrialState.QUEUED)
    rec.reason = f"{reason} (after {rec.attempt} attempts)"
    rec.failure = Failure(FailureKind.WORKER_LOST, rec.reason, "WorkerLostError", rec.reason)
    return _move(rec, TrialState.FAILED)


def given_back(rec: TrialRecord) -> TrialState:
    """A worker returned a held trial it never started: queued again, its attempt not spent."""
    _move(rec, TrialState.QUEUED)
    rec.worker, rec.attempt = "", rec.attempt - 1
    return rec.state


def cancel(rec: TrialRecord, reason: str) -> TrialState:
    """Cancellation asked: a queued trial ends now; a running one ends when its worker stops it."""
    rec.cancel_requested, rec.reason = True, reason
    if rec.state is TrialState.QUEUED:
        return _move(rec, TrialState.CANCELLED)
    return rec.state
