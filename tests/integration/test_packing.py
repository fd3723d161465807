"""Packed trials over the wire (issue 21): trials packed into one RUN train in one process on a
real worker and each gives what it gives alone under its seed; one that diverges, raises, is
cancelled or runs past its timeout leaves the pack alone; a worker SIGKILLed mid-pack has every
trial of its pack retried, each ending with one final result, equal to its solo run."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import retia.lightning as pl
import retia.nn as nn
from retia import trace
from retia.client.backend import Backend, Trial, wait
from retia.datasets import DigitsDataset
from retia.protocol import TrialState
from retia.reporting import Metric

from ..clusters import fast_cluster, journal_path, processes, worker_index
from . import fits, pack_models

pytestmark = pytest.mark.timeout(120)

SEEDS = [1, 2, 3, 4]
Reports = tuple[Metric | None, list[Metric]]


def _evaluator() -> pl.Classification:
    """A shuffled loader and a model with dropout: both draw random numbers all through the fit
    (23 training batches an epoch)."""
    return pl.Classification(
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=512),
        max_epochs=2,
    )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Three workers (the last test kills one: a cluster of its own would cost its start-up); a pack
    waits up to 5 s to fill, so trials submitted one after another pack together (every pack here
    fills, so nothing waits that long)."""
    home = tmp_path_factory.mktemp("packing")
    with fast_cluster(workers=3, home=home, dispatcher_args=["--pack-wait", "5"]) as backend:
        yield backend


@pytest.fixture(scope="module")
def solo(cluster: Backend) -> dict[int, Reports]:
    """Each seed's final and intermediates as a DropoutMLP trained alone, in a process of its own."""
    trials = cluster.submit_many([fits.DropoutMLP] * len(SEEDS), _evaluator(), seeds=SEEDS)
    return {seed: _reports(trial) for seed, trial in zip(SEEDS, trials)}


def _reports(trial: Trial) -> Reports:
    """The final and every intermediate of the trial's last attempt, once it succeeded."""
    final = trial.result(timeout=90)
    assert trial.state is TrialState.SUCCEEDED and isinstance(final, dict), trial
    return final, list(trial.intermediates)


def _pack_log(trial: Trial) -> str:
    assert trial.output_dir is not None, trial
    return (Path(trial.output_dir) / "trial.log").read_text()


def _packed_together(trials: list[Trial]) -> None:
    """They ran in one process: on one worker, each trial.log the pack's, naming all of them."""
    assert len({t.worker for t in trials}) == 1, [t.worker for t in trials]
    for trial in trials:
        log = _pack_log(trial)
        assert f"a pack of {len(trials)} trials" in log, log
        assert all(t.id in log for t in trials), log


def _failure(trial: Trial) -> str:
    done, _ = wait([trial], timeout=90)
    assert done and trial.state is TrialState.FAILED and trial.change is not None, trial
    failure = trial.change.failure
    assert failure is not None, trial.change
    return f"{failure.kind.value}|{failure.reason}|{failure.exc_type}|{failure.message}|{failure.traceback}"


def test_packed_trials_share_a_process_and_each_gives_its_solo_reports(
    cluster: Backend, solo: dict[int, Reports]
) -> None:
    packed = cluster.submit_many([fits.DropoutMLP] * len(SEEDS), _evaluator(), seeds=SEEDS, pack=4)
    for seed, trial in zip(SEEDS, packed):
        assert _reports(trial) == solo[seed], seed  # the same floats: every intermediate and the final
        assert trial.attempt == 1
    _packed_together(packed)
    assert len(solo[1][1]) == 2 and solo[1] != solo[2]  # an intermediate an epoch; seeds differ
    for trial in packed:  # each its own output directory, with its own Lightning metrics
        assert trial.output_dir is not None
        (metrics,) = Path(trial.output_dir).glob("lightning_logs/*/metrics.csv")
        assert "val_acc" in metrics.read_text() or "val_loss" in metrics.read_text()
    assert len({t.output_dir for t in packed}) == len(packed)


def test_trials_whose_searched_evaluator_arguments_differ_pack_only_with_equals(cluster: Backend) -> None:
    searched = pl.Classification(
        learning_rate=nn.ValueChoice([1e-3, 3e-3], label="lr"),
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=512),
        max_epochs=1,
    )
    archs = [{"lr": 1e-3}, {"lr": 3e-3}, {"lr": 1e-3}, {"lr": 3e-3}]
    trials = cluster.submit_many([fits.DropoutMLP] * 4, searched, archs=archs, seeds=SEEDS, pack=2)
    for trial in trials:
        _reports(trial)
    _packed_together([trials[0], trials[2]])  # lr 1e-3, interleaved in the queue with the others
    _packed_together([trials[1], trials[3]])


