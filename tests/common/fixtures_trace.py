"""Classes decorated with ``@retia.trace`` at module level, as a user's experiment file has them.

They are importable by name (``fixtures_trace.Point``), so instances pickle by that name, in
this process and in DataLoader worker processes started with ``spawn``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch.utils.data import Dataset

import retia


@retia.trace
class Point:
    """A traced class with positional-or-keyword parameters."""

    def __init__(self, x: int, y: int = 0) -> None:
        self.x = x
        self.y = y

    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


class Point3(Point):
    """A subclass with its own signature: its instances record its own arguments."""

    def __init__(self, x: int, y: int, z: int) -> None:
        super().__init__(x * 10, y * 10)
        self.z = z


class NamedPoint(Point):
    """A subclass that keeps the parent's signature."""

    label = "named"


@retia.trace(kw_only=False)
class Pair:
    """Traced with kw_only=False: positional arguments stay positional in the recipe."""

    def __init__(self, first: Any, second: Any) -> None:
        self.first = first
        self.second = second


@retia.trace
class PidDataset(Dataset[tuple[torch.Tensor, int]]):
    """Returns each item with the pid of the process that read it, to see worker processes."""

    def __init__(self, inner: Dataset[tuple[torch.Tensor, ...]]) -> None:
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.inner[i][0], os.getpid()
