"""Worker loss and cancellation, for real: orphaned trial processes die, retries are bounded."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend
from retia.errors import TrialFailedError
from retia.protocol import TrialState

from ..clusters import journal_path, processes, worker_index
from ..integration import fits

pytestmark = pytest.mark.timeout(240)


def _wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _trial_pid(backend: Backend, trial_id: str, index: int, attempt: int) -> int:
    log = processes(backend).home / f"worker-{index}" / "trials" / f"{trial_id}-{attempt}" / "trial.log"
    _wait_for(lambda: log.exists() and " pid " in log.read_text(), what="the trial log")
    match = re.search(r" pid (\d+)", log.read_text())
    assert match is not None
    return int(match.group(1))


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_worker_killed_mid_trial_reruns_on_the_other_worker_once(fresh_cluster: Backend) -> None:
    trial = fresh_cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=6, delay=0.4))
    reports = trial.reports(timeout=60)
    assert next(reports) == 0.0
    victim = worker_index(fresh_cluster, trial.worker)
    child = _trial_pid(fresh_cluster, trial.id, victim, 1)
    processes(fresh_cluster).worker_procs[victim].kill()  # SIGKILL the agent

    assert trial.result(timeout=90) == 6.0
    assert trial.attempt == 2 and trial.worker != ""
    assert worker_index(fresh_cluster, trial.worker) != victim
    _wait_for(lambda: not _alive(child), timeout=10, what="the orphaned trial process to die")
    with sqlite3.connect(journal_path(fresh_cluster)) as db:
        finals = db.execute(
            "SELECT attempt FROM reports WHERE trial = ? AND final = 1", (trial.id,)
        ).fetchall()
        state = db.execute("SELECT state, attempt FROM trials WHERE id = ?", (trial.id,)).fetchone()
    assert finals == [(2,)]
    assert state == ("SUCCEEDED", 2)


def test_retries_are_bounded_then_failed_with_worker_lost(fresh_cluster: Backend) -> None:
    trial = fresh_cluster.submit(
        fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=50, delay=0.2), max_retries=0
    )
    next(trial.reports(timeout=60))
    processes(fresh_cluster).worker_procs[worker_index(fresh_cluster, trial.worker)].kill()
    with pytest.raises(TrialFailedError, match="worker lost") as info:
        trial.result(timeout=60)
    assert info.value.exc_type == "WorkerLostError"
    assert trial.attempt == 1


def test_cancel_a_running_and_a_queued_trial(cluster: Backend) -> None:
    running = [cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.hanging)) for _ in range(2)]
    queued = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.hanging))
    _wait_for(lambda: all(t.state is TrialState.RUNNING for t in running), what="both trials to run")
    queued.cancel()
    for trial in running:
        trial.cancel()
    for trial in [*running, queued]:
        _wait_for(trial.done, timeout=30, what="cancellation")
        assert trial.state is TrialState.CANCELLED
    assert queued.attempt == 0
    assert (
        cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=1)).result(timeout=60) == 1.0
    )
