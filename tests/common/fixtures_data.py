"""Helpers for tests/common: a user's own (uninstalled) module, so it travels by value.

Everything here is what an experiment script would define next to its model: a dataset
that reads a tensor file, a small MLP, and ``fit`` functions for ``FunctionalEvaluator``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import retia
from retia.datasets import DigitsDataset


class TensorFileDataset(Dataset[tuple[torch.Tensor, int]]):
    """Reads a tensor saved with ``torch.save`` when built: the recipe ships the path, not the data."""

    def __init__(self, path: str, num_classes: int = 10) -> None:
        self.path = path
        self.data: torch.Tensor = torch.load(path)
        self.num_classes = num_classes

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.data[i], i % self.num_classes


class Box:
    """Holds any value; used to put an (un)serializable argument inside a traced object."""

    def __init__(self, value: Any, label: str = "box") -> None:
        self.value = value
        self.label = label


def positional_only(a: int, b: int, /, c: int = 0) -> dict[str, int]:
    return {"a": a, "b": b, "c": c}


def star_args(*values: int, scale: int = 1) -> list[int]:
    return [v * scale for v in values]


class MLP(nn.Module):
    """The candidate model: no constructor arguments, as NAS-sampled models have."""

    marker = 1.0

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out


def make_marked_mlp() -> MLP:
    """A zero-argument callable returning a model (the second form ``evaluate`` accepts)."""
    model = MLP()
    model.marker = 3.0
    return model


def accuracy(model: nn.Module, loader: DataLoader[Any]) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(dim=1) == y).sum())
            total += len(y)
    return correct / total


def assert_trains_on_digits(model: nn.Module, steps: int = 20) -> None:
    """Adam on the first 256 training digits as one batch, ``steps`` times: the loss falls by a fifth.
    (A forward first, so lazily built layers have their parameters before the optimizer takes them.)"""
    data = DigitsDataset("train")
    x, y = data.x[:256], data.y[:256]
    model(x)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] * 0.8, losses


def fit_digits(
    model_cls: Callable[[], nn.Module],
    dataloader: DataLoader[Any],
    val_dataloader: DataLoader[Any],
    epochs: int = 5,
) -> None:
    """Seed example (a): train, report validation accuracy per epoch, then the final one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: more threads only contend on a busy machine
    try:
        with torch.random.fork_rng():  # deterministic without touching the caller's RNG state
            torch.manual_seed(0)
            model = model_cls()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            for epoch in range(epochs):
                model.train()
                for x, y in dataloader:
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    optimizer.step()
                retia.report_intermediate_result({"default": accuracy(model, val_dataloader), "epoch": epoch})
    finally:
        torch.set_num_threads(threads)
    retia.report_final_result(accuracy(model, val_dataloader))


def fit_export_onnx(model_cls: Callable[[], nn.Module]) -> None:
    """Seed example (b): export ``model.onnx`` into ``$NNI_OUTPUT_DIR`` (NNI's convention)."""
    model = model_cls()
    model.eval()
    onnx_path = Path(os.environ.get("NNI_OUTPUT_DIR", ".")) / "model.onnx"
    torch.onnx.export(model, (torch.randn(10, 64),), str(onnx_path))
    retia.report_final_result(onnx_path.stat().st_size)


def fit_marker(model_cls: Callable[[], nn.Module]) -> None:
    """Reports which model it was given: its marker, and its output on a row of ones."""
    model = model_cls()
    assert isinstance(model, MLP), type(model)
    with torch.no_grad():
        out = model(torch.ones(1, 64)).sum()
    retia.report_final_result({"default": model.marker, "output": out})


def fit_record_env(model_cls: Callable[[], Any], sleep: float = 0.0) -> None:
    """Writes the output-dir variables it sees into that directory, then reports 1..3."""
    seen = {name: os.environ.get(name) for name in ("RETIA_OUTPUT_DIR", "NNI_OUTPUT_DIR")}
    out = Path(os.environ["RETIA_OUTPUT_DIR"])
    (out / "env.json").write_text(json.dumps(seen))
    time.sleep(sleep)
    for i in range(3):
        retia.report_intermediate_result(i + 1)
    retia.report_final_result({"default": 0.5, "loss": 2})


def fit_fails(model_cls: Callable[[], Any]) -> None:
    if not os.environ.get("RETIA_OUTPUT_DIR"):
        raise AssertionError("RETIA_OUTPUT_DIR is not set during fit")
    raise RuntimeError("fit blew up on purpose")


def fit_reports(
    model_cls: Callable[[], Any], values: list[Any], finals: list[Any], loader: DataLoader[Any] | None = None
) -> None:
    """Reports the given values as they are (good or bad); then the loader's dataset size, if any."""
    for value in values:
        retia.report_intermediate_result(value)
    if loader is not None:
        retia.report_intermediate_result(len(cast(Sized, loader.dataset)))
    for value in finals:
        retia.report_final_result(value)
