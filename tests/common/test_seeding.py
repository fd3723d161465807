"""retia.seeding: a seeded evaluation repeats exactly; its data order is the evaluator's, not the model's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

import retia
import retia.lightning as pl
from retia.datasets import DigitsDataset, Split
from retia.errors import ConfigError
from retia.seeding import SEED_MAX, check_seed, trial_seed

pytestmark = pytest.mark.timeout(120)


class NoisyDigits(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Digits with a random transform drawn in this process, and each sample's index."""

    def __init__(self, split: Split) -> None:
        self.digits = DigitsDataset(split)

    def __len__(self) -> int:
        return len(self.digits)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = self.digits[i]
        return x + 0.01 * torch.randn_like(x), y, torch.tensor(i)


SEEN: list[list[int]] = []  # what the recording module saw, one list per evaluation
NOISE: list[float] = []


class Recording(pl.LightningModule):
    """Trains ``self.model`` on (x, y, index) batches and records the indices and noise it was fed."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, index = batch
        SEEN[-1] += index.tolist()
        NOISE.append(float(x.sum()))
        loss: torch.Tensor = F.cross_entropy(self.model(x), y)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y, _ = batch
        self.log("val_acc", (self.model(x).argmax(-1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def noisy(split: Split) -> Any:
    return pl.DataLoader(retia.trace(NoisyDigits)(split), batch_size=64, shuffle=split == "train")


def recording_evaluator() -> pl.Lightning:
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, num_sanity_val_steps=0)
    return pl.Lightning(Recording(), trainer, noisy("train"), noisy("val"))


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 10))


def wide() -> nn.Module:
    """Draws more random numbers while it is built than ``small`` does."""
    return nn.Sequential(nn.Linear(64, 256), nn.Dropout(0.3), nn.ReLU(), nn.Linear(256, 10))


def test_trial_seed_is_stable_and_in_range() -> None:
    assert trial_seed("t-1") == trial_seed("t-1") != trial_seed("t-2")
    assert all(0 <= trial_seed(f"trial-{i}") <= SEED_MAX for i in range(100))
    for bad in (-1, SEED_MAX + 1, 1.5, True, "3"):
        with pytest.raises(ConfigError, match="seed must be an integer"):
            check_seed(bad)


def test_a_seed_repeats_the_evaluation_whatever_ran_before(tmp_path: Path) -> None:
    evaluator = pl.Classification(
        train_dataloaders=pl.DataLoader(retia.trace(DigitsDataset)("train"), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(retia.trace(DigitsDataset)("val"), batch_size=128),
        max_epochs=2,
    )
    first = evaluator.evaluate(small, seed=7, output_dir=tmp_path / "a")
    torch.rand(1000)  # the generators moved on meanwhile
    again = evaluator.evaluate(small, seed=7, output_dir=tmp_path / "b")
    other = evaluator.evaluate(small, seed=8, output_dir=tmp_path / "c")
    assert first.final == again.final
    assert first.intermediates == again.intermediates
    assert isinstance(first.final, dict) and isinstance(other.final, dict)
    assert first.final["val_loss"] != other.final["val_loss"]
    with pytest.raises(ConfigError, match="seed must be"):
        evaluator.evaluate(small, seed=-3, output_dir=tmp_path / "d")


def test_the_data_order_is_the_evaluators_not_the_models(tmp_path: Path) -> None:
    """Two models drawing different amounts of randomness while built, and two seeds: one data
    order, one noise (drawn in this process by the dataset); the model's dropout is its own."""
    evaluator = recording_evaluator()
    SEEN.clear()
    runs: list[tuple[Any, list[float]]] = []
    for i, (model, seed) in enumerate([(small, 1), (wide, 1), (small, 2)]):
        SEEN.append([])
        NOISE.clear()
        result = evaluator.evaluate(model, seed=seed, output_dir=tmp_path / str(i))
        runs.append((result, list(NOISE)))
    assert SEEN[0] == SEEN[1] == SEEN[2]
    assert sorted(SEEN[0][: len(SEEN[0]) // 2]) == list(range(len(SEEN[0]) // 2))  # a permutation
    assert SEEN[0][:64] != list(range(64))  # shuffled
    assert runs[0][1] == runs[1][1] == runs[2][1]
    assert runs[0][0].final != runs[2][0].final  # another seed: another initialization


def test_an_unseeded_evaluation_leaves_the_loaders_as_they_were(tmp_path: Path) -> None:
    evaluator = recording_evaluator()
    SEEN[:] = [[], []]
    evaluator.evaluate(small, seed=3, output_dir=tmp_path / "seeded")
    loader: Any = evaluator.train_dataloaders
    assert type(loader).__iter__ is torch.utils.data.DataLoader.__iter__
    assert not hasattr(loader, "_retia_stream")
    torch.manual_seed(3)
    SEEN.append([])
    evaluator.evaluate(small, output_dir=tmp_path / "unseeded")  # the user's own seeding holds
    torch.manual_seed(3)
    SEEN.append([])
    evaluator.evaluate(small, output_dir=tmp_path / "unseeded-again")
    assert SEEN[-1] == SEEN[-2]


class NoisyDataModule(pytorch_lightning.LightningDataModule):
    def train_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(NoisyDigits("train"), batch_size=64, shuffle=True)

    def val_dataloader(self) -> Any:
        return torch.utils.data.DataLoader(NoisyDigits("val"), batch_size=128)


def test_a_datamodules_loaders_draw_from_the_data_stream(tmp_path: Path) -> None:
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, num_sanity_val_steps=0)
    datamodule = retia.trace(NoisyDataModule)()
    evaluator = pl.Lightning(Recording(), trainer, datamodule=datamodule)
    SEEN.clear()
    for i, model in enumerate([small, wide]):
        SEEN.append([])
        evaluator.evaluate(model, seed=5, output_dir=tmp_path / str(i))
    assert SEEN[0] == SEEN[1]
    assert "train_dataloader" not in vars(datamodule)  # the hook is the module's own again
