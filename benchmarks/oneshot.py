"""One-shot strategies on the hub DARTS space (digits as 1x8x8 images) beside a hand-written loop.

Rows: retia's ``DARTS``, ``GumbelDARTS``, ``ENAS``, ``Proxyless`` and ``RandomOneShot``, each run
through ``OneShotEvaluator(Classification(...), strategy).evaluate(supernet_of(space))`` in
process, one epoch cut to ``--warmup + --batches`` training steps by the Trainer's
``limit_train_batches``; beside them a hand-written first-order DARTS loop (plain PyTorch, no
Lightning) on the same space, the same relaxation and the same batches: per step an Adam step of
the architecture weights on a validation batch, then an Adam step of the weights on a training
batch. ``--nni`` adds NNI 3.0's DARTS, run in a virtual environment the script makes itself
(cached under ``--nni-venv``) on NNI's own hub DARTS space with the same width and cells.

Each row runs in a fresh subprocess per repeat (so peak memories do not mix), the rows
interleaved, best of ``--repeats``. Time per step is from the start of the first timed step to
the end of the last one, divided by the steps (the loop's own cost between steps included; the
``--warmup`` steps before, the Trainer's setup and the epoch's validation are not). Peak memory
is the subprocess's maximum resident set, and its growth over the resident set just before the
run (after imports and data). Nothing is written inside the repository.

    .venv/bin/python benchmarks/oneshot.py [--batches 10] [--warmup 2] [--repeats 3] \
        [--strategies darts gumbel enas proxyless random] [--threads 1] [--nni] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import version
from itertools import cycle
from pathlib import Path
from typing import Any

from _tables import to_markdown
from rich.console import Console
from rich.table import Table

WIDTH, CELLS, BATCH = 8, 3, 64
STRATEGIES = ("darts", "gumbel", "enas", "proxyless", "random")
HAND = "hand-written"
NNI = "nni"
NNI_VERSION = "3.0"
TORCH_VERSION = "2.13.0"
RESULT = "RESULT"  # starts the line of a row's subprocess that holds its result, as JSON


# ---- in a row's subprocess ----


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class _Clock:
    """Start and end times of each training step."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.params = 0  # of the module whose steps are timed (a one-shot module: with its alphas)

    def wrap(self, step: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.starts and args and hasattr(args[0], "parameters"):
                self.params = sum(p.numel() for p in args[0].parameters())
            self.starts.append(time.perf_counter())
            out = step(*args, **kwargs)
            self.ends.append(time.perf_counter())
            return out

        return timed

    def per_step(self, warmup: int) -> float:
        steps = len(self.starts) - warmup
        if steps < 1:
            raise RuntimeError(f"only {len(self.starts)} training steps ran, {warmup} of them warm-up")
        return (self.ends[-1] - self.starts[warmup]) / steps


def _loaders() -> tuple[Any, Any]:
    import retia
    import retia.lightning as pl
    from retia.datasets import DigitsDataset

    train = pl.DataLoader(retia.trace(DigitsDataset)("train", flatten=False), batch_size=BATCH, shuffle=True)
    val = pl.DataLoader(retia.trace(DigitsDataset)("val", flatten=False), batch_size=BATCH, shuffle=True)
    return train, val


def _strategy(name: str) -> Any:
    """The strategy of row ``name``, with its defaults (seeded)."""
    from retia import oneshot

    kinds: dict[str, type[oneshot.OneShotStrategy]] = {
        "darts": oneshot.DARTS,
        "gumbel": oneshot.GumbelDARTS,
        "enas": oneshot.ENAS,
        "proxyless": oneshot.Proxyless,
        "random": oneshot.RandomOneShot,
    }
    return kinds[name](seed=0)


def _retia_row(name: str, steps: int, warmup: int) -> tuple[float, int]:
    import torch

    import retia.lightning as pl
    from retia.nn.hub import DARTS
    from retia.oneshot import OneShotEvaluator, supernet_of
    from retia.oneshot.module import OneShotModule

    clock = _Clock()
    OneShotModule.training_step = clock.wrap(OneShotModule.training_step)  # type: ignore[method-assign]
    torch.manual_seed(0)
    train, val = _loaders()
    evaluator = pl.Classification(
        train_dataloaders=train,
        val_dataloaders=val,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=1,
    )
    strategy = OneShotEvaluator(evaluator, _strategy(name))
    with tempfile.TemporaryDirectory(prefix="retia-oneshot-bench-") as tmp:
        result = strategy.evaluate(
            supernet_of(DARTS(WIDTH, CELLS, in_channels=1)), output_dir=Path(tmp) / "run"
        )
    if result.final is None:
        raise RuntimeError(f"{name} reported no final result")
    return clock.per_step(warmup), clock.params


def _hand_row(steps: int, warmup: int) -> tuple[float, int]:
    """First-order DARTS by hand: the relaxation retia's DARTS uses, alphas as it makes them."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from retia.nn.hub import DARTS
    from retia.oneshot.supernet import relax

    torch.manual_seed(0)
    train, val = _loaders()
    supernet = DARTS(WIDTH, CELLS, in_channels=1)
    relaxation = relax(supernet, "DARTS", cell_edges=True)  # as retia.oneshot.DARTS relaxes it
    labels = list(relaxation.sizes)
    generator = torch.Generator().manual_seed(0)
    alphas = [
        nn.Parameter(1e-3 * torch.randn(relaxation.sizes[label], generator=generator)) for label in labels
    ]
    arch_optimizer = torch.optim.Adam(alphas, lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3)
    optimizer = torch.optim.Adam(supernet.parameters(), lr=1e-3)
    clock = _Clock()

    def step(train_batch: Any, val_batch: Any) -> None:
        arch_optimizer.zero_grad()
        relaxation.mix({label: F.softmax(a, dim=-1) for label, a in zip(labels, alphas)})
        x, y = val_batch
        F.cross_entropy(supernet(x), y).backward()
        arch_optimizer.step()
        relaxation.mix({label: F.softmax(a.detach(), dim=-1) for label, a in zip(labels, alphas)})
        optimizer.zero_grad()
        x, y = train_batch
        F.cross_entropy(supernet(x), y).backward()
        optimizer.step()

    timed = clock.wrap(step)
    supernet.train()
    done = 0
    while done < steps:
        for train_batch, val_batch in zip(train, cycle(val)):
            timed(train_batch, val_batch)
            done += 1
            if done == steps:
                break
    return clock.per_step(warmup), sum(p.numel() for p in [*supernet.parameters(), *alphas])


def row_main(row: str, steps: int, warmup: int, threads: int) -> None:
    """Run one row and print its result as the last line: JSON."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")
    import torch

    if threads:
        torch.set_num_threads(threads)
    _loaders()  # the data read once before the baseline, as every row does
    before = _rss_mib()
    per_step, params = _hand_row(steps, warmup) if row == HAND else _retia_row(row, steps, warmup)
    print(
        RESULT,
        json.dumps(
            {"per_step": per_step, "peak": _peak_mib(), "growth": _peak_mib() - before, "params": params}
        ),
    )


