"""A one-shot trial keeps a checkpoint each epoch and, started again where one is, resumes from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import retia.lightning as pl
from retia import checkpoint
from retia.oneshot import OneShotEvaluator, RandomOneShot, supernet_of
from tests.common.oneshot_spaces import MyModule, UselessOpSpace, digits

pytestmark = pytest.mark.timeout(120)


def _evaluator(epochs: int) -> pl.Lightning:
    return pl.Lightning(
        MyModule(),
        pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
    )


def test_a_oneshot_trial_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = OneShotEvaluator(_evaluator(2), RandomOneShot(seed=0)).evaluate(
        supernet_of(UselessOpSpace()), output_dir=tmp_path
    )
    saved = tmp_path / checkpoint.CHECKPOINT_FILE
    assert saved.is_file(), "no checkpoint kept at the end of the training epochs"
    assert torch.load(saved, weights_only=False)["epoch"] == 1  # the second epoch's (0-based)
    # the same trial again, where its checkpoint lies (as a retry finds it): epochs 0-1 stay done
    again = OneShotEvaluator(_evaluator(4), RandomOneShot(seed=0)).evaluate(
        supernet_of(UselessOpSpace()), output_dir=tmp_path
    )
    lr, epochs_run = (tmp_path / "my_module.txt").read_text().split()
    assert int(epochs_run) == 2, "the resumed trial ran the epochs its checkpoint had done again"
    assert float(lr) == pytest.approx(0.01 * 0.8**4)  # the schedule went on from where it was
    assert first.final is not None and again.final is not None


def test_checkpoint_outside_an_evaluation_keeps_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETIA_OUTPUT_DIR", raising=False)
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"state")
    assert checkpoint.save(path) is None
    assert checkpoint.restore() is None
