"""Spaces and modules for the one-shot tests: a space where some candidates are known to be useless."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import retia
import retia.lightning as pl
import retia.nn as nn
from retia.datasets import DiabetesDataset, DigitsDataset

Loader = torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]]


class Zero(nn.Module):
    """A useless candidate: it outputs zeros whatever it is given."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


def _block(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(width, width), nn.ReLU())


class UselessOpSpace(nn.ModelSpace):
    """Digits MLP whose three blocks each choose a trainable layer or zeros (zeros listed first at
    the middle block, so picking by position alone cannot pass), and whose head picks one of two
    inputs, one of them zeros."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Linear(64, width)
        self.blocks = nn.ModuleList(
            [
                nn.LayerChoice({"lin": _block(width), "zero": Zero()}, label="b0"),
                nn.LayerChoice({"zero": Zero(), "lin": _block(width)}, label="b1"),
                nn.LayerChoice({"lin": _block(width), "zero": Zero()}, label="b2"),
            ]
        )
        self.skip = nn.InputChoice(2, label="head_input")
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for block in self.blocks:
            h = block(h)
        out: torch.Tensor = self.head(self.skip([h * 0.0, h]))
        return out


USEFUL = {"b0": "lin", "b1": "lin", "b2": "lin", "head_input": 1}


def digits(split: Any, batch_size: int = 64) -> Loader:
    return pl.DataLoader(retia.trace(DigitsDataset)(split), batch_size=batch_size, shuffle=split == "train")


class MyModule(pl.LightningModule):
    """A user's own module: its own steps and logging, an optimizer with an epoch-wise schedule
    returned in Lightning's dict shape."""

    def __init__(self, lr: float = 0.01) -> None:
        super().__init__()
        self.lr = lr
        self.default_metric = "val_accuracy"
        self.epochs_started = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("my_train_loss", loss)
        return {"loss": loss}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_accuracy", (logits.argmax(1) == y).float().mean())
        self.log("val_ce", F.cross_entropy(logits, y))

    def on_train_epoch_start(self) -> None:
        self.epochs_started += 1

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.lr)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    def on_fit_end(self) -> None:  # what the test reads back: the schedule ran, the hooks were called
        lr = self.trainer.optimizers[0].param_groups[0]["lr"]
        retia.report_intermediate_result(-1.0)  # a module reporting for itself: set aside
        path = Path(os.environ["RETIA_OUTPUT_DIR"]) / "my_module.txt"
        path.write_text(f"{lr} {self.epochs_started}\n")


class EncoderChoices(nn.ModelSpace):
    """The seed page's Encoder (784 pixels to a 3-d embedding) with its layers as a LayerChoice,
    which DARTS relaxes; one candidate forgets the input."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.LayerChoice(
            {
                "forget": _ForgetTo3(),
                "narrow": nn.Sequential(nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 3)),
                "wide": nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 3)),
            },
            label="encoder",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


class _ForgetTo3(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :3] * 0.0


class UselessOpRegressionSpace(nn.ModelSpace):
    """The diabetes regression (10 features) through two blocks that each choose a trainable layer
    or zeros."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Linear(10, width)
        self.blocks = nn.ModuleList(
            [
                nn.LayerChoice({"zero": Zero(), "lin": _block(width)}, label="r0"),
                nn.LayerChoice({"lin": _block(width), "zero": Zero()}, label="r1"),
            ]
        )
        self.head = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x))
        for block in self.blocks:
            h = block(h)
        out: torch.Tensor = self.head(h)
        return out


def diabetes(split: Any, batch_size: int = 32) -> Loader:
    return pl.DataLoader(retia.trace(DiabetesDataset)(split), batch_size=batch_size, shuffle=split == "train")
