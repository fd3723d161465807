"""Trials asking for GPUs (``submit(gpus=N)``, ``Experiment.run(trial_gpus=N)``) on a real cluster of
workers with fake GPU lists: each lands on a worker holding at least N and sees exactly N of its
devices; 0 sees none; one that no worker can hold fails with PlacementError instead of pending."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import retia
import retia.lightning as pl
from retia import FunctionalEvaluator
from retia.client.backend import Backend
from retia.client.experiment import Experiment
from retia.datasets import DigitsDataset
from retia.errors import ConfigError, PlacementError
from retia.protocol import DeviceFacts
from retia.strategy import Random

from ..clusters import fast_cluster, joined_workers, on_cluster
from ..common.spaces import DigitsMLPSpace
from . import fits

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """A worker owning fake GPUs 0 and 1, one owning GPU 2, and a CPU worker; a trial no worker can
    hold waits half a second for one."""
    home = tmp_path_factory.mktemp("placement")
    with fast_cluster(
        3,
        home=home,
        gpus=["0,1", "2", "none"],
        # one torch thread a trial: ranks forked from a process whose OpenMP pool ran would hang in
        # their first CPU matmul (GNU OpenMP is not fork-safe); GPU ranks compute on the device
        worker_args=["--preload", "torch", "--threads", "1"],
        dispatcher_args=["--placement-wait", "0.5"],
    ) as backend:
        _workers(backend)
        yield backend


def _workers(backend: Backend, count: int = 3) -> dict[str, str]:
    """Each worker's GPUs, once all ``count`` have joined."""
    return {w.worker_id: w.gpu for w in joined_workers(backend, count, timeout=30)}


def test_each_trial_runs_where_its_gpus_are_and_sees_exactly_that_many(cluster: Backend) -> None:
    evaluator = FunctionalEvaluator(fits.devices)
    asked = [2, 1, 0, None, 2, 1, 2, 0]
    trials = [cluster.submit(fits.DigitsMLP, evaluator, gpus=gpus) for gpus in asked]
    gpus_of = _workers(cluster)
    for gpus, trial in zip(asked, trials):
        result = trial.result(timeout=60)
        assert isinstance(result, dict)
        worker_gpus = gpus_of[trial.worker].split(",") if gpus_of[trial.worker] != "none" else []
        if gpus is None:  # what its worker has
            assert result["count"] == len(worker_gpus)
        else:
            assert len(worker_gpus) >= gpus and result["count"] == gpus, (trial.worker, result)
            if gpus:
                assert result["first"] == int(worker_gpus[0])
        # its device facts say the same (no CUDA here: no UUIDs, no peak, no first CUDA op)
        seen = worker_gpus if gpus is None else worker_gpus[: gpus or 0]
        assert trial.devices == DeviceFacts(seen)
    last = {w.worker_id: (w.last_trial, w.last_devices) for w in cluster.status().workers}
    assert any(trial_id == trials[-1].id and facts == DeviceFacts([]) for trial_id, facts in last.values())


def test_the_lightning_evaluators_run_on_the_trials_gpus_and_never_probe_cuda_on_a_cpu_worker(
    cluster: Backend,
) -> None:
    evaluator = FunctionalEvaluator(fits.lightning_devices)
    seen = {
        gpus: cluster.submit(fits.DigitsMLP, evaluator, gpus=gpus).result(timeout=60) for gpus in (2, 1, 0)
    }
    assert seen[2] == {"default": 2, "gpu": 1, "cpu": 0, "devices": 2, "ddp_fork": 1}
    assert seen[1] == {"default": 1, "gpu": 1, "cpu": 0, "devices": 1, "ddp_fork": 0}
    assert seen[0] == {"default": 1, "gpu": 0, "cpu": 1, "devices": 1, "ddp_fork": 0}


def test_ddp_forked_from_a_trial_process_reports_each_epoch_and_its_final_result(cluster: Backend) -> None:
    """The DDP a trial with several GPUs gets (``ddp_fork``), on two CPU processes here: rank 0's
    reports reach the client once each, and the final result is the last validation's."""
    evaluator = pl.Classification(
        learning_rate=3e-3,
        train_dataloaders=pl.DataLoader(retia.trace(DigitsDataset)("train"), batch_size=128, shuffle=True),
        val_dataloaders=pl.DataLoader(retia.trace(DigitsDataset)("val"), batch_size=512),
        max_epochs=3,
        accelerator="cpu",
        devices=2,
        strategy="ddp_fork",
    )
    trial = cluster.submit(fits.DigitsMLP, evaluator, gpus=0)
    final = trial.result(timeout=120)
    reports = list(trial.reports())
    assert isinstance(final, dict) and final["default"] == final["val_acc"] > 0.3
    assert len(reports) == 3 and reports[-1] == final  # one per epoch; the final is the last


def test_a_trial_no_worker_can_hold_fails_with_the_reason(cluster: Backend) -> None:
    trial = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices), gpus=3)
    with pytest.raises(PlacementError, match=r"asks for 3 GPUs and no worker has that many \(the most: 2\)"):
        trial.result(timeout=30)
    after = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices), gpus=2)
    assert isinstance(after.result(timeout=30), dict)  # the cluster goes on


@pytest.mark.parametrize("gpus", [-1, 65, True, 1.5, "2"])
def test_a_gpu_request_that_is_not_a_count_is_refused_before_anything_is_sent(
    cluster: Backend, gpus: object
) -> None:
    with pytest.raises(ConfigError, match="gpus must be None"):
        cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices), gpus=gpus)  # type: ignore[arg-type]


def test_an_experiments_trials_ask_for_trial_gpus(cluster: Backend, tmp_path: Path) -> None:
    exp = Experiment(DigitsMLPSpace(), FunctionalEvaluator(fits.devices), Random(), path=tmp_path / "exp")
    results = exp.run(max_trials=3, concurrency=2, trial_gpus=2, **on_cluster(cluster))
    assert [r.state for r in results] == ["SUCCEEDED"] * 3
    assert all(isinstance(r.final, dict) and r.final["count"] == 2 for r in results)
    assert [r.devices for r in results] == [DeviceFacts(["0", "1"])] * 3
    assert [r.devices for r in Experiment.load(exp.path).results] == [DeviceFacts(["0", "1"])] * 3
