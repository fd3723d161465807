"""A pack too large for its worker's memory cap is trained again in halves, and every trial of it
finishes with what it gives alone (issue 21: NNI's "retry one by one", made real)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import retia.lightning as pl
from retia import trace
from retia.datasets import DigitsDataset
from retia.protocol import TrialState

from ..clusters import fast_cluster

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


class Wide(nn.Module):
    """7.4 million parameters: 30 MB, and with their gradients and Adam's two moments 120 MB that
    each candidate of a pack keeps (its activations, for small batches, come and go one at a time)."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(64, 100_000)
        self.out = nn.Linear(100_000, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(torch.relu(self.hidden(x)))
        return out


def _evaluator() -> pl.Classification:
    return pl.Classification(
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=32, shuffle=True),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=32),
        max_epochs=1,
        limit_train_batches=3,
    )


def test_a_pack_out_of_memory_splits_in_halves_and_every_trial_finishes(tmp_path: Path) -> None:
    seeds = [1, 2, 3, 4]
    # four trials (about 520 MB) do not fit in 450 MB beyond the fork server's memory; two (280 MB)
    # do, and one (160 MB) does with room for what a failed pack does not give back (fragmentation)
    cap = ["--trial-memory-mb", "450"]
    with fast_cluster(workers=1, home=tmp_path / "capped", worker_args=cap) as capped:
        packed = capped.submit_many([Wide] * 4, _evaluator(), seeds=seeds, pack=4)
        finals = [trial.result(timeout=150) for trial in packed]
        assert [t.state for t in packed] == [TrialState.SUCCEEDED] * 4
        assert len({t.worker for t in packed}) == 1 and all(t.attempt == 1 for t in packed)
        assert packed[0].output_dir is not None
        log = (packed[0].output_dir / "trial.log").read_text()
        assert "the pack of 4 ran out of memory" in log and "can't allocate memory" in log
        assert "training it again as packs of 2 and 2" in log
        for trial in packed:  # one intermediate (one epoch), not one per attempt at it
            assert len(trial.intermediates) == 1
    for seed, final in zip(seeds, finals):  # what each gives alone, here, with its seed
        alone = _evaluator().evaluate(Wide, seed=seed, output_dir=tmp_path / f"alone-{seed}")
        assert final == pytest.approx(alone.final, rel=1e-5)  # (another process: other threads)
