"""Models for packed trials over the wire: ones that diverge, raise or slow their pack down, and a
space with a dead op (they are imported by the workers' trial processes, so they live in a module
of their own)."""

from __future__ import annotations

import time
from collections import OrderedDict

import torch
from torch import nn

import retia.nn as rnn


def _net() -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, 32), nn.Dropout(0.3), nn.ReLU(), nn.Linear(32, 10))


class Diverges(nn.Module):
    """Trains for five batches, then its outputs (and so its loss) are NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        out: torch.Tensor = self.net(x)
        return out * float("nan") if self.calls > 5 else out


class Raises(nn.Module):
    """Raises in its seventh training forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        if self.calls == 7:
            raise RuntimeError("the candidate broke at its 7th batch")
        out: torch.Tensor = self.net(x)
        return out


class SlowAfter(nn.Module):
    """Sleeps ``delay`` seconds in each training forward after its first ``fast`` ones: its pack
    (one process) is slow while it is in it, and fast once it left."""

    def __init__(self, fast: int = 23, delay: float = 0.25) -> None:
        super().__init__()
        self.net = _net()
        self.calls = 0
        self.fast, self.delay = fast, delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        if self.training and self.calls > self.fast:
            time.sleep(self.delay)
        out: torch.Tensor = self.net(x)
        return out


class Hangs(nn.Module):
    """Its fifth training forward does not come back for a minute (a step stuck in Python)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        if self.calls == 5:
            time.sleep(60)
        out: torch.Tensor = self.net(x)
        return out


class Zero(nn.Module):
    """DARTS' ``none`` op: all zeros, so a model that picks it predicts one class whatever it learns."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 0.0


class DeadOpSpace(rnn.ModelSpace):
    """A width and one op over the 64 pixels; the ``zero`` op leaves the head nothing to read (chance
    accuracy from the first epoch on: the loser an early-stopping rule prunes)."""

    def __init__(self) -> None:
        super().__init__()
        width = rnn.ValueChoice([16, 32, 64], label="width")
        self.stem = rnn.Sequential(rnn.Linear(64, width), rnn.ReLU())
        self.op = rnn.LayerChoice(
            OrderedDict(
                relu=rnn.Sequential(rnn.Linear(width, width), rnn.ReLU()),
                tanh=rnn.Sequential(rnn.Linear(width, width), rnn.Tanh()),
                gelu=rnn.Sequential(rnn.Linear(width, width), rnn.GELU()),
                zero=Zero(),
            ),
            label="op",
        )
        self.head = rnn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.op(self.stem(x)))
        return out
