"""A dead dispatcher, or the loss of every worker, is an error, not a hang (issue 16, point 11)."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from retia import Experiment, FunctionalEvaluator
from retia.client.backend import connect, wait
from retia.client.cluster import LocalCluster
from retia.errors import ClusterLostError, DispatcherLostError
from retia.keys import load_key
from retia.strategy import Random

from ..clusters import HEARTBEAT_INTERVAL, LIVENESS, fast_cluster, processes
from ..common.spaces import DigitsMLPSpace
from . import fits

pytestmark = pytest.mark.timeout(120)

SLOW = FunctionalEvaluator(fits.counting, steps=200, delay=0.1)  # runs far longer than any test waits


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _later(seconds: float, action: Callable[[], None]) -> threading.Thread:
    """``action`` on another thread after ``seconds``, while this one waits."""

    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_killed_dispatcher_ends_every_wait_with_the_reason(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        trial = backend.submit(fits.DigitsMLP, SLOW)
        next(trial.reports(timeout=60))  # running
        dispatcher = processes(backend).dispatcher
        assert dispatcher is not None
        killer = _later(0.5, lambda: os.kill(dispatcher.pid, signal.SIGKILL))  # a crash, not a stop
        with pytest.raises(DispatcherLostError, match="was killed by SIGKILL") as info:
            trial.result(timeout=60)  # before: TimeoutError after 60 s, and forever with no timeout
        killer.join()
        assert str(tmp_path / "c" / "logs" / "dispatcher.log") in str(info.value)
        assert backend.lost is not None
        with pytest.raises(DispatcherLostError):  # the other waits raise at once too
            list(trial.reports(timeout=60))
        with pytest.raises(DispatcherLostError):
            wait([trial], timeout=60)


def test_losing_every_worker_ends_the_wait_of_a_queued_trial(tmp_path: Path) -> None:
    with fast_cluster(workers=2, home=tmp_path / "c") as backend:
        cluster = processes(backend)
        for proc in cluster.worker_procs:
            proc.kill()
            proc.wait()
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        with pytest.raises(ClusterLostError, match="every worker of this local cluster has exited") as info:
            trial.result(timeout=60)
        assert "worker-0" in str(info.value) and "worker-1" in str(info.value)
        assert "was killed by SIGKILL" in str(info.value)
        cluster.start_worker(0)  # a worker again: waits work again
        _wait_for(lambda: backend.lost is None)
        assert trial.result(timeout=60) == 3.0


def test_one_worker_killed_and_started_again_is_no_loss(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        cluster = processes(backend)
        [proc] = cluster.worker_procs
        proc.kill()
        proc.wait()
        cluster.start_worker(0)  # within the liveness window (as the soak's killer does)
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        assert trial.result(timeout=60) == 3.0
        assert backend.lost is None


def _kill_dispatcher_of(home: Path) -> None:
    """SIGKILL the dispatcher an embedded experiment started (its ready file names its home)."""
    _wait_for(lambda: (home / "dispatcher.address").exists(), timeout=60)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"retia.dispatcher" in argv and str(home).encode() in argv:
            time.sleep(1.0)  # a trial or two under way
            os.kill(int(entry.name), signal.SIGKILL)
            return
    raise AssertionError(f"no dispatcher runs for {home}")


def test_an_embedded_experiment_whose_dispatcher_dies_raises(tmp_path: Path) -> None:
    path = tmp_path / "exp"
    evaluator = FunctionalEvaluator(fits.arch_score, steps=50, delay=0.1)
    exp = Experiment(DigitsMLPSpace(), evaluator, Random(seed=0), path=path)
    errors: list[BaseException] = []

    def kill() -> None:
        try:
            _kill_dispatcher_of((path / "cluster").resolve())
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    killer = threading.Thread(target=kill, daemon=True)
    killer.start()
    with pytest.raises(DispatcherLostError, match="Experiment.resume") as info:
        exp.run(max_trials=4, concurrency=2, workers=1, live=False)  # before: hung until the test timed out
    killer.join()
    assert not errors
    assert "was killed by SIGKILL" in str(info.value)
    assert len(Experiment.load(path).results) >= 1  # what was submitted is on disk, to resume


def test_a_silent_remote_dispatcher_raises_after_lost_after_and_a_restart_recovers(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "c", 1, (), HEARTBEAT_INTERVAL, LIVENESS)
    cluster.start()
    try:
        with connect(
            cluster.address,
            key=load_key(cluster.key_file),
            heartbeat_interval=HEARTBEAT_INTERVAL,
            liveness=LIVENESS,
            lost_after=2.0,
        ) as backend:
            trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=20, delay=0.2))
            next(trial.reports(timeout=60))  # stored and running
            cluster.kill_dispatcher()  # the client cannot tell this from a restart to come
            with pytest.raises(DispatcherLostError, match=r"lost_after=2\.0s"):
                trial.result(timeout=60)
            cluster.start_dispatcher()  # same journal, same address
            _wait_for(lambda: backend.lost is None, timeout=60)
            assert trial.result(timeout=90) == 20.0
    finally:
        cluster.stop()


def test_lost_after_is_checked() -> None:
    from retia.errors import ConfigError

    with pytest.raises(ConfigError, match="lost_after must be a positive number"):
        connect("tcp://127.0.0.1:9", key=b"k" * 32, lost_after=0, timeout=0.1)


def test_a_dispatcher_restarted_from_a_thread_that_ends_keeps_running(tmp_path: Path) -> None:
    """Found by the soak: the children's death signal followed the thread that forked them, so a
    dispatcher restarted from a short-lived thread got SIGTERM when it ended (and every wait hung)."""
    with fast_cluster(1, home=tmp_path / "c") as backend:
        cluster = processes(backend)

        def restart() -> None:
            cluster.kill_dispatcher()
            cluster.start_dispatcher()

        thread = threading.Thread(target=restart)
        thread.start()
        thread.join()
        time.sleep(1.0)
        assert cluster.dispatcher is not None and cluster.dispatcher.poll() is None
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        assert trial.result(timeout=30) == 3.0