# ---- NNI 3.0, in its own virtual environment ----

_NNI_ROW = textwrap.dedent(
    '''
    """NNI 3.0's DARTS one-shot on its hub DARTS space, digits as 3x8x8 images (NNI's stem takes 3)."""
    import json, logging, os, resource, sys, time, warnings
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    import torch
    steps, warmup, threads, width, cells, batch = (int(a) for a in sys.argv[1:7])
    if threads:
        torch.set_num_threads(threads)
    import nni
    from sklearn.datasets import load_digits
    import numpy as np
    from nni.nas.evaluator.pytorch import Classification, DataLoader
    from nni.nas.hub.pytorch import DARTS
    from nni.nas.strategy import DARTS as DartsStrategy
    from nni.nas.experiment import NasExperiment
    from nni.nas.oneshot.pytorch.differentiable import DartsLightningModule

    data = load_digits()
    order = np.random.default_rng(0).permutation(len(data.target))
    n_val = int(round(len(order) * 0.2))

    def split(idx):
        x = torch.tensor(data.data[idx] / 16.0, dtype=torch.float32).view(-1, 1, 8, 8).expand(-1, 3, 8, 8)
        return torch.utils.data.TensorDataset(x.contiguous(), torch.tensor(data.target[idx]))

    train = DataLoader(split(order[n_val:]), batch_size=batch, shuffle=True)
    val = DataLoader(split(order[:n_val]), batch_size=batch, shuffle=True)
    starts, ends, params = [], [], [0]
    original = DartsLightningModule.training_step

    def timed(self, *args, **kwargs):
        if not starts:
            params[0] = sum(p.numel() for p in self.parameters())
        starts.append(time.perf_counter())
        out = original(self, *args, **kwargs)
        ends.append(time.perf_counter())
        return out

    DartsLightningModule.training_step = timed
    with open("/proc/self/statm") as f:
        before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    torch.manual_seed(0)
    space = DARTS(width=width, num_cells=cells, dataset="cifar")
    evaluator = Classification(
        train_dataloaders=train, val_dataloaders=val, max_epochs=1, num_classes=10,
        limit_train_batches=steps, limit_val_batches=1, enable_progress_bar=False,
        enable_model_summary=False, logger=False, enable_checkpointing=False,
    )
    experiment = NasExperiment(space, evaluator, DartsStrategy())
    experiment.config.experiment_working_directory = os.path.join(os.getcwd(), "nni-experiments")
    experiment.run()
    if len(starts) <= warmup:
        raise RuntimeError(f"only {len(starts)} NNI training steps ran")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_step = (ends[-1] - starts[warmup]) / (len(starts) - warmup)
    result = {"per_step": per_step, "peak": peak, "growth": peak - before, "params": params[0]}
    print("RESULT", json.dumps(result))
    '''
)


