"""GPU workers for real, on a machine with CUDA: placement, time to the first CUDA operation, the
Lightning evaluator's overhead on the device, a packed trial and a one-shot supernet.

A ``local_cluster`` with one worker per visible GPU (``retia.devices.visible_gpus``: the workers'
fork servers never initialize CUDA; each trial process does):

- **placement**: two trials per GPU run a CUDA operation; each must see exactly one device, the
  same UUID for every trial of one worker and a different one per worker (its ``Trial.devices``),
  and report its time from start to the first CUDA operation;
- **search**: the demo's search (``examples/digits_nas.py``'s space and evaluator, regularized
  evolution) with ``--trials`` trials on those workers, the evaluator on each trial's GPU;
- **evaluator vs hand-written loop**, in this process on GPU 0: ``Classification.evaluate`` beside
  a plain PyTorch loop doing the same training (same data, model, optimizer, epochs, seed, batches
  moved to the device the same way), the MLP widened until one training step takes >= 5 ms;
  best of ``--repeats``, interleaved (target: <= 1.05x);
- **packed**: ``--pack`` candidates of the demo's space in one trial against one trial each;
- **one-shot**: DARTS on the hub DARTS space (digits as 1x8x8 images) for ``--epochs`` epochs,
  the supernet trained as one trial on a worker's GPU: seconds per epoch and its peak memory.

It prints a table (with each part's peak GPU memory) and exits non-zero on any failure. Without
CUDA it says so and exits 0. Nothing is written inside the repository.

    .venv/bin/python benchmarks/gpu.py [--trials 8] [--epochs 3] [--repeats 3] [--pack 8] [--markdown]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _tables import to_markdown
from rich.console import Console
from rich.table import Table

import retia
import retia.lightning as pl
from retia import FunctionalEvaluator, report_final_result
from retia.client.backend import Backend
from retia.client.cluster import local_cluster
from retia.client.experiment import Experiment
from retia.datasets import DigitsDataset
from retia.devices import visible_gpus
from retia.protocol import DeviceFacts, TrialState
from retia.reporting import default_value
from retia.strategy import RegularizedEvolution

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the demo's space and evaluator, as `make demo` runs them
from digits_nas import DigitsSpace, classification  # noqa: E402

GiB = float(1 << 30)
STEP_TARGET_S = 0.005  # the evaluator comparison's model: one training step at least this long


class Failed(Exception):
    """A check of the benchmark did not hold."""


def cuda_probe(model_cls: Any) -> None:
    """A trial's first CUDA operation; reports how many devices it sees."""
    import torch

    torch.ones(1, device="cuda").sum().item()
    report_final_result(float(torch.cuda.device_count()))


def _facts(trial: Any) -> DeviceFacts:
    if trial.state is not TrialState.SUCCEEDED or trial.devices is None:
        raise Failed(f"trial {trial.id} ended {trial.state.value} ({trial.change and trial.change.reason})")
    facts: DeviceFacts = trial.devices
    return facts


def placement(backend: Backend, gpus: list[str]) -> dict[str, float]:
    """Two trials per GPU: each sees one device, one UUID per worker, a different one each."""
    trials = [backend.submit(DigitsSpace, FunctionalEvaluator(cuda_probe)) for _ in range(2 * len(gpus))]
    uuid_of: dict[str, str] = {}
    first_ops: list[float] = []
    for trial in trials:
        seen = trial.result(timeout=600)
        facts = _facts(trial)
        if seen != 1 or len(facts.gpus) != 1 or len(facts.uuids) != 1 or facts.first_cuda_s is None:
            raise Failed(f"trial {trial.id} on {trial.worker} saw {seen} devices: {facts}")
        if uuid_of.setdefault(trial.worker, facts.uuids[0]) != facts.uuids[0]:
            raise Failed(f"worker {trial.worker}'s trials saw different GPUs: {facts.uuids[0]}")
        first_ops.append(facts.first_cuda_s)
    if len(set(uuid_of.values())) != len(uuid_of):
        raise Failed(f"two workers' trials shared a GPU: {uuid_of}")
    return {"trials": len(trials), "first_op_median_s": statistics.median(first_ops), "workers": len(uuid_of)}


