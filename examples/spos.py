"""SPOS (single-path one-shot) in three stages, on scikit-learn's digits and local CPU workers.

1. RandomOneShot trains one supernet as one trial: each step a random path (a width, an
   activation, a depth), all sharing weights.
2. Regularized evolution searches the subnets, each a trial that inherits the supernet's weights
   (sliced to its width) and is only validated: seconds per candidate.
3. The best subnet is retrained from scratch and scored.

    python examples/spos.py                                  # 10 supernet epochs, 20 subnets
    python examples/spos.py --supernet-epochs 4 --trials 8 --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import torch

import retia
import retia.lightning as pl
import retia.nn as nn
from retia.datasets import DigitsDataset
from retia.oneshot import InheritedWeights, RandomOneShot, supernet_weights
from retia.strategy import RegularizedEvolution


class DigitsSupernet(nn.ModelSpace):
    """An MLP on the 64 pixels: its width (shared by every layer), activation and depth searched."""

    def __init__(self) -> None:
        super().__init__()
        width = nn.ValueChoice([16, 32, 64], label="width")
        self.stem = nn.Linear(64, width)
        self.act = nn.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh(), "gelu": nn.GELU()}, label="act")
        self.body = nn.Repeat(
            lambda i: nn.Sequential(nn.Linear(width, width), nn.ReLU()), (0, 2), label="depth"
        )
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.body(self.act(self.stem(x))))
        return out


def classification(epochs: int) -> pl.Classification:
    digits = retia.trace(DigitsDataset)
    return pl.Classification(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(digits("train"), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(digits("val"), batch_size=512),
        max_epochs=epochs,
    )


def accuracy(metric: Any) -> float:
    return float(metric["val_acc"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--supernet-epochs", type=int, default=10, help="stage 1 (default %(default)s)")
    parser.add_argument(
        "--trials", type=int, default=20, help="subnets validated in stage 2 (default %(default)s)"
    )
    parser.add_argument(
        "--epochs", type=int, default=5, help="stage 3's training epochs (default %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="local workers (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("retia-experiments/spos"), help="experiments' directory"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.out.exists():
        shutil.rmtree(args.out)
    local = {"workers": args.workers, "concurrency": args.workers, "live": False}

    started = time.monotonic()
    first = retia.Experiment(
        DigitsSupernet(),
        classification(args.supernet_epochs),
        RandomOneShot(seed=args.seed),
        path=args.out / "supernet",
    )
    [trained] = first.run(**local)
    elapsed = time.monotonic() - started
    print(f"stage 1: supernet trained for {args.supernet_epochs} epochs in {elapsed:.0f}s ({trained.state})")

    started = time.monotonic()
    subnets = InheritedWeights(classification(1), supernet_weights(first))
    strategy = RegularizedEvolution(population_size=8, sample_size=3, seed=args.seed)
    second = retia.Experiment(DigitsSupernet(), subnets, strategy, path=args.out / "subnets")
    results = second.run(max_trials=args.trials, **local)
    [best] = second.export_top_models()
    scored = sorted((accuracy(r.final) for r in results if r.final is not None), reverse=True)
    elapsed = time.monotonic() - started
    print(
        f"stage 2: {len(results)} subnets validated with inherited weights in {elapsed:.0f}s; "
        f"best {scored[0]:.4f}, median {scored[len(scored) // 2]:.4f}: {best}"
    )

    started = time.monotonic()
    torch.manual_seed(args.seed)
    retrained = classification(args.epochs).evaluate(
        DigitsSupernet().freeze(best), output_dir=args.out / "retrained"
    )
    print(
        f"stage 3: retrained from scratch for {args.epochs} epochs in {time.monotonic() - started:.0f}s: "
        f"val_acc {accuracy(retrained.final):.4f}"
    )


if __name__ == "__main__":
    main()
