"""A trial's moves between states, on plain records: retries, cancellation, give-back, refusals."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from retia.dispatcher import lifecycle
from retia.dispatcher.journal import TrialRecord
from retia.errors import TrialStateError
from retia.failure import Failure, FailureKind
from retia.protocol import Done, TrialState


def _record(max_retries: int = 1) -> TrialRecord:
    return TrialRecord("t", "client", "n", TrialState.QUEUED, 0, max_retries, None, None, 0)


def _done(state: TrialState, failure: Failure | None = None) -> Done:
    return Done("t", 1, 1, state, "", failure)


def test_a_start_is_a_new_attempt_without_the_last_ones_failure() -> None:
    rec = _record()
    rec.failure, rec.reason = Failure(FailureKind.RAISED, "old"), "old"
    assert lifecycle.start(rec, "w1") is TrialState.RUNNING
    # mypy keeps rec.failure narrowed to the Failure set above: it cannot see start() clear it
    assert (rec.attempt, rec.worker, rec.reason, rec.failure) == (1, "w1", "", None)  # type: ignore[comparison-overlap]


def test_a_lost_attempt_is_retried_until_its_retries_are_spent() -> None:
    rec = _record(max_retries=1)
    lifecycle.start(rec, "w1")
    assert lifecycle.lost(rec, "worker lost", held=False, final_stored=False) is TrialState.QUEUED
    assert rec.worker == ""
    lifecycle.start(rec, "w2")
    assert lifecycle.lost(rec, "worker lost", held=False, final_stored=False) is TrialState.FAILED
    assert rec.failure is not None and rec.failure.kind is FailureKind.WORKER_LOST
    assert rec.failure.exc_type == "WorkerLostError" and "after 2 attempts" in rec.reason


def test_a_held_trial_is_queued_again_whatever_its_attempts() -> None:
    rec = _record(max_retries=0)
    lifecycle.start(rec, "w1")
    assert lifecycle.lost(rec, "worker lost", held=True, final_stored=False) is TrialState.QUEUED


def test_a_lost_trial_whose_final_is_stored_succeeds_and_a_cancelled_one_is_cancelled() -> None:
    rec = _record()
    lifecycle.start(rec, "w1")
    assert lifecycle.lost(rec, "worker lost", held=False, final_stored=True) is TrialState.SUCCEEDED
    assert rec.reason == "worker lost after its final result was stored"
    other = _record()
    lifecycle.start(other, "w1")
    lifecycle.cancel(other, "stop")
    assert lifecycle.lost(other, "worker lost", held=False, final_stored=False) is TrialState.CANCELLED


def test_a_cancelled_trial_that_did_not_succeed_ends_cancelled() -> None:
    rec = _record()
    lifecycle.start(rec, "w1")
    assert lifecycle.cancel(rec, "by the user") is TrialState.RUNNING  # its worker stops it
    failure = Failure(FailureKind.STOPPED, "killed")
    assert lifecycle.finished(rec, _done(TrialState.FAILED, failure)) is TrialState.CANCELLED
    succeeded = _record()
    lifecycle.start(succeeded, "w1")
    lifecycle.cancel(succeeded, "too late")
    assert lifecycle.finished(succeeded, _done(TrialState.SUCCEEDED)) is TrialState.SUCCEEDED


def test_a_queued_trial_is_cancelled_at_once() -> None:
    rec = _record()
    assert lifecycle.cancel(rec, "not needed") is TrialState.CANCELLED
    assert rec.cancel_requested and rec.reason == "not needed"


def test_a_failure_is_kept_with_its_reason() -> None:
    rec = _record()
    lifecycle.start(rec, "w1")
    failure = Failure(FailureKind.RAISED, "ValueError: bad", "ValueError", "bad", "Traceback ...")
    assert lifecycle.finished(rec, _done(TrialState.FAILED, failure)) is TrialState.FAILED
    assert rec.failure == failure and rec.reason == "ValueError: bad"


def test_a_given_back_trial_keeps_its_attempt() -> None:
    rec = _record()
    lifecycle.start(rec, "w1")
    assert lifecycle.given_back(rec) is TrialState.QUEUED
    assert (rec.attempt, rec.worker) == (0, "")


@pytest.mark.parametrize(
    "move",
    [
        lambda rec: lifecycle.finished(rec, _done(TrialState.SUCCEEDED)),
        lambda rec: lifecycle.given_back(rec),
        lambda rec: lifecycle.lost(rec, "gone", held=False, final_stored=False),
    ],
)
def test_moves_the_lifecycle_does_not_join_are_refused(move: Callable[[TrialRecord], object]) -> None:
    rec = _record()
    with pytest.raises(TrialStateError, match="cannot go from QUEUED"):
        move(rec)
    done = _record()
    lifecycle.start(done, "w1")
    lifecycle.finished(done, _done(TrialState.SUCCEEDED))
    with pytest.raises(TrialStateError, match="cannot go from SUCCEEDED to RUNNING"):
        lifecycle.start(done, "w2")
