"""A trial runs under its seed wherever it runs (issue 21): on either worker, after its worker was
SIGKILLed mid-fit, and under its own ``trial_seed(id)`` when it was given none."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

import retia.lightning as pl
from retia import Experiment, trace
from retia.client.backend import Backend, Trial, wait
from retia.client.results import TrialResult
from retia.datasets import DigitsDataset
from retia.errors import ConfigError
from retia.protocol import TrialState
from retia.seeding import trial_seed
from retia.strategy import Random

from ..clusters import joined_workers, on_cluster, processes, worker_index
from ..common.spaces import DigitsMLPSpace
from . import fits

pytestmark = pytest.mark.timeout(120)


def _evaluator(epochs: int = 2, batch_size: int = 64) -> pl.Classification:
    """A shuffled loader and a model with dropout: both draw random numbers all through the fit."""
    return pl.Classification(
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=batch_size, shuffle=True),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=512),
        max_epochs=epochs,
    )


def _reports(trial: Trial) -> tuple[object, list[object]]:
    """The final and every intermediate of the trial's last attempt, once it succeeded."""
    final = trial.result(timeout=90)
    assert trial.state is TrialState.SUCCEEDED and isinstance(final, dict), trial
    return final, list(trial.intermediates)


def test_a_seed_gives_the_same_reports_on_either_worker_and_another_seed_others(cluster: Backend) -> None:
    evaluator = _evaluator()
    joined_workers(cluster, 2)  # both idle: each takes one of the pair
    first, second = cluster.submit_many([fits.DropoutMLP] * 2, evaluator, seeds=[11, 11])
    other = cluster.submit(fits.DropoutMLP, evaluator, seed=12)
    assert [t.seed for t in (first, second, other)] == [11, 11, 12]
    same = _reports(first)
    assert _reports(second) == same
    assert first.worker != second.worker and first.attempt == second.attempt == 1
    assert len(same[1]) == 2  # an intermediate per epoch, each equal
    final, _ = _reports(other)
    assert final["val_loss"] != same[0]["val_loss"]  # type: ignore[index]


def test_a_trial_without_a_seed_runs_under_trial_seed_of_its_id(cluster: Backend) -> None:
    evaluator = _evaluator()
    trial_id = f"seedless-{uuid.uuid4().hex[:8]}"
    seedless = cluster.submit(fits.DropoutMLP, evaluator, trial_id=trial_id)
    given = cluster.submit(fits.DropoutMLP, evaluator, seed=trial_seed(trial_id))
    assert seedless.seed == given.seed == trial_seed(trial_id)
    assert _reports(seedless) == _reports(given)


def test_a_trial_retried_after_its_worker_was_sigkilled_mid_fit_ends_as_an_undisturbed_run(
    fresh_cluster: Backend,
) -> None:
    backend = fresh_cluster
    evaluator = _evaluator(epochs=8, batch_size=16)  # ~90 steps an epoch: the kill lands mid-fit
    killed, undisturbed = backend.submit_many([fits.DropoutMLP] * 2, evaluator, seeds=[11, 11])
    deadline = time.monotonic() + 60
    while not killed.intermediates:  # its first epoch is done
        assert not killed.done() and time.monotonic() < deadline, killed
        time.sleep(0.01)
    lost_worker = killed.worker
    processes(backend).worker_procs[worker_index(backend, lost_worker)].kill()  # SIGKILL, mid-fit
    done, pending = wait([killed, undisturbed], timeout=100)
    assert not pending
    assert killed.attempt == 2 and killed.worker != lost_worker  # retried on the other worker
    assert undisturbed.attempt == 1
    assert _reports(killed) == _reports(undisturbed)
    assert len(killed.intermediates) == 8  # the retry's own, from the start


def test_an_experiments_seed_gives_its_trials_the_same_seeds_and_results_in_every_run(
    cluster: Backend, tmp_path: Path
) -> None:
    def run(seed: int, name: str) -> list[TrialResult]:
        exp = Experiment(
            DigitsMLPSpace(), _evaluator(epochs=1), Random(seed=0), path=tmp_path / name, seed=seed
        )
        return exp.run(max_trials=2, **on_cluster(cluster))

    first, again, other = run(5, "a"), run(5, "b"), run(6, "c")
    assert [r.seed for r in first] == [r.seed for r in again] == [trial_seed(f"5/{k}") for k in (0, 1)]
    assert [r.trial_id for r in first] != [r.trial_id for r in again]  # two experiments, one seed
    assert [r.final for r in first] == [r.final for r in again]
    assert [r.arch for r in first] == [r.arch for r in other]  # the same candidates ...
    assert [r.final for r in first] != [r.final for r in other]  # ... initialized otherwise
    assert Experiment.load(tmp_path / "a").seed == 5  # a resumed experiment's new trials follow it too
    with pytest.raises(ConfigError, match="the experiment's seed must be an integer"):
        Experiment(DigitsMLPSpace(), _evaluator(), Random(), seed=-1)
