"""``retia worker --prefetch N`` (32 with --reuse-process): a worker holds trials while one runs."""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.errors import TrialCancelledError, TrialFailedError
from retia.protocol import TrialState

from ..clusters import fast_cluster, journal_path, processes, worker_index
from ..integration import fits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _wait_for(predicate: Callable[[], object], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_held_trial_can_be_cancelled_and_the_slot_is_refilled(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c", worker_args=["--reuse-process"]) as backend:
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
    args = ["--reuse-process", "--prefetch", "1"]
    with fast_cluster(workers=2, home=tmp_path / "c", worker_args=args) as backend:
        slow = FunctionalEvaluator(fits.counting, steps=8, delay=0.25)
        trials = [
            backend.submit(fits.DigitsMLP, slow) for _ in range(4)
        ]  # two per worker: one runs, one waits
        next(trials[0].reports(timeout=60))
        victim = worker_index(backend, trials[0].worker)
        held = [
            t for t in trials if t.state is TrialState.RUNNING and worker_index(backend, t.worker) == victim
        ]
        assert len(held) == 2
        processes(backend).worker_procs[victim].kill()  # SIGKILL the agent
        assert [t.result(timeout=120) for t in trials] == [8.0] * 4
        assert all(worker_index(backend, t.worker) != victim and t.attempt == 2 for t in held)
        with sqlite3.connect(journal_path(backend)) as db:
            finals = db.execute(
                "SELECT trial, COUNT(*) FROM reports WHERE final = 1 GROUP BY trial"
            ).fetchall()
        assert sorted(n for _t, n in finals) == [1, 1, 1, 1]


DEEP = ["--reuse-process", "--prefetch", "4"]  # up to four trials queue in the child behind the running one


def _pid(home: Path, trial_id: str) -> int:
    """The trial process's pid, from the first line of its trial.log."""
    [log] = home.glob(f"worker-*/trials/{trial_id}-1/trial.log")
    return _pid_in(log)


def _running_pid(home: Path) -> int:
    """The pid of the trial running now: a reused child runs it in its scratch directory until it ends."""
    [log] = home.glob("worker-*/trials/.reused-*/trial.log")
    return _pid_in(log)


def _pid_in(log: Path) -> int:
    match = re.search(r" pid (\d+)", log.read_text())
    assert match is not None
    return int(match.group(1))


def test_trials_queued_in_one_child_run_back_to_back_and_outlive_its_death(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with fast_cluster(workers=1, home=home, worker_args=DEEP) as backend:
        quick = FunctionalEvaluator(fits.counting, steps=2)
        first = [backend.submit(fits.DigitsMLP, quick) for _ in range(5)]
        assert [t.result(timeout=60) for t in first] == [2.0] * 5
        assert [t.intermediates for t in first] == [[0.0, 1.0]] * 5  # each report to its own trial
        assert len({_pid(home, t.id) for t in first}) == 1

        victim = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=100, delay=0.1))
        queued = [backend.submit(fits.DigitsMLP, quick) for _ in range(3)]
        next(victim.reports(timeout=60))
        _wait_for(
            lambda: all(t.state is TrialState.RUNNING for t in queued)
        )  # given to the worker, not started
        os.kill(_running_pid(home), signal.SIGKILL)
        with pytest.raises(TrialFailedError, match="SIGKILL"):
            victim.result(timeout=60)
        assert [t.result(timeout=60) for t in queued] == [2.0] * 3
        assert [t.attempt for t in queued] == [
            1,
            1,
            1,
        ]  # they never started in the dead child: no attempt spent
        assert len({_pid(home, t.id) for t in queued}) == 1 and _pid(home, queued[0].id) != _pid(
            home, victim.id
        )


def test_a_trial_cancelled_in_the_childs_queue_is_skipped_without_a_restart(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with fast_cluster(workers=1, home=home, worker_args=DEEP) as backend:
        running = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=10, delay=0.1))
        doomed, after = (backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(2))
        next(running.reports(timeout=60))
        _wait_for(lambda: doomed.state is TrialState.RUNNING)
        doomed.cancel()
        with pytest.raises(TrialCancelledError):
            doomed.result(timeout=60)
        assert running.result(timeout=60) == 10.0 and after.result(timeout=60) == 3.0
        assert _pid(home, running.id) == _pid(home, after.id)  # skipped in the queue, nothing killed
        assert not list(home.glob(f"worker-0/trials/{doomed.id}-*"))


