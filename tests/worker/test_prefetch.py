"""``retia worker --prefetch`` (on with --reuse-process): a worker holds the next trial while one runs."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.dispatcher.cluster import local_cluster
from retia.errors import TrialCancelledError
from retia.protocol import TrialState

from ..clusters import FAST, journal_path, processes, worker_index
from ..integration import fits

pytestmark = pytest.mark.timeout(240)


def _wait_for(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_held_trial_can_be_cancelled_and_the_slot_is_refilled(tmp_path: Path) -> None:
    with local_cluster(workers=1, home=tmp_path / "c", worker_args=["--reuse-process"], **FAST) as backend:  # type: ignore[arg-type]
        running = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=20, delay=0.1))
        held = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        next(running.reports(timeout=60))
        _wait_for(lambda: held.state is TrialState.RUNNING)  # sent to the busy worker: it holds it
        held.cancel()
        with pytest.raises(TrialCancelledError):
            held.result(timeout=60)
        after = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=2))
        assert running.result(timeout=60) == 20.0 and after.result(timeout=60) == 2.0
        assert (running.attempt, held.attempt, after.attempt) == (1, 1, 1)
        assert not list((tmp_path / "c").glob(f"worker-0/trials/{held.id}-*"))  # it never started


def test_killing_a_worker_that_holds_a_trial_loses_neither(tmp_path: Path) -> None:
    with local_cluster(workers=2, home=tmp_path / "c", worker_args=["--reuse-process"], **FAST) as backend:  # type: ignore[arg-type]
        slow = FunctionalEvaluator(fits.counting, steps=8, delay=0.25)
        trials = [backend.submit(fits.DigitsMLP, slow) for _ in range(4)]  # two per worker: one runs, one waits
        next(trials[0].reports(timeout=60))
        victim = worker_index(backend, trials[0].worker)
        held = [t for t in trials if t.state is TrialState.RUNNING and worker_index(backend, t.worker) == victim]
        assert len(held) == 2
        processes(backend).worker_procs[victim].kill()  # SIGKILL the agent
        assert [t.result(timeout=120) for t in trials] == [8.0] * 4
        assert all(worker_index(backend, t.worker) != victim and t.attempt == 2 for t in held)
        with sqlite3.connect(journal_path(backend)) as db:
            finals = db.execute("SELECT trial, COUNT(*) FROM reports WHERE final = 1 GROUP BY trial").fetchall()
        assert sorted(n for _t, n in finals) == [1, 1, 1, 1]
