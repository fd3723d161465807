"""DARTS on the hub's DARTS space scaled to digits: the architecture it exports, retrained, scores
at least the median of 10 random architectures trained the same way."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any, cast

import pytest
import torch

import retia
import retia.lightning as pl
from retia.datasets import DigitsDataset
from retia.nn.hub import DARTS as DartsSpace
from retia.oneshot import DARTS, OneShotEvaluator, arch_from_metric, supernet_of

pytestmark = [pytest.mark.slow, pytest.mark.timeout(280)]


def images(epochs: int) -> pl.Classification:
    digits = retia.trace(DigitsDataset)
    return pl.Classification(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(digits("train", flatten=False), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(digits("val", flatten=False), batch_size=256),
        max_epochs=epochs,
    )


def retrained(space: Any, arch: dict[str, Any], out: Path) -> float:
    torch.manual_seed(0)
    result = images(2).evaluate(space.freeze(arch), output_dir=out)
    return cast(dict[str, float], result.final)["val_acc"]


def test_darts_exports_an_architecture_at_least_as_good_as_the_median_random_one(tmp_path: Path) -> None:
    space = DartsSpace(width=4, num_cells=3, in_channels=1)
    torch.manual_seed(0)
    searched = OneShotEvaluator(images(3), DARTS(arc_learning_rate=3e-3, seed=0)).evaluate(
        supernet_of(space), output_dir=tmp_path / "supernet"
    )
    arch = arch_from_metric(searched.final, space.search_space())
    assert arch is not None and set(arch) == set(space.search_space())
    chosen = retrained(space, arch, tmp_path / "chosen")
    random = [retrained(space, space.random_sample(seed=i), tmp_path / f"random-{i}") for i in range(5)]
    assert chosen >= statistics.median(random), (chosen, sorted(random))
