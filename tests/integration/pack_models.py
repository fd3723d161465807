"""Models for packed trials over the wire: ones that diverge, raise (forward or backward) or slow
their pack down, and a
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


class _Counting(nn.Module):
    """A digits MLP that counts its training forwards: the models below misbehave at a given one."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += self.training
        self.before(self.calls if self.training else 0)
        out: torch.Tensor = self.net(x)
        return self.after(out)

    def before(self, call: int) -> None:
        """Before the ``call``-th training forward (0: a validation one)."""

    def after(self, out: torch.Tensor) -> torch.Tensor:
        return out


class Diverges(_Counting):
    """Trains for five batches, then its outputs (and so its loss) are NaN."""

    def after(self, out: torch.Tensor) -> torch.Tensor:
        return out * float("nan") if self.calls > 5 else out


class Raises(_Counting):
    """Raises in its seventh training forward."""

    def before(self, call: int) -> None:
        if call == 7:
            raise RuntimeError("the candidate broke at its 7th batch")


class BackwardRaises(_Counting):
    """Its forward runs, its backward raises from its ninth batch on: it scales in place the output
    of a sigmoid, which the sigmoid's backward needs (an architecture's own bug)."""

    def after(self, out: torch.Tensor) -> torch.Tensor:
        out = torch.sigmoid(out)
        if self.calls >= 9:
            out.mul_(2.0)
        return out


class SlowAfter(_Counting):
    """Sleeps ``delay`` seconds in each training forward after its first ``fast`` ones: its pack
    (one process) is slow while it is in it, and fast once it left."""

    def __init__(self, fast: int = 23, delay: float = 0.25) -> None:
        super().__init__()
        self.fast, self.delay = fast, delay

    def before(self, call: int) -> None:
        if call > self.fast:
            time.sleep(self.delay)


class Hangs(_Counting):
    """Its fifth training forward does not come back for a minute (a step stuck in Python)."""

    def before(self, call: int) -> None:
        if call == 5:
            time.sleep(60)


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
