"""One table of faults, each done for real against a local cluster (as loky's crash_cases).

For every fault: the trial's final state, the reason text, the attempt count, and that the
next trial still runs. Faults that kill, stop or restart processes get a private cluster.
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend, connect
from retia.credentials import Role
from retia.protocol import TrialState

from ..clusters import fast_cluster, journal_path, processes, worker_index
from ..integration import fits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _kill_worker(backend: Backend, trial: Any) -> None:
    processes(backend).worker_procs[worker_index(backend, trial.worker)].kill()


def _stop_worker_past_liveness(backend: Backend, trial: Any) -> None:
    proc = processes(backend).worker_procs[worker_index(backend, trial.worker)]
    proc.send_signal(signal.SIGSTOP)
    deadline = time.monotonic() + 60
    while trial.attempt < 2:  # declared dead and re-queued while it sleeps
        assert time.monotonic() < deadline, "the stopped worker was never declared dead"
        time.sleep(0.05)
    proc.send_signal(signal.SIGCONT)  # it wakes up and sends its stale reports


def _restart_dispatcher(backend: Backend, trial: Any) -> None:
    cluster = processes(backend)
    cluster.kill_dispatcher()
    cluster.start_dispatcher()


@dataclass(frozen=True)
class Fault:
    name: str
    fit: Callable[..., None]
    state: TrialState
    reason: str
    attempts: int
    kwargs: dict[str, Any] = field(default_factory=dict)
    timeout: float | None = None
    during: Callable[[Backend, Any], None] | None = None  # done after the first report arrives

    @property
    def destructive(self) -> bool:
        return self.during is not None


SLOW: dict[str, Any] = {"steps": 6, "delay": 0.3}
FAULTS = [
    Fault("fit raises", fits.raising, TrialState.FAILED, "ValueError: the model diverged", 1),
    Fault("fit calls sys.exit(3)", fits.exiting, TrialState.FAILED, "fit called sys.exit(3)", 1, {"code": 3}),
    Fault(
        "fit calls os._exit(0)",
        fits.hard_exit,
        TrialState.FAILED,
        "exited with code 0 before fit returned",
        1,
    ),
    Fault("fit segfaults", fits.segfault, TrialState.FAILED, "killed by SIGSEGV", 1),
    Fault("fit aborts", fits.aborting, TrialState.FAILED, "killed by SIGABRT", 1),
    Fault("fit dies of a real-time signal", fits.realtime_signal, TrialState.FAILED, "killed by signal ", 1),
    Fault(
        "fit hangs past its timeout", fits.hanging, TrialState.FAILED, "timed out after 1.0s", 1, timeout=1.0
    ),
    Fault(
        "evaluator fails to unpickle on the worker",
        fits.uses,
        TrialState.FAILED,
        "SerializationError: unpickling an argument failed: RuntimeError: this object cannot be rebuilt here",
        1,
        {"thing": fits.BreaksOnLoad()},
    ),
    Fault(
        "result is unserializable",
        fits.unserializable_result,
        TrialState.FAILED,
        "ReportError: metric 'model' must be a finite number",
        1,
    ),
    Fault(
        "worker SIGKILLed mid-trial", fits.counting, TrialState.SUCCEEDED, "", 2, SLOW, during=_kill_worker
    ),
    Fault(
        "worker SIGSTOPped past liveness, then SIGCONTed",
        fits.counting,
        TrialState.SUCCEEDED,
        "",
        2,
        SLOW,
        during=_stop_worker_past_liveness,
    ),
    Fault(
        "dispatcher SIGKILLed and restarted",
        fits.counting,
        TrialState.SUCCEEDED,
        "",
        1,
        SLOW,
        during=_restart_dispatcher,
    ),
]


def _check(backend: Backend, fault: Fault) -> None:
    trial = backend.submit(
        fits.DigitsMLP, FunctionalEvaluator(fault.fit, **fault.kwargs), timeout=fault.timeout
    )
    if fault.during is not None:
        next(trial.reports(timeout=60))
        fault.during(backend, trial)
    deadline = time.monotonic() + 120
    while not trial.done():
        assert time.monotonic() < deadline, f"{fault.name}: the trial never finished ({trial})"
        time.sleep(0.05)
    assert trial.state is fault.state, trial.exception()
    assert trial.attempt == fault.attempts
    if fault.reason:
        assert fault.reason in str(trial.exception())
    if fault.state is TrialState.SUCCEEDED:
        assert trial.result() == float(SLOW["steps"])
        assert trial.intermediates == [float(i) for i in range(SLOW["steps"])]
    with sqlite3.connect(journal_path(backend)) as db:
        finals = db.execute(
            "SELECT attempt FROM reports WHERE trial = ? AND final = 1", (trial.id,)
        ).fetchall()
    assert finals == ([(fault.attempts,)] if fault.state is TrialState.SUCCEEDED else [])
    after = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=1))
    assert after.result(timeout=90) == 1.0, "the next trial did not run"


@pytest.mark.parametrize("fault", [f for f in FAULTS if not f.destructive], ids=lambda f: f.name)
def test_trial_fault(cluster: Backend, fault: Fault) -> None:
    _check(cluster, fault)


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.destructive], ids=lambda f: f.name)
def test_process_fault(fresh_cluster: Backend, fault: Fault) -> None:
    _check(fresh_cluster, fault)


_CLIENT = """
import sys, time
sys.path.insert(0, {root!r})
from retia import FunctionalEvaluator
from retia.client.backend import connect
from tests.integration import fits
backend = connect({address!r}, credential={credential!r}, client_id="crashy-client")
for _ in range(3):
    backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=4, delay=0.3))
time.sleep(1.0)  # the submissions are acknowledged; then the process dies without a goodbye
import os; os._exit(1)
"""


def test_client_dies_and_a_new_process_reconnects_to_its_trials(cluster: Backend, tmp_path: Path) -> None:
    script = tmp_path / "client.py"
    script.write_text(
        _CLIENT.format(
            root=str(Path(__file__).parents[2]),
            address=cluster.address,
            credential=str(processes(cluster).credential_file(Role.CLIENT)),  # this client's, as a file
        )
    )
    subprocess.run([sys.executable, str(script)], timeout=120, capture_output=True)
    with connect(cluster.address, credential=cluster.credential, client_id="crashy-client") as again:
        deadline = time.monotonic() + 60
        while len(again.trials) < 3 or not all(t.done() for t in again.trials.values()):
            assert time.monotonic() < deadline, "the reconnected client did not get its trials back"
            time.sleep(0.05)
        for trial in again.trials.values():
            assert trial.result() == 4.0
            assert trial.intermediates == [0.0, 1.0, 2.0, 3.0]  # every report, once, in order
    assert (
        cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=1)).result(timeout=60) == 1.0
    )


def test_late_reports_of_a_stopped_worker_are_ignored(tmp_path: Path) -> None:
    with fast_cluster(workers=2, home=tmp_path / "c") as backend:
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=6, delay=0.3))
        next(trial.reports(timeout=60))
        _stop_worker_past_liveness(backend, trial)
        assert trial.result(timeout=90) == 6.0
        time.sleep(2.0)  # let the woken worker's stale messages arrive
        log = (processes(backend).home / "logs" / "dispatcher.log").read_text()
    assert f"for trial {trial.id} attempt 1" in log and "not the live attempt" in log
    assert trial.attempt == 2 and trial.intermediates == [float(i) for i in range(6)]