def test_a_diverging_and_a_raising_model_fail_alone_and_the_rest_give_their_solo_reports(
    cluster: Backend, solo: dict[int, Reports]
) -> None:
    evaluator = _evaluator()
    good = cluster.submit_many([fits.DropoutMLP] * 2, evaluator, seeds=[1, 2], pack=4)
    nan = cluster.submit(pack_models.Diverges, evaluator, seed=3, pack=4)
    raises = cluster.submit(pack_models.Raises, evaluator, seed=4, pack=4)
    assert _reports(good[0]) == solo[1] and _reports(good[1]) == solo[2]
    nan_failure, raised = _failure(nan), _failure(raises)
    assert "NonFiniteLoss" in nan_failure, nan_failure
    assert "the candidate broke at its 7th batch" in raised and "Traceback" in raised, raised
    assert "RuntimeError" in raised and "forward" in raised, raised  # the model's own traceback
    assert nan.attempt == raises.attempt == 1  # a trial's own failure: not retried as a lost one
    _packed_together([*good, nan, raises])


def test_a_packed_trial_cancelled_mid_training_ends_cancelled_and_the_rest_give_their_solo_reports(
    cluster: Backend, solo: dict[int, Reports]
) -> None:
    evaluator = _evaluator()
    # the slow one sleeps 0.25 s a batch from its second epoch on: its pack takes 6 s more unless it leaves
    slow = cluster.submit(pack_models.SlowAfter, evaluator, seed=9, pack=4)
    good = cluster.submit_many([fits.DropoutMLP] * 3, evaluator, seeds=[1, 2, 3], pack=4)
    cancelled = threading.Event()

    def cancel_after_first(trial: Trial, value: Metric) -> None:
        if not cancelled.is_set():
            cancelled.set()
            trial.cancel("enough of it")

    slow.add_report_callback(cancel_after_first)
    for seed, trial in zip([1, 2, 3], good):
        assert _reports(trial) == solo[seed], seed
    done, _ = wait([slow], timeout=30)
    assert done and slow.state is TrialState.CANCELLED, slow
    assert slow.change is not None and "enough of it" in slow.change.reason, slow.change
    assert len(slow.intermediates) == 1  # its first epoch's, then it left
    _packed_together([slow, *good])


def test_packed_trials_past_their_own_timeouts_fail_alone_and_the_rest_give_their_solo_reports(
    cluster: Backend, solo: dict[int, Reports]
) -> None:
    evaluator = _evaluator()
    # slow in their second epoch (6 s more each): one is the RUN's own trial, the other its last mate
    first = cluster.submit(pack_models.SlowAfter, evaluator, seed=9, timeout=2.0, max_retries=0, pack=4)
    good = cluster.submit_many([fits.DropoutMLP] * 2, evaluator, seeds=[1, 2], pack=4)
    last = cluster.submit(pack_models.SlowAfter, evaluator, seed=8, timeout=2.5, max_retries=0, pack=4)
    for seed, trial in zip([1, 2], good):
        assert _reports(trial) == solo[seed], seed
    for slow, timeout in ((first, "2.0"), (last, "2.5")):
        failure = _failure(slow)
        assert failure.startswith(f"timeout|timed out after {timeout}s"), failure
    _packed_together([first, *good, last])


def test_a_packed_trial_that_hangs_is_stopped_by_its_timeout_or_its_cancel_alone(
    cluster: Backend, solo: dict[int, Reports]
) -> None:
    """A step that does not come back: the pack's watchdog stops that trial alone, past its timeout
    (the pack's other trials have none) or when it is cancelled; the others go on."""
    evaluator = _evaluator()
    timed = cluster.submit(pack_models.Hangs, evaluator, seed=9, timeout=3.0, max_retries=0, pack=4)
    hung = cluster.submit(pack_models.Hangs, evaluator, seed=8, max_retries=0, pack=4)
    good = cluster.submit_many([fits.DropoutMLP] * 2, evaluator, seeds=[1, 2], pack=4)
    assert _failure(timed).startswith("timeout|timed out after 3.0s"), _failure(timed)
    hung.cancel("it hangs")
    done, _ = wait([hung], timeout=10)
    assert done and hung.state is TrialState.CANCELLED, hung
    assert hung.change is not None and "it hangs" in hung.change.reason
    for seed, trial in zip([1, 2], good):
        assert _reports(trial) == solo[seed], seed
    _packed_together([timed, hung, *good])


def test_a_worker_sigkilled_mid_pack_has_every_trial_of_it_retried_to_one_final_each(
    cluster: Backend, solo: dict[int, Reports]
) -> None:  # (last: it leaves the module's cluster a worker short)
    backend = cluster
    packed = backend.submit_many([fits.DropoutMLP] * len(SEEDS), _evaluator(), seeds=SEEDS, pack=4)
    killed: list[str] = []

    def kill_its_worker(trial: Trial, value: Metric) -> None:  # on the pack's first report, at once
        if not killed:
            killed.append(trial.worker)
            processes(backend).worker_procs[worker_index(backend, trial.worker)].kill()  # SIGKILL

    packed[0].add_report_callback(kill_its_worker)
    for seed, trial in zip(SEEDS, packed):
        assert _reports(trial) == solo[seed], seed
        assert trial.attempt == 2 and trial.worker != killed[0], trial
    processes(backend).worker_procs[worker_index(backend, killed[0])].wait()
    with sqlite3.connect(journal_path(backend)) as db:
        finals = [
            db.execute("SELECT COUNT(*) FROM reports WHERE final = 1 AND trial = ?", (t.id,)) for t in packed
        ]
        assert [count.fetchone() for count in finals] == [(1,)] * len(packed)
