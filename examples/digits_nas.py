"""The embedded demo: a real architecture search on scikit-learn's handwritten digits.

A model space with layer, width and skip choices; the Classification evaluator (PyTorch
Lightning); regularized evolution; a private dispatcher and local CPU workers on this
machine. At the end: the top architectures, a report PNG, and the best architecture
retrained and exported to ONNX (open it in Netron).

    python examples/digits_nas.py                       # ~20 trials, 2 workers, 4 per process
    python examples/digits_nas.py --trials 40 --strategy tpe --workers 4 --pack 1
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import retia
import retia.lightning as pl
import retia.nn as nn
from retia.arch import FrozenModel
from retia.client.summary import write_report
from retia.datasets import DigitsDataset
from retia.reporting import default_value
from retia.strategy import TPE, GridSearch, Random, RegularizedEvolution, Strategy


class DigitsSpace(nn.ModelSpace):
    """Two blocks over the 64 pixels: the op of each block, one shared width, and a skip connection."""

    def __init__(self) -> None:
        super().__init__()
        width = nn.ValueChoice([16, 32, 64, 128], label="width")
        self.stem = nn.Sequential(nn.Linear(64, width), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.LayerChoice(
                OrderedDict(
                    relu=nn.Sequential(nn.Linear(width, width), nn.ReLU()),
                    gelu=nn.Sequential(nn.Linear(width, width), nn.GELU()),
                    tanh=nn.Sequential(nn.Linear(width, width), nn.Tanh()),
                    bottleneck=nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, width)),
                    identity=nn.Identity(),
                ),
                label=f"block{i}",
            )
            for i in range(2)
        )
        self.skip = nn.InputChoice(
            2, label="skip"
        )  # add the stem's output to the head's input, or the first block's
        self.dropout = nn.Dropout(nn.ValueChoice([0.0, 0.2], label="dropout"))
        self.head = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        first = self.blocks[0](stem)
        out = self.blocks[1](first)
        logits: torch.Tensor = self.head(self.dropout(out + self.skip([stem, first])))
        return logits


STRATEGIES: dict[str, Callable[[int], Strategy]] = {
    "evolution": lambda seed: RegularizedEvolution(population_size=8, sample_size=4, seed=seed),
    "random": lambda seed: Random(seed=seed),
    "tpe": lambda seed: TPE(seed=seed, n_startup_trials=6),
    "grid": lambda seed: GridSearch(),
}


def classification(epochs: int, export_onnx: bool = False, **trainer_kwargs: Any) -> pl.Classification:
    train = pl.DataLoader(retia.trace(DigitsDataset)("train"), batch_size=64, shuffle=True)
    val = pl.DataLoader(retia.trace(DigitsDataset)("val"), batch_size=512)
    return pl.Classification(
        learning_rate=3e-3,
        train_dataloaders=train,
        val_dataloaders=val,
        max_epochs=epochs,
        export_onnx=export_onnx,
        **trainer_kwargs,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trials", type=int, default=20, help="architectures to evaluate (default %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="local workers (default %(default)s)")
    parser.add_argument("--strategy", choices=sorted(STRATEGIES), default="evolution")
    parser.add_argument(
        "--epochs", type=int, default=4, help="training epochs per trial (default %(default)s)"
    )
    parser.add_argument(
        "--pack",
        type=int,
        default=4,
        help="candidates trained together in one process on the same batches: these small models "
        "spend most of a step in Lightning, not in the model (default %(default)s; 1: one per process)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=Path("retia-experiments/digits-demo"), help="experiment directory"
    )
    parser.add_argument("--address", help="use a running dispatcher instead of local workers")
    parser.add_argument(
        "--no-live", action="store_true", help="no live view (it is off anyway when not on a terminal)"
    )
    args = parser.parse_args()
    console = Console()
    logging.basicConfig(level=logging.WARNING)

    if args.out.exists():
        shutil.rmtree(args.out)
    space = DigitsSpace()
    console.print(
        f"[bold]retia demo[/bold]: {space.size()} architectures in the space, {args.trials} trials, "
        f"{args.strategy}, {args.workers} local workers, {args.epochs} epochs each"
        + (f", {args.pack} per process" if args.pack > 1 else "")
    )
    started = time.monotonic()
    exp = retia.Experiment(
        space, classification(args.epochs), STRATEGIES[args.strategy](args.seed), path=args.out
    )
    results = exp.run(
        max_trials=args.trials,
        concurrency=args.workers * args.pack,
        workers=args.workers,
        pack=args.pack,
        address=args.address,
        live=False if args.no_live else None,
    )
    elapsed = time.monotonic() - started

    table = Table(title=f"top architectures ({len(results)} trials in {elapsed:.0f}s)")
    for column in ("rank", "trial", "val_acc", "architecture"):
        table.add_column(column)
    for rank, arch in enumerate(exp.export_top_models(top_k=5), 1):
        result = next(r for r in results if r.arch == arch)
        table.add_row(str(rank), f"#{result.key}", f"{result.score:.4f}", str(arch))
    console.print(table)

    png, summary = write_report(args.out)
    [best] = exp.export_top_models(top_k=1)
    console.print("retraining the best architecture and exporting it to ONNX ...")
    final = classification(
        args.epochs, export_onnx=True, enable_progress_bar=False, enable_model_summary=False
    ).evaluate(FrozenModel(DigitsSpace, best), output_dir=args.out / "best-model")  # built inside fit
    onnx_file = args.out / "best-model" / "model.onnx"
    val_acc = default_value(final.final) if final.final is not None else float("nan")
    console.print(f"best architecture: {best} (val_acc {val_acc:.4f} after retraining)")
    console.print(f"report:   {png}\nsummary:  {summary}\nmodel:    {onnx_file} (open it in Netron)")
    console.print(f"per trial: logs and files under {args.out / 'cluster' / 'artifacts'}")
    console.print(f"browse it: retia dashboard {args.out}")


if __name__ == "__main__":
    main()