def nni_python(venv: Path, log: Callable[[str], None]) -> Path:
    """The venv's python with torch and NNI installed (made once, then reused)."""
    python = venv / "bin" / "python"
    stamp = venv / f".nni-{NNI_VERSION}-ready"
    if stamp.exists():
        return python
    log(f"making {venv}: torch {TORCH_VERSION}, nni {NNI_VERSION}, this Lightning (once; cached after)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, text=True)
    # torch first (a local wheel), so NNI's requirements do not pull another; then the Lightning
    # this project runs, which NNI needs and does not pin
    lightning = [f"{name}=={version(name)}" for name in ("pytorch-lightning", "torchmetrics")]
    for specs in ([f"torch=={TORCH_VERSION}"], [f"nni=={NNI_VERSION}"], lightning):
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *specs], check=True, capture_output=True, text=True
        )
    stamp.touch()
    return python


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


# ---- the table ----


def run_row(row: str, args: argparse.Namespace, nni: Path | None, tmp: Path) -> dict[str, float]:
    steps = args.warmup + args.batches
    if row == NNI:
        assert nni is not None
        script = tmp / "nni_row.py"
        script.write_text(_NNI_ROW)
        command = [
            str(nni),
            str(script),
            str(steps),
            str(args.warmup),
            str(args.threads),
            str(WIDTH),
            str(CELLS),
        ]
        command.append(str(BATCH))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["NNI_CONFIG_DIR"] = str(tmp / "nni-config")
        env["HOME"] = str(tmp / "nni-home")  # NNI keeps its list of experiments in ~/nni-experiments
    else:
        command = [sys.executable, __file__, "--row", row, "--batches", str(args.batches)]
        command += ["--warmup", str(args.warmup), "--threads", str(args.threads)]
        env = dict(os.environ)
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp, env=env, timeout=args.timeout)
    if done.returncode:
        raise RuntimeError(_last_line(done.stderr or done.stdout))
    found = [line for line in done.stdout.splitlines() if line.startswith(RESULT + " ")]
    if not found:
        raise RuntimeError(f"no result: {_last_line(done.stderr or done.stdout)}")
    result: dict[str, float] = json.loads(found[-1][len(RESULT) :])
    return result


def rows(args: argparse.Namespace) -> Iterator[str]:
    yield HAND
    yield from args.strategies
    if args.nni:
        yield NNI


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10, help="timed training steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps before them")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("--nni", action="store_true", help=f"add NNI {NNI_VERSION}'s DARTS (its own venv)")
    parser.add_argument(
        "--nni-venv",
        type=Path,
        default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        / "retia-benchmarks"
        / "nni3.0-venv",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds for one row's subprocess")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        row_main(args.row, args.warmup + args.batches, args.warmup, args.threads)
        return
    console = Console(stderr=True)
    failed: dict[str, str] = {}
    nni: Path | None = None
    if args.nni:
        try:
            nni = nni_python(args.nni_venv, console.print)
        except subprocess.CalledProcessError as error:
            failed[NNI] = f"does not install: {_last_line(error.stderr or error.stdout or str(error))}"
    console.print(
        f"hub DARTS(width={WIDTH}, num_cells={CELLS}, in_channels=1) supernet on digits 1x8x8, "
        f"batch {BATCH}, "
        f"{args.warmup} warm-up + {args.batches} timed steps, best of {args.repeats}, "
        f"torch threads {args.threads or 'default'}, load average {os.getloadavg()[0]:.2f}"
    )
    best: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="retia-oneshot-bench-") as tmp:
        for repeat in range(args.repeats):
            for row in rows(args):
                if row in failed:
                    continue
                try:
                    result = run_row(row, args, nni, Path(tmp))
                except (RuntimeError, subprocess.TimeoutExpired) as error:
                    failed[row] = f"does not run: {error}"
                    continue
                console.print(f"  repeat {repeat + 1} {row}: {result['per_step'] * 1000:.0f} ms/step")
                if row not in best or result["per_step"] < best[row]["per_step"]:
                    best[row] = result
    hand = best.get(HAND, {}).get("per_step")
    table = Table(title=f"one-shot training step, load average after {os.getloadavg()[0]:.2f}")
    for header in ("row", "s/step", "x hand-written", "peak RSS MiB", "growth MiB", "params", "note"):
        table.add_column(header)
    names = {HAND: "hand-written first-order DARTS", NNI: f"NNI {NNI_VERSION} DARTS"}
    for row in rows(args):
        name = names[row] if row in names else f"retia {type(_strategy(row)).__name__}"
        if row in failed:
            table.add_row(name, "-", "-", "-", "-", "-", failed[row])
            continue
        r = best[row]
        ratio = f"{r['per_step'] / hand:.2f}x" if hand else "-"
        cells = (
            f"{r['per_step']:.3f}",
            ratio,
            f"{r['peak']:.0f}",
            f"{r['growth']:.0f}",
            f"{r['params']:,.0f}",
        )
        table.add_row(name, *cells, "")
    Console(width=160).print(table)
    if args.markdown:
        print(to_markdown(table))


if __name__ == "__main__":
    main()
