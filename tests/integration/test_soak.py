"""A short soak: exactly-once finals and intermediate reports while workers are killed and restarted.

The same run as ``benchmarks/soak.py`` (which it imports), shortened: 300 trials with 3
intermediate reports each over 4 workers, two of which are SIGKILLed (and replaced) while
trials run. No timing is asserted; only the exactly-once counts, at the client and in the journal.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(300)


def test_killed_workers_lose_and_duplicate_no_final_and_no_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import soak  # benchmarks/soak.py

    config = soak.SoakConfig(
        trials=300,
        workers=4,
        kill_every=0.5,  # both kills early: 300 reused-process trials take only a few seconds
        max_kills=2,
        reports=3,
        in_flight=100,
        home=tmp_path / "cluster",
        progress=False,
    )
    result = soak.run_soak(config)

    assert result.kills == 2
    assert result.problems() == []
    assert result.succeeded == 300 and not result.failed
    assert sorted(result.client_finals.values()) == [1] * 300  # one final REPORT event per trial
    assert result.client_intermediates == 300 * 3
    journal = result.journal
    assert journal["states"] == {"SUCCEEDED": 300}
    assert journal["finals"] == 300 and journal["trials_with_duplicate_finals"] == 0
    assert journal["intermediates_of_finishing_attempts"] == 300 * 3


def final_then_linger(model_cls: object, linger: float = 30.0) -> None:
    """Reports its final result, then keeps running (say, writing a checkpoint) until killed."""
    import time

    from retia import report_final_result

    report_final_result(1.0)
    time.sleep(linger)


def test_a_final_result_stored_before_its_worker_dies_is_not_reported_twice(tmp_path: Path) -> None:
    import sqlite3

    from retia import FunctionalEvaluator
    from retia.reporting import Metric

    from ..clusters import fast_cluster, processes, worker_index

    with fast_cluster(workers=2, home=tmp_path / "c") as backend:
        finals: list[Metric] = []
        backend.add_listener(
            lambda trial, event: (
                finals.append(event.report.metric) if event.report and event.report.final else None
            )
        )
        trial = backend.submit(dict, FunctionalEvaluator(final_then_linger, linger=2.0), max_retries=2)
        deadline = time.monotonic() + 60
        while trial.final is None:  # the final result has been stored and relayed
            assert time.monotonic() < deadline
            time.sleep(0.02)
        first_worker = trial.worker
        processes(backend).worker_procs[worker_index(backend, first_worker)].kill()
        processes(backend).worker_procs[worker_index(backend, first_worker)].wait()
        assert trial.result(timeout=60) == 1.0
        assert (
            trial.attempt == 1
            and trial.change is not None
            and "after its final result was stored" in trial.change.reason
        )
        with sqlite3.connect(processes(backend).home / "journal.sqlite") as db:
            stored = db.execute(
                "SELECT attempt FROM reports WHERE trial = ? AND final = 1", (trial.id,)
            ).fetchall()
    assert stored == [(1,)] and finals == [1.0], f"finals stored for attempts {stored}, relayed {finals}"
