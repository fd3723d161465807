"""Overhead of ``retia.lightning.Classification`` over a plain hand-written PyTorch loop.

Both train the same MLP on scikit-learn's digits with the same DataLoaders, optimizer, epochs
and seed, validating (loss + accuracy) after every epoch. A third contender, a bare
``pytorch_lightning.Trainer`` (no logging, no metrics, everything optional off), separates
Lightning's own floor from what retia adds. Runs alternate, after one untimed warm-up each,
and the best of ``--repeats`` is compared (noise on a shared machine only ever adds time).
One row per ``BATCHxHIDDEN`` config: the ratio depends on how much work a step does, since
Lightning's cost is per step (hooks, closures), not per FLOP.

    .venv/bin/python benchmarks/lightning_overhead.py [--epochs 10] [--repeats 5] \
        [--configs 32x128 ...] [--threads 0]
"""

from __future__ import annotations

import argparse
import functools
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning
import torch
from torch import nn

import retia
import retia.lightning as pl
from retia.datasets import DigitsDataset
from retia.reporting import default_value


def make_model(hidden: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def loaders(batch_size: int) -> tuple[torch.utils.data.DataLoader[Any], torch.utils.data.DataLoader[Any]]:
    train = pl.DataLoader(retia.trace(DigitsDataset)("train"), batch_size=batch_size, shuffle=True)
    val = pl.DataLoader(retia.trace(DigitsDataset)("val"), batch_size=256)
    return train, val


def plain_loop(epochs: int, batch_size: int, seed: int, hidden: int) -> float:
    """What a user would write by hand: train, then validate, every epoch. Returns the last val accuracy."""
    torch.manual_seed(seed)
    train, val = loaders(batch_size)
    model = make_model(hidden)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        train_loss = 0.0
        for x, y in train:
            optimizer.zero_grad()
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * len(y)
        model.eval()
        correct = total = 0
        loss_sum = 0.0
        with torch.no_grad():
            for x, y in val:
                logits = model(x)
                loss_sum += criterion(logits, y).item() * len(y)
                correct += (logits.argmax(-1) == y).sum().item()
                total += len(y)
        accuracy = correct / total
    return accuracy


class _BareModule(pytorch_lightning.LightningModule):
    """The same training as plain_loop in a bare LightningModule: no self.log, no torchmetrics."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.model = make_model(hidden)
        self.criterion = nn.CrossEntropyLoss()
        self.accuracy = 0.0
        self._val = [0, 0]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss: torch.Tensor = self.criterion(self.model(x), y)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = [0, 0]

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._val[0] += int((self.model(x).argmax(-1) == y).sum())
        self._val[1] += len(y)

    def on_validation_epoch_end(self) -> None:
        self.accuracy = self._val[0] / self._val[1]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def bare_lightning(epochs: int, batch_size: int, seed: int, hidden: int) -> float:
    """A bare ``pytorch_lightning.Trainer`` with everything optional off: Lightning's own floor."""
    torch.manual_seed(seed)
    train, val = loaders(batch_size)
    module = _BareModule(hidden)
    trainer = pytorch_lightning.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train, val)
    return module.accuracy


def lightning_run(epochs: int, batch_size: int, seed: int, hidden: int) -> float:
    """The same training through ``Classification.evaluate``. Returns the reported val accuracy."""
    torch.manual_seed(seed)
    train, val = loaders(batch_size)
    evaluator = pl.Classification(train_dataloaders=train, val_dataloaders=val, max_epochs=epochs)
    with tempfile.TemporaryDirectory() as tmp:
        result = evaluator.evaluate(functools.partial(make_model, hidden), output_dir=Path(tmp) / "run")
    if result.final is None:
        raise RuntimeError("Classification reported no final result")
    return default_value(result.final)


def timed(fn: Callable[..., float], *args: int) -> tuple[float, float]:
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


CONTENDERS: dict[str, Callable[..., float]] = {
    "plain": plain_loop,
    "bare PL": bare_lightning,
    "retia": lightning_run,
}


def compare(
    epochs: int, batch_size: int, seed: int, hidden: int, repeats: int
) -> dict[str, tuple[float, float]]:
    """Per contender: best-of-``repeats`` seconds and the last accuracy; runs interleaved."""
    run_args = (epochs, batch_size, seed, hidden)
    for fn in CONTENDERS.values():
        timed(fn, *run_args)  # warm-up: first-call costs (allocator, kernels, lazy imports)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in CONTENDERS}
    for _ in range(repeats):
        for name, fn in CONTENDERS.items():
            runs[name].append(timed(fn, *run_args))
    return {name: (min(t for t, _ in rs), rs[-1][1]) for name, rs in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["32x128", "64x256", "256x1024"],
        help="BATCHxHIDDEN: training batch size x width of the MLP's two hidden layers",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # the bare Trainer's INFO lines
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)

    print(
        f"digits, MLP 64-H-H-10, Adam 1e-3, {args.epochs} epochs with validation after each, "
        f"seed {args.seed}, best of {args.repeats}, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'batch x H':<10}{'steps':>6}{'plain s':>9}{'bare PL s':>11}{'retia s':>9}"
        f"{'retia/plain':>13}{'bare/plain':>12}{'retia/bare':>12}{'acc plain/retia':>17}"
    )
    n_train = len(DigitsDataset("train"))
    for config in args.configs:
        batch_size, hidden = (int(part) for part in config.split("x"))
        r = compare(args.epochs, batch_size, args.seed, hidden, args.repeats)
        (p, p_acc), (b, _), (t, t_acc) = r["plain"], r["bare PL"], r["retia"]
        steps = args.epochs * -(-n_train // batch_size)
        print(
            f"{config:<10}{steps:>6}{p:>9.3f}{b:>11.3f}{t:>9.3f}"
            f"{t / p:>12.2f}x{b / p:>11.2f}x{t / b:>11.2f}x{p_acc:>9.4f}/{t_acc:.4f}"
        )


if __name__ == "__main__":
    main()
