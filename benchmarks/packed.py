"""Packed trials on a real local cluster: throughput of ``submit_many(..., pack=K)`` against pack 1.

``--candidates`` architectures drawn (seeded) from the demo's model space (``DigitsSpace`` of
``examples/digits_nas.py``: a small MLP over the 64 digit pixels) are evaluated with the demo's
``Classification`` evaluator (Adam 3e-3, train batches of 64, validation batches of 512,
``--epochs`` epochs) on ``retia.datasets.DigitsDataset``, on a ``local_cluster`` of ``--workers``
workers. For each K of ``--packs`` all candidates go in one ``submit_many(..., pack=K)`` with the
same trial seeds every time; the wall time runs from that call to the last result. One trial
warms the cluster up before anything is timed.

Every packed trial's final ``default`` metric (validation accuracy) is compared with the same
trial's pack-1 run (same architecture, same seed): the table shows the largest absolute
difference per K, and the script exits non-zero if one is over ``--tolerance`` or a trial failed.
The last column is the CPU each trial cost, from ``/proc`` (as ``dispatch.py``): less moved by
a busy machine than the wall time. Nothing is written inside the repository (the cluster lives
in a temporary directory).

    .venv/bin/python benchmarks/packed.py [--candidates 64] [--epochs 4] \
        [--packs 1 2 4 8 16] [--workers 2] [--markdown]

``--profile K`` runs no cluster: in this process, the first K candidates trained one after
another (``Classification.evaluate``), then packed (``Lightning.evaluate_packed``) under cProfile;
it prints both times and the packed run's top costs.

    .venv/bin/python benchmarks/packed.py --profile 8 [--epochs 4] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _cpu import CpuMeter, CpuSplit
from _tables import to_markdown
from rich.console import Console
from rich.table import Table

from retia.client.backend import Backend, Trial
from retia.client.cluster import local_cluster
from retia.protocol import TrialState
from retia.reporting import default_value

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # the demo's space and evaluator, as `make demo` runs them
from digits_nas import DigitsSpace, classification  # noqa: E402

SEED_BASE = 1000  # trial i runs under seed SEED_BASE + i, whatever its pack


class Failed(Exception):
    """A trial of the benchmark did not succeed."""


def run_all(
    backend: Backend, archs: list[dict[str, Any]], evaluator: Any, pack: int
) -> tuple[float, CpuSplit, list[float]]:
    """Submit every candidate with ``pack``, wait for all: (seconds from submit to the last
    result, CPU per trial of each part of the cluster, each trial's final default metric)."""
    seeds = [SEED_BASE + i for i in range(len(archs))]
    meter = CpuMeter(backend)
    before = meter.snapshot()
    start = time.perf_counter()
    trials = backend.submit_many([DigitsSpace] * len(archs), evaluator, archs=archs, seeds=seeds, pack=pack)
    for trial in trials:
        trial.result(timeout=3600)  # raises TrialFailedError for a failed one
    wall = time.perf_counter() - start
    cpu = CpuMeter.per_trial(before, meter.snapshot(), len(archs))
    return wall, cpu, [_final(trial) for trial in trials]


def _final(trial: Trial) -> float:
    if trial.state is not TrialState.SUCCEEDED or trial.final is None:
        raise Failed(f"trial {trial.id} ended {trial.state.value} without a final result")
    return default_value(trial.final)


def profile(archs: list[dict[str, Any]], evaluator: Any, top: int, console: Console) -> None:
    """The candidates alone then packed, in this process: both times, the packed run's top costs."""
    from retia.arch import FrozenModel

    models = [FrozenModel(DigitsSpace, arch) for arch in archs]
    seeds = [SEED_BASE + i for i in range(len(archs))]
    with tempfile.TemporaryDirectory(prefix="retia-packed-profile-") as tmp:
        evaluator.evaluate(models[0], seed=seeds[0], output_dir=Path(tmp) / "warm-up")
        wall, cpu = time.perf_counter(), time.process_time()
        alone = [
            evaluator.evaluate(m, seed=s, output_dir=Path(tmp) / f"alone-{i}")
            for i, (m, s) in enumerate(zip(models, seeds))
        ]
        solo = (time.perf_counter() - wall, time.process_time() - cpu)

        def pack(name: str) -> tuple[list[Any], float, float]:
            dirs = [Path(tmp) / f"{name}-{i}" for i in range(len(models))]
            wall, cpu = time.perf_counter(), time.process_time()
            results = evaluator.evaluate_packed(models, seeds=seeds, output_dirs=dirs)
            return results, time.perf_counter() - wall, time.process_time() - cpu

        packed, *together = pack("packed")
        profiler = cProfile.Profile()
        profiler.enable()
        _, *profiled = pack("profiled")
        profiler.disable()
    diff = max(abs(default_value(a.final) - default_value(p.final)) for a, (p, _) in zip(alone, packed))
    console.print(
        f"{len(models)} candidates in process, wall / CPU s: one after another {solo[0]:.2f} / "
        f"{solo[1]:.2f}, packed {together[0]:.2f} / {together[1]:.2f} ({solo[1] / together[1]:.2f}x "
        f"less CPU), packed under cProfile {profiled[0]:.2f} / {profiled[1]:.2f}; max |diff| {diff:.2g}"
    )
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(top)
    print(text.getvalue())
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("cumulative").print_stats(top)
    print(text.getvalue())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=64, help="architectures (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs per trial (the demo's: %(default)s)")
    parser.add_argument("--packs", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="pack sizes to time")
    parser.add_argument("--workers", type=int, default=2, help="local workers (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="draws the candidates (default %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1e-4, help="largest |packed - pack 1| allowed")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--profile", type=int, metavar="K", help="profile K candidates packed, in process")
    parser.add_argument("--top", type=int, default=25, help="functions --profile lists (default %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    console = Console(stderr=True)
    packs = sorted(set(args.packs) | {1})  # pack 1 is the reference every other K is checked against
    space = DigitsSpace()
    archs = [space.random_sample(seed=args.seed * 100_003 + i) for i in range(args.candidates)]
    evaluator = classification(args.epochs)
    if args.profile:
        profile(archs[: args.profile], evaluator, args.top, console)
        return 0
    console.print(
        f"{args.candidates} candidates of the demo's DigitsSpace ({space.size()} architectures), "
        f"{args.epochs} epochs each, {args.workers} workers, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    walls: dict[int, float] = {}
    cpus: dict[int, CpuSplit] = {}
    finals: dict[int, list[float]] = {}
    failed = ""
    with tempfile.TemporaryDirectory(prefix="retia-packed-bench-") as tmp:
        with local_cluster(args.workers, home=Path(tmp) / "cluster") as backend:
            backend.submit(DigitsSpace, evaluator, arch=archs[0], seed=SEED_BASE).result(
                timeout=600
            )  # warm-up
            for pack in packs:
                try:
                    walls[pack], cpus[pack], finals[pack] = run_all(backend, archs, evaluator, pack)
                except Exception as error:  # a failed trial: the table shows it, the exit status too
                    failed = f"pack {pack}: {str(error).splitlines()[0]}"
                    console.print(f"  {failed}")
                    break
                console.print(f"  pack {pack}: {walls[pack]:.1f} s")
    table = Table(
        title=f"{args.candidates} trials, {args.epochs} epochs, {args.workers} workers, "
        f"load average after {os.getloadavg()[0]:.2f}"
    )
    headers = (
        "pack",
        "wall s",
        "trials/min",
        "speed-up vs pack 1",
        "max |diff|",
        "CPU/trial: client + dispatcher + agents + trials",
    )
    for header in headers:
        table.add_column(header)
    worst = 0.0
    for pack in packs:
        if pack not in walls:
            table.add_row(
                str(pack), "-", "-", "-", "failed" if failed.startswith(f"pack {pack}:") else "-", "-"
            )
            continue
        diff = max(abs(a - b) for a, b in zip(finals[pack], finals[1]))
        worst = max(worst, diff)
        rate = args.candidates / walls[pack] * 60
        table.add_row(
            str(pack),
            f"{walls[pack]:.1f}",
            f"{rate:.1f}",
            f"{walls[1] / walls[pack]:.2f}x",
            f"{diff:.2g}",
            cpus[pack].cell(),
        )
    Console(width=160).print(table)
    if args.markdown:
        print(to_markdown(table))
    if failed:
        console.print(f"[red]a trial failed[/red] ({failed})")
        return 1
    if worst > args.tolerance:
        console.print(f"[red]a packed trial's result differs from its pack-1 run by {worst:.3g}[/red]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
