"""The DONE the agent builds for an attempt is one the dispatcher can decode, whatever its clocks say."""

from __future__ import annotations

import multiprocessing
from typing import cast

from retia import codec
from retia.protocol import DoneBatch, Run, TrialState
from retia.worker import pipe
from retia.worker.trial import RunningTrial


def test_a_trial_started_after_the_turns_clock_reading_has_no_negative_duration() -> None:
    """A reused child runs the next trial as soon as the last one ends: it is made current after
    the loop turn read its clock, and a fast one ends in that same turn. Before, its DONE said
    ``duration=-0.002``: the dispatcher refused it, undecodable, each time it was re-sent, and the
    trial stayed RUNNING for good (seen in tests/security/test_trial_credentials.py under load)."""
    process = multiprocessing.get_context("fork").Process(target=lambda: None)
    process.start()
    process.join(timeout=30)
    trial = RunningTrial(
        "t",
        1,
        process,
        cast(pipe.Reader, None),
        "/nonexistent",
        "/nonexistent/trial.log",
        cast(Run, None),
        started=100.002,
        returned=True,
    )
    done = trial.outcome(100.0, 1, [], [])
    assert done.state is TrialState.SUCCEEDED and done.duration == 0.0
    [decoded] = codec.unpack(DoneBatch, codec.pack(DoneBatch([done]))).items  # as the dispatcher reads it
    assert decoded.duration == 0.0
