"""A one-shot trial whose worker is SIGKILLed mid-training resumes from its checkpoint elsewhere."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import retia.lightning as pl
from retia.oneshot import OneShotEvaluator, RandomOneShot, supernet_of
from retia.protocol import TrialState
from tests.common.oneshot_spaces import MyModule, UselessOpSpace, digits

from ..clusters import fast_cluster, journal_path, processes, worker_index

pytestmark = pytest.mark.timeout(240)
EPOCHS = 8


def _checkpoints(journal: Path, trial: str) -> list[tuple[int, str]]:
    with sqlite3.connect(journal) as db:
        return db.execute("SELECT attempt, digest FROM checkpoints WHERE trial = ?", (trial,)).fetchall()


def test_sigkill_of_the_worker_resumes_the_supernet_from_its_checkpoint(tmp_path: Path) -> None:
    evaluator = pl.Lightning(
        MyModule(),
        pl.Trainer(max_epochs=EPOCHS, logger=False, enable_checkpointing=False),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
    )
    with fast_cluster(2, home=tmp_path / "cluster") as backend:
        trial = backend.submit(
            supernet_of(UselessOpSpace()), OneShotEvaluator(evaluator, RandomOneShot(seed=0))
        )
        deadline = time.monotonic() + 120
        while not _checkpoints(journal_path(backend), trial.id):  # the first epoch's is stored
            assert trial.state is not TrialState.SUCCEEDED, "the trial ended before a checkpoint was kept"
            assert time.monotonic() < deadline, "no checkpoint reached the dispatcher"
            time.sleep(0.05)
        first_worker = trial.worker
        processes(backend).worker_procs[worker_index(backend, first_worker)].kill()  # SIGKILL
        final = trial.result(timeout=180)
        assert trial.state is TrialState.SUCCEEDED and final is not None
        assert trial.attempt == 2 and trial.worker != first_worker
        assert trial.output_dir is not None
        _, epochs_run = (trial.output_dir / "my_module.txt").read_text().split()
        # the second attempt ran only the epochs the checkpoint had not done
        assert 1 <= int(epochs_run) < EPOCHS
        assert len(trial.intermediates) == int(epochs_run)
        log = (trial.output_dir / "trial.log").read_text()
        assert "resuming from the checkpoint of a previous attempt" in log