def test_a_worker_that_joins_late_gets_trials_another_holds_unstarted(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c", worker_args=DEEP) as backend:
        slow = FunctionalEvaluator(fits.counting, steps=6, delay=0.5)
        trials = [backend.submit(fits.DigitsMLP, slow) for _ in range(5)]  # all five go to the only worker
        next(trials[0].reports(timeout=60))
        processes(backend).start_worker(1)
        assert [t.result(timeout=120) for t in trials] == [6.0] * 5
        assert any(worker_index(backend, t.worker) == 1 for t in trials)  # given back, started there
        assert [t.attempt for t in trials] == [1] * 5
        with sqlite3.connect(journal_path(backend)) as db:
            finals = db.execute(
                "SELECT trial, COUNT(*) FROM reports WHERE final = 1 GROUP BY trial"
            ).fetchall()
        assert sorted(n for _t, n in finals) == [1] * 5


def test_a_large_held_trial_never_blocks_the_worker_while_a_long_one_runs(tmp_path: Path) -> None:
    """Specs bigger than a pipe's buffer (64 KiB) wait in the agent, not in a blocking write: the agent
    keeps its heartbeats and answers a cancel while the child is busy with a long trial."""
    home = tmp_path / "c"
    with fast_cluster(workers=1, home=home, worker_args=DEEP) as backend:
        long = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=12, delay=0.25))
        next(long.reports(timeout=60))  # in fit now: the child reads no spec until it returns
        bulky = FunctionalEvaluator(fits.uses, thing=os.urandom(200_000))  # under the blob threshold: inline
        held = [backend.submit(fits.DigitsMLP, bulky) for _ in range(3)]
        _wait_for(lambda: all(t.state is TrialState.RUNNING for t in held))
        held[1].cancel()  # answered by the agent while the child still runs `long`
        with pytest.raises(TrialCancelledError):
            held[1].result(timeout=2.0)
        assert long.state is TrialState.RUNNING
        assert long.result(timeout=60) == 12.0 and [
            held[0].result(timeout=60),
            held[2].result(timeout=60),
        ] == [1.0, 1.0]
        assert [t.attempt for t in (long, *held)] == [1, 1, 1, 1]  # the worker was never declared lost


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_the_agent_yields_to_the_child_only_while_trials_queue_in_it(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c", worker_args=DEEP) as backend:
        [agent] = processes(backend).worker_procs
        running = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=12, delay=0.25))
        next(running.reports(timeout=60))
        assert os.sched_getscheduler(agent.pid) == os.SCHED_OTHER  # alone: its reports go out at once
        queued = [
            backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.scheduling_policy)) for _ in range(2)
        ]
        _wait_for(lambda: os.sched_getscheduler(agent.pid) == os.SCHED_BATCH, timeout=2.0)
        assert running.state is TrialState.RUNNING
        assert [t.result(timeout=60) for t in queued] == [
            float(os.SCHED_OTHER)
        ] * 2  # trials keep the normal policy
        _wait_for(lambda: os.sched_getscheduler(agent.pid) == os.SCHED_OTHER, timeout=5.0)


def test_many_large_held_trials_reach_a_reuse_process_worker_in_messages_that_fit(tmp_path: Path) -> None:
    """32 held trials of a 270 KB evaluator are 9 MB: one RUNS message would exceed the worker's
    8 MiB limit, be dropped, and no trial would ever finish (issue 16, point 7); split by size, all run."""
    with fast_cluster(workers=1, home=tmp_path / "c", worker_args=["--reuse-process"]) as backend:
        evaluator = FunctionalEvaluator(fits.padded, pad="x" * 270_000)
        trials = backend.submit_many([fits.DigitsMLP] * 40, evaluator)
        assert [trial.result(timeout=120) for trial in trials] == [270_000.0] * 40