def search(backend: Backend, trials: int, epochs: int, tmp: Path) -> dict[str, float]:
    """The demo's search on the cluster's GPUs."""
    exp = Experiment(
        DigitsSpace(),
        classification(epochs),
        RegularizedEvolution(population_size=4, sample_size=2, seed=0),
        path=tmp / "search",
    )
    start = time.perf_counter()
    results = exp.run(
        max_trials=trials,
        concurrency=2 * len(visible_gpus()),
        address=backend.address,
        key_file=backend_key(backend),
        live=False,
    )
    wall = time.perf_counter() - start
    failed = [r for r in results if r.state != "SUCCEEDED"]
    if failed:
        raise Failed(f"{len(failed)} search trial(s) failed: {failed[0].reason}")
    facts = [r.devices for r in results if r.devices is not None]
    if len(facts) != len(results) or any(not f.uuids for f in facts):
        raise Failed("a search trial did not run on its GPU (no CUDA device in its facts)")
    first = [f.first_cuda_s for f in facts if f.first_cuda_s is not None]
    return {
        "wall_s": wall,
        "trials": len(results),
        "first_op_median_s": statistics.median(first) if first else float("nan"),
        "peak_gib": max(f.peak_memory_bytes for f in facts) / GiB,
    }


def backend_key(backend: Backend) -> Path:
    cluster = backend.cluster
    if cluster is None:
        raise Failed("the backend was not made by local_cluster")
    return cluster.key_file


# ---- the evaluator beside a hand-written loop, in this process, on GPU 0 ----


def _model(hidden: int) -> Any:
    from torch import nn

    return nn.Sequential(
        nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10)
    )


def _loaders(batch: int) -> tuple[Any, Any]:
    """The digits, each training sample 16 times (enough steps an epoch for a per-step cost to show)."""
    import torch

    data = DigitsDataset("train")
    xs = torch.stack([data[i][0] for i in range(len(data))]).repeat(16, 1)
    ys = torch.stack([torch.as_tensor(data[i][1]) for i in range(len(data))]).repeat(16)
    train = pl.DataLoader(retia.trace(torch.utils.data.TensorDataset)(xs, ys), batch_size=batch, shuffle=True)
    val = pl.DataLoader(retia.trace(DigitsDataset)("val"), batch_size=512)
    return train, val


def _step_seconds(hidden: int, batch: int) -> float:
    import torch

    model = _model(hidden).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 64, device="cuda"), torch.randint(0, 10, (batch,), device="cuda")
    for steps in (3, 20):  # warm-up, then timed
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / 20


def hand_loop(hidden: int, batch: int, epochs: int, seed: int) -> float:
    import torch

    torch.manual_seed(seed)
    train, val = _loaders(batch)
    model = _model(hidden).cuda()
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    accuracy = 0.0
    for _ in range(epochs):
        model.train()
        for x, y in train:
            x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
            optimizer.zero_grad()
            criterion(model(x), y).backward()
            optimizer.step()
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for x, y in val:
                x, y = x.cuda(non_blocking=True), y.cuda(non_blocking=True)
                correct += int((model(x).argmax(-1) == y).sum())
                total += len(y)
        accuracy = correct / total
    return accuracy


def evaluator_run(hidden: int, batch: int, epochs: int, seed: int) -> float:
    train, val = _loaders(batch)
    evaluator = pl.Classification(
        learning_rate=1e-3, train_dataloaders=train, val_dataloaders=val, max_epochs=epochs
    )
    with tempfile.TemporaryDirectory(prefix="retia-gpu-bench-") as tmp:
        result = evaluator.evaluate(functools.partial(_model, hidden), output_dir=Path(tmp), seed=seed)
    if result.final is None:
        raise Failed("Classification reported no final result")
    return default_value(result.final)


def evaluator_overhead(epochs: int, repeats: int) -> dict[str, float]:
    import torch

    batch, hidden = 512, 1024
    while _step_seconds(hidden, batch) < STEP_TARGET_S and hidden < 1 << 15:
        hidden *= 2
    step = _step_seconds(hidden, batch)
    times: dict[str, list[float]] = {"hand": [], "retia": []}
    torch.cuda.reset_peak_memory_stats()
    for i in range(repeats + 1):  # the first round warms up (kernels, allocator) and is not counted
        for name, fn in (("hand", hand_loop), ("retia", evaluator_run)):
            start = time.perf_counter()
            fn(hidden, batch, epochs, 0)
            torch.cuda.synchronize()
            if i:
                times[name].append(time.perf_counter() - start)
    hand, ours = min(times["hand"]), min(times["retia"])
    return {
        "hidden": hidden,
        "step_ms": step * 1000,
        "hand_s": hand,
        "retia_s": ours,
        "ratio": ours / hand,
        "peak_gib": torch.cuda.max_memory_allocated() / GiB,
    }


