"""A known search space from retia.nn.hub, scaled down to scikit-learn's 8x8 digits and searched.

ProxylessNAS (each block a choice of kernel size x expansion ratio, searched stage depths) or
MobileNetV3 (searched widths, kernels, expansion ratios, depths and squeeze-excite), the
Classification evaluator, regularized evolution (or random search), and local CPU workers on this
machine. At the end: the best architectures found, under NNI's labels.

    python examples/hub_search.py                                 # ProxylessNAS, 6 trials, 2 workers
    python examples/hub_search.py --space mobilenetv3 --trials 12 --epochs 3
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import retia
import retia.lightning as pl
from retia.datasets import DigitsDataset
from retia.nn import ModelSpace
from retia.nn.hub import DARTS, MobileNetV3Space, NasBench201, ProxylessNAS
from retia.strategy import Random, RegularizedEvolution, Strategy

# The papers' ImageNet spaces, narrowed to 8x8 grey images: few channels, two downsamples.
SPACES: dict[str, Callable[[], ModelSpace]] = {
    "proxylessnas": lambda: ProxylessNAS(
        num_labels=10,
        base_widths=(8, 8, 16, 16, 24, 24, 32, 32, 64),
        in_channels=1,
        downsamples=(False, False, True, False, True, False, False, False),
        kernel_sizes=(3, 5),
        depth_range=(1, 2),
    ),
    "mobilenetv3": lambda: MobileNetV3Space(
        num_labels=10,
        base_widths=(8, 8, 8, 16, 16, 24, 24, 32, 64),
        width_multipliers=(0.5, 1.0),
        expand_ratios=(2.0, 4.0),
        kernel_sizes=(3, 5),
        depth_range=(1, 2),
        stride=(1, 1, 2, 1, 2, 1, 1, 1, 1),
        dropout_rate=0.0,
        in_channels=1,
    ),
    "darts": lambda: DARTS(width=8, num_cells=3, num_labels=10, in_channels=1),
    "nasbench201": lambda: NasBench201(
        stem_out_channels=8, num_modules_per_stack=1, num_labels=10, in_channels=1
    ),
}
STRATEGIES: dict[str, Callable[[int], Strategy]] = {
    "evolution": lambda seed: RegularizedEvolution(population_size=4, sample_size=2, seed=seed),
    "random": lambda seed: Random(seed=seed),
}


def classification(epochs: int) -> pl.Classification:
    """Digits as 1x8x8 images; the loaders travel to the workers as recipes."""
    images = retia.trace(DigitsDataset)
    return pl.Classification(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(images("train", flatten=False), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(images("val", flatten=False), batch_size=512),
        max_epochs=epochs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--space", choices=sorted(SPACES), default="proxylessnas")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="evolution")
    parser.add_argument(
        "--trials", type=int, default=6, help="architectures to evaluate (default %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="local workers (default %(default)s)")
    parser.add_argument(
        "--epochs", type=int, default=2, help="training epochs per trial (default %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("retia-experiments/hub-search"), help="experiment directory"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    if args.out.exists():
        shutil.rmtree(args.out)
    space = SPACES[args.space]()
    print(
        f"{args.space}: {space.size():.3g} architectures, {len(space.search_space())} decisions; "
        f"{args.trials} trials of {args.strategy} on {args.workers} local workers"
    )
    started = time.monotonic()
    exp = retia.Experiment(
        space, classification(args.epochs), STRATEGIES[args.strategy](args.seed), path=args.out
    )
    results = exp.run(max_trials=args.trials, concurrency=args.workers, workers=args.workers, live=False)
    print(f"{len(results)} trials in {time.monotonic() - started:.0f}s")
    scored: list[tuple[float, Any]] = sorted(
        ((r.score, r) for r in results if r.score is not None), key=lambda item: -item[0]
    )
    for rank, (score, result) in enumerate(scored[:3], 1):
        print(f"rank {rank}: trial #{result.key} val_acc {score:.4f} {result.arch}")
    [best] = exp.export_top_models(top_k=1)
    print(f"best architecture: {best}")


if __name__ == "__main__":
    main()
