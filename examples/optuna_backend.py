"""An external Optuna study driving retia's dispatcher directly: retia as someone else's backend.

Optuna owns the search (its TPE sampler and median pruner); retia runs each trial on a worker
and streams its per-epoch accuracy back, which Optuna uses to prune. Run it against a local
cluster (the default) or a running dispatcher::

    python examples/optuna_backend.py --trials 12
    python examples/optuna_backend.py --credential alice.cred   # retia credential issue --role client
"""

from __future__ import annotations

import argparse
import contextlib
import queue
from collections.abc import Iterator
from typing import Any

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader

import retia
from retia import FunctionalEvaluator, report_final_result, report_intermediate_result, trace
from retia.datasets import DigitsDataset
from retia.reporting import default_value


class MLP(nn.Module):
    def __init__(self, hidden: int, depth: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = 64
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        self.net = nn.Sequential(*layers, nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)
        return logits


def fit(model_cls: Any, lr: float, epochs: int, train: DataLoader[Any], val: DataLoader[Any]) -> None:
    torch.manual_seed(0)
    model = model_cls()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    acc = 0.0
    for _ in range(epochs):
        for x, y in train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        with torch.no_grad():
            x, y = next(iter(val))
            acc = float((model(x).argmax(1) == y).float().mean())
        report_intermediate_result(acc)
    report_final_result(acc)


@contextlib.contextmanager
def backend_for(args: argparse.Namespace) -> Iterator[retia.Backend]:
    if args.address or args.credential:
        with retia.connect(args.address, key_file=args.key_file, credential=args.credential) as backend:
            yield backend
    else:
        with retia.local_cluster(workers=args.workers) as backend:
            yield backend


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="local workers when no --address is given")
    parser.add_argument(
        "--credential", help="a client credential for a running dispatcher (holds its address)"
    )
    parser.add_argument(
        "--address", help="a running dispatcher, e.g. tcp://head:5555 (default: the credential's)"
    )
    parser.add_argument("--key-file", help="or, on the head node, its cluster key file")
    args = parser.parse_args()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=0),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
    )
    train = trace(DataLoader)(trace(DigitsDataset)("train"), batch_size=64, shuffle=True)
    val = trace(DataLoader)(trace(DigitsDataset)("val"), batch_size=512)
    events: queue.SimpleQueue[tuple[retia.Trial, Any]] = queue.SimpleQueue()

    with backend_for(args) as backend:
        running: dict[str, tuple[optuna.Trial, retia.Trial]] = {}
        asked = pruned = 0
        steps: dict[str, int] = {}
        while asked < args.trials or running:
            while asked < args.trials and len(running) < args.concurrency:
                ot = study.ask()
                model = trace(MLP)(
                    hidden=ot.suggest_categorical("hidden", [16, 32, 64, 128]),
                    depth=ot.suggest_int("depth", 1, 3),
                )
                evaluator = FunctionalEvaluator(
                    fit,
                    lr=ot.suggest_float("lr", 1e-4, 3e-2, log=True),
                    epochs=args.epochs,
                    train=train,
                    val=val,
                )
                rt = backend.submit(model, evaluator, name=f"optuna-{ot.number}")
                rt.add_report_callback(lambda t, value: events.put((t, value)))
                rt.add_done_callback(lambda t: events.put((t, None)))
                running[rt.id] = (ot, rt)
                asked += 1
            rt, value = events.get()
            if rt.id not in running:
                continue
            ot, _ = running[rt.id]
            if value is not None:  # an intermediate result: let Optuna's pruner judge it
                steps[rt.id] = steps.get(rt.id, 0) + 1
                ot.report(value, step=steps[rt.id])
                if ot.should_prune():
                    rt.cancel("pruned by Optuna")
                continue
            del running[rt.id]
            if rt.state is retia.TrialState.SUCCEEDED:
                study.tell(ot, None if rt.final is None else default_value(rt.final))
            elif rt.state is retia.TrialState.CANCELLED:
                study.tell(ot, state=optuna.trial.TrialState.PRUNED)
                pruned += 1
            else:
                study.tell(ot, state=optuna.trial.TrialState.FAIL)
            shown = f"{rt.final:.4f}" if rt.final is not None else "-"
            print(f"trial {ot.number:3d} {rt.state.value:9s} {shown:>7} {ot.params}")

    print(
        f"\nbest accuracy {study.best_value:.4f} with {study.best_params} ({pruned} of {asked} trials pruned)"
    )


if __name__ == "__main__":
    main()