def packed(backend: Backend, pack: int, epochs: int) -> dict[str, float]:
    """``pack`` candidates in one trial against one trial each, on the GPUs."""
    space = DigitsSpace()
    archs = [space.random_sample(seed=i) for i in range(pack)]
    walls: dict[int, float] = {}
    peaks: list[int] = []
    for size in (1, pack):
        start = time.perf_counter()
        trials = backend.submit_many(
            [DigitsSpace] * pack, classification(epochs), archs=archs, seeds=list(range(pack)), pack=size
        )
        for trial in trials:
            trial.result(timeout=1800)
            peaks.append(_facts(trial).peak_memory_bytes)
        walls[size] = time.perf_counter() - start
    return {
        "alone_s": walls[1],
        "packed_s": walls[pack],
        "speedup": walls[1] / walls[pack],
        "peak_gib": max(peaks) / GiB,
    }


def oneshot(backend: Backend, epochs: int, tmp: Path) -> dict[str, float]:
    """A DARTS supernet trained as one trial on a worker's GPU."""
    from retia.nn.hub import DARTS as DartsSpace
    from retia.oneshot import DARTS

    digits = retia.trace(DigitsDataset)
    evaluator = pl.Classification(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(digits("train", flatten=False), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(digits("val", flatten=False), batch_size=256),
        max_epochs=epochs,
    )
    space = DartsSpace(width=16, num_cells=5, in_channels=1)
    exp = Experiment(space, evaluator, DARTS(seed=0), path=tmp / "oneshot")
    start = time.perf_counter()
    (result,) = exp.run(max_trials=1, address=backend.address, key_file=backend_key(backend), live=False)
    wall = time.perf_counter() - start
    if result.state != "SUCCEEDED":
        raise Failed(f"the supernet's trial ended {result.state}: {result.reason}")
    facts = result.devices
    if facts is None or not facts.uuids or facts.peak_memory_bytes <= 0:
        raise Failed(f"the supernet did not train on a GPU: {facts}")
    return {"epochs": epochs, "s_per_epoch": wall / epochs, "peak_gib": facts.peak_memory_bytes / GiB}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--trials", type=int, default=8, help="trials of the demo's search (default %(default)s)"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of the evaluator comparison")
    parser.add_argument(
        "--pack", type=int, default=8, help="candidates in the packed trial (default %(default)s)"
    )
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown too")
    args = parser.parse_args()
    console = Console()
    import torch

    gpus = visible_gpus()
    if not gpus or not torch.cuda.is_available():
        console.print(
            "benchmarks/gpu.py: no CUDA device on this machine (nvidia-smi, CUDA_VISIBLE_DEVICES): "
            "nothing to measure"
        )
        return 0
    table = Table(title=f"GPU workers: {len(gpus)} x {torch.cuda.get_device_name(0)}")
    for column in ("measure", "result", "peak GPU memory"):
        table.add_column(column)
    failures: list[str] = []
    with (
        tempfile.TemporaryDirectory(prefix="retia-gpu-") as tmp,
        local_cluster(len(gpus), home=Path(tmp) / "cluster", gpus=gpus) as backend,
    ):
        parts = [
            ("placement", lambda: placement(backend, gpus)),
            ("search", lambda: search(backend, args.trials, args.epochs, Path(tmp))),
            ("evaluator vs hand loop", lambda: evaluator_overhead(args.epochs, args.repeats)),
            (f"pack {args.pack}", lambda: packed(backend, args.pack, args.epochs)),
            ("one-shot DARTS", lambda: oneshot(backend, args.epochs, Path(tmp))),
        ]
        for name, part in parts:
            try:
                numbers = part()
            except Exception as exc:  # every part runs; the exit status says one failed
                failures.append(f"{name}: {exc}")
                table.add_row(name, f"[red]FAILED[/red]: {exc}", "-")
                continue
            peak = numbers.pop("peak_gib", None)
            shown = ", ".join(
                f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in numbers.items()
            )
            table.add_row(name, shown, "-" if peak is None else f"{peak:.2f} GiB")
    console.print(table)
    if args.markdown:
        print(to_markdown(table))
    for failure in failures:
        console.print(f"[red]{failure}[/red]")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
