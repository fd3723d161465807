"""The dispatcher survives SIGKILL on its journal; artefacts come home from a worker's own directory."""

from __future__ import annotations

import sqlite3
import time

import numpy as np
import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend, wait
from retia.protocol import TrialState

from ..clusters import journal_path, processes
from . import fits

pytestmark = pytest.mark.timeout(300)


def test_dispatcher_killed_and_restarted_mid_run_loses_and_duplicates_nothing(fresh_cluster: Backend) -> None:
    evaluator = FunctionalEvaluator(fits.counting, steps=4, delay=0.05)
    trials = [fresh_cluster.submit(fits.DigitsMLP, evaluator, name=f"t{i}") for i in range(30)]
    deadline = time.monotonic() + 120
    while sum(t.done() for t in trials) < 8:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    cluster = processes(fresh_cluster)
    cluster.kill_dispatcher()  # SIGKILL, mid-run
    time.sleep(0.3)
    cluster.start_dispatcher()  # same journal, same address

    done, pending = wait(trials, timeout=180)
    assert not pending
    for trial in trials:
        assert trial.result() == 4.0
        assert trial.intermediates == [0.0, 1.0, 2.0, 3.0]  # each once, in order
    with sqlite3.connect(journal_path(fresh_cluster)) as db:
        finals = dict(
            db.execute("SELECT trial, COUNT(*) FROM reports WHERE final = 1 GROUP BY trial").fetchall()
        )
        states = dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        per_attempt = db.execute(
            "SELECT trial, attempt, COUNT(*) FROM reports WHERE final = 0 GROUP BY trial, attempt"
        ).fetchall()
    assert finals == {t.id: 1 for t in trials}
    assert states == {"SUCCEEDED": 30}
    assert all(count == 4 for _trial, _attempt, count in per_attempt)


def test_model_onnx_from_a_worker_directory_lands_under_trial_output_dir(cluster: Backend) -> None:
    import onnxruntime as ort

    trial = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.export_onnx))
    assert trial.result(timeout=120) == 1.0
    assert trial.state is TrialState.SUCCEEDED and trial.output_dir is not None
    onnx_file = trial.output_dir / "model.onnx"
    assert onnx_file.exists()
    home = processes(cluster).home
    assert home / "artifacts" in onnx_file.parents  # the dispatcher's copy, not the worker's directory
    worker_copies = list(home.glob(f"worker-*/trials/{trial.id}-1/model.onnx"))
    assert len(worker_copies) == 1 and worker_copies[0].read_bytes() == onnx_file.read_bytes()
    assert "fit pid " in (trial.output_dir / "trial.log").read_text()  # what fit printed came home too
    session = ort.InferenceSession(str(onnx_file))
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    (out,) = session.run(None, {session.get_inputs()[0].name: x})
    assert out.shape == (2, 10)


def test_status_right_after_a_dispatcher_restart_is_answered(fresh_cluster: Backend) -> None:
    """The client's STATUS goes out in the session the old dispatcher keyed; the new one answers it
    with a RESET, and the client asks again in the session its new HELLO opens."""
    trial = fresh_cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
    assert trial.result(timeout=60) == 3.0
    cluster = processes(fresh_cluster)
    for _ in range(3):
        cluster.kill_dispatcher()
        cluster.start_dispatcher()  # same journal, same address
        counts = fresh_cluster.status(timeout=5).counts  # before: no status within 5 s
        assert counts["SUCCEEDED"] == 1 and sum(counts.values()) == 1
