"""End to end on a real local cluster: trials travel, train, report in order, and come back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import cast

import pytest

from retia import FunctionalEvaluator, trace
from retia.client.backend import Backend, wait
from retia.datasets import DigitsDataset
from retia.errors import TrialFailedError
from retia.protocol import TrialState

from ..clusters import processes
from . import fits

pytestmark = pytest.mark.timeout(240)


def _digits_evaluator(epochs: int = 2) -> FunctionalEvaluator:
    from torch.utils.data import DataLoader

    train = trace(DataLoader)(trace(DigitsDataset)("train"), batch_size=64, shuffle=True)
    val = trace(DataLoader)(trace(DigitsDataset)("val"), batch_size=256)
    return FunctionalEvaluator(fits.train_digits, train=train, val=val, epochs=epochs)


def test_twenty_digits_trials_report_in_order(cluster: Backend) -> None:
    evaluator = _digits_evaluator(epochs=2)
    widths = [8 + 4 * i for i in range(20)]
    trials = [cluster.submit(trace(fits.DigitsMLP)(hidden=w), evaluator, name=f"w{w}") for w in widths]
    done, pending = wait(trials, timeout=200)
    assert not pending
    for trial in trials:
        final = trial.result()
        assert trial.state is TrialState.SUCCEEDED and trial.attempt == 1
        assert isinstance(final, dict) and final["epochs"] == 2.0
        assert len(trial.intermediates) == 2
        assert trial.intermediates[-1] == final["default"]
        assert list(trial.reports()) == trial.intermediates
    # each final is a dict, as checked above
    assert max(cast(dict[str, float], t.result())["default"] for t in trials) > 0.85
    assert {t.worker for t in trials} == {w.worker_id for w in cluster.status().workers}


def test_reports_stream_while_the_trial_runs(cluster: Backend) -> None:
    trial = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=5, delay=0.1))
    seen = []
    for value in trial.reports(timeout=60):
        seen.append(value)
        if len(seen) == 1:
            assert not trial.done()  # the first report arrived before the trial ended
    assert seen == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert trial.result() == 5.0


def test_failure_carries_type_message_traceback_and_log(cluster: Backend) -> None:
    trial = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.raising))
    with pytest.raises(TrialFailedError, match="ValueError: the model diverged") as info:
        trial.result(timeout=60)
    error = info.value
    assert error.exc_type == "ValueError"
    assert "in raising" in error.remote_traceback
    assert "the model diverged" in str(error.__cause__)
    assert "Traceback" in error.log_tail
    assert trial.intermediates == [0.5]
    assert trial.attempt == 1  # a user error is not retried


def test_status_command_shows_workers_and_counts_while_trials_run(cluster: Backend) -> None:
    busy = [cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.hanging)) for _ in range(2)]
    deadline = time.monotonic() + 60
    while not all(t.state is TrialState.RUNNING for t in busy):
        assert time.monotonic() < deadline, "the trials never started"
        time.sleep(0.05)
    key_file = str(processes(cluster).key_file)
    status_cmd = [sys.executable, "-m", "retia.cli", "status", cluster.address, "--key-file", key_file]
    out = subprocess.run([*status_cmd, "--json"], capture_output=True, text=True, timeout=60, check=True)
    status = json.loads(out.stdout)
    assert sorted(w["state"] for w in status["workers"]) == ["busy", "busy"]
    assert {w["trial"] for w in status["workers"]} == {t.id for t in busy}
    assert status["trials"]["RUNNING"] == 2
    assert status["trials"]["SUCCEEDED"] == sum(
        t.state is TrialState.SUCCEEDED for t in cluster.trials.values()
    )
    table = subprocess.run(status_cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "busy" in table and "running 2" in table
    for trial in busy:
        trial.cancel()
    wait(busy, timeout=60)
    assert all(t.state is TrialState.CANCELLED for t in busy)


def test_a_classification_trial_and_a_model_space_trial(cluster: Backend) -> None:
    import retia.lightning as pl

    from ..common.spaces import DigitsMLPSpace

    evaluator = pl.Classification(
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=512),
        learning_rate=3e-3,
        max_epochs=4,
    )
    space = DigitsMLPSpace()
    arch = {"width": 64, "block0": "relu", "block1": "tanh", "skip": 1}
    lightning_trial = cluster.submit(fits.DigitsMLP, evaluator)
    space_trial = cluster.submit(space, evaluator, arch=arch)
    for trial in (lightning_trial, space_trial):
        final = trial.result(timeout=180)
        assert isinstance(final, dict) and final["default"] == final["val_acc"] > 0.75  # it learns (unseeded)
        assert len(trial.intermediates) == 4 and trial.intermediates[-1] == final
    assert space_trial.arch == arch
    assert (
        space_trial.output_dir is not None and space_trial.output_dir.name == space_trial.id
    )  # (it wrote no file)
    with pytest.raises(TypeError, match="needs arch="):
        cluster.submit(space, evaluator)
