"""What the dispatcher path costs per trial and per report, beside what the alternatives cost.

Three measurements on a real ``local_cluster`` (dispatcher + N worker processes over ZeroMQ,
each trial forked from a fork server that preloaded torch and Lightning):

(a) per-trial overhead: no-op trials (``fit`` only calls ``report_final_result(0.0)``) from
    submission to the final state arriving at the client; p50/p99 and throughput with all
    trials submitted at once (``backend.submit_many``: the evaluator is serialized once, as
    the pool's function is pickled once), and p50/p99 one at a time (``backend.submit``).
    The floor beside it is a ``ProcessPoolExecutor`` running the same cloudpickled function
    in reused processes. The all-at-once phase runs ``--rounds`` times per column, each time
    right after the same phase on the pool, and each round's ratio of the two is reported:
    a shared VM's speed drifts by 2-3x over minutes, so only paired rounds compare like with
    like (the table shows the median round and the spread).
(b) trial start latency: submit (wall clock) to the first line of a ``fit`` that imports
    torch and pytorch_lightning (free in a preloaded child). Beside it, what NNI and Syne
    Tune do per trial: a fresh ``python -c`` that imports both, then prints the time.
    While the at-once trials run, the CPU every process spends (``/proc``: client, dispatcher,
    worker agents, trial processes with the fork server) is divided by the trial count.
(c) report latency (``report_intermediate_result`` in the trial to the client's callback,
    wall clock across processes) and sustained report throughput (several trials reporting
    as fast as they can, counted at the client from first to last report).

Numbers only, never assertions: the machine this runs on is usually shared and noisy.
Targets are printed beside the measured values. Every ``--worker-args`` given adds a retia
column (for instance ``--worker-args= --worker-args=--reuse-process``).

    .venv/bin/python benchmarks/dispatch.py [--trials 2000] [--rounds 3] [--reports 2000] \
        [--workers 2] [--curve] [--quick]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import multiprocessing
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
from _cpu import CpuMeter, CpuSplit, proc_stat
from _tables import to_markdown
from rich.console import Console
from rich.table import Table

import retia
from retia.client.backend import Backend, Trial
from retia.client.cluster import local_cluster
from retia.protocol import Event, TrialState
from retia.reporting import CollectingReporter, use_reporter

# ---- the fit functions (defined in __main__, so they travel cloudpickled, as a user's would) ----


def noop_fit(model_cls: Any) -> None:
    retia.report_final_result(0.0)


def torch_start_fit(model_cls: Any) -> None:
    import pytorch_lightning  # noqa: F401 - preloaded in the fork server: costs a dict lookup
    import torch  # noqa: F401

    retia.report_final_result({"default": 0.0, "t_start": time.time()})


def reporting_fit(model_cls: Any, n: int, pause_every: int = 0, pause: float = 0.0) -> None:
    """``n`` intermediate reports stamped with the wall clock; a short sleep every ``pause_every``."""
    for i in range(n):
        retia.report_intermediate_result({"default": float(i), "t": time.time()})
        if pause_every and i % pause_every == pause_every - 1:
            time.sleep(pause)
    retia.report_final_result(float(n))


SUBPROCESS_CODE = "import torch, pytorch_lightning, time; print(time.time())"

# ---- statistics ----


@dataclass
class Stats:
    """Latencies in seconds, and an optional rate."""

    samples: list[float] = field(default_factory=list)
    rate: float | None = None
    lost: int = 0  # events that never arrived (reports) or trials that did not succeed
    note: str = ""

    def pct(self, q: float) -> float:
        if not self.samples:
            return float("nan")
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]

    @property
    def p50(self) -> float:
        return self.pct(50)

    @property
    def p99(self) -> float:
        return self.pct(99)


# ---- routing client events to per-trial handlers ----


class EventHub:
    """One ``Backend`` listener; handlers are registered under a trial id *before* submitting.

    (``Trial.add_done_callback`` registered after ``submit`` can miss a trial that finishes
    in between; the listener sees every event.)
    """

    def __init__(self) -> None:
        self._done: dict[str, Callable[[Trial], None]] = {}
        self._report: dict[str, Callable[[Any], None]] = {}

    def __call__(self, trial: Trial, event: Event) -> None:
        if event.state is not None and event.state.state.finished:
            on_done = self._done.pop(trial.id, None)
            self._report.pop(trial.id, None)
            if on_done is not None:
                on_done(trial)
        elif event.report is not None and not event.report.final:
            on_report = self._report.get(trial.id)
            if on_report is not None:
                on_report(event.report.metric)

    def submit(
        self,
        backend: Backend,
        evaluator: retia.FunctionalEvaluator,
        on_done: Callable[[Trial], None],
        on_report: Callable[[Any], None] | None = None,
    ) -> Trial:
        trial_id = uuid.uuid4().hex
        self._done[trial_id] = on_done
        if on_report is not None:
            self._report[trial_id] = on_report
        return backend.submit(object, evaluator, trial_id=trial_id)  # the fits never build the model

    def submit_many(
        self, backend: Backend, evaluator: retia.FunctionalEvaluator, n: int, on_done: Callable[[Trial], None]
    ) -> list[Trial]:
        """``n`` trials in one call: the evaluator is serialized once, as the pool pickles its function."""
        trial_ids = [uuid.uuid4().hex for _ in range(n)]
        for trial_id in trial_ids:
            self._done[trial_id] = on_done
        return backend.submit_many([object] * n, evaluator, trial_ids=trial_ids)


class Countdown:
    """Waits for ``n`` completions; remembers when each happened and which failed."""

    def __init__(self, n: int) -> None:
        self.remaining = n
        self.ends: dict[str, float] = {}
        self.failed: list[str] = []
        self._cond = threading.Condition()

    def done(self, key: str, ok: bool = True) -> None:
        with self._cond:
            self.ends[key] = time.perf_counter()
            if not ok:
                self.failed.append(key)
            self.remaining -= 1
            self._cond.notify_all()

    def wait(self, timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.remaining <= 0, timeout):
                raise TimeoutError(f"{self.remaining} trial(s) still running after {timeout:.0f}s")


def _trial_done(countdown: Countdown) -> Callable[[Trial], None]:
    return lambda trial: countdown.done(trial.id, trial.state is TrialState.SUCCEEDED)


# ---- (a) per-trial overhead on retia ----


def retia_bulk(backend: Backend, hub: EventHub, evaluator: retia.FunctionalEvaluator, n: int) -> Stats:
    """Submit ``n`` no-op trials at once (``Backend.submit_many``); latency per trial, trials per second."""
    countdown = Countdown(n)
    first = time.perf_counter()
    trials = hub.submit_many(backend, evaluator, n, _trial_done(countdown))
    countdown.wait(60 + 2.0 * n)
    latencies = [countdown.ends[t.id] - first for t in trials]
    return Stats(latencies, rate=n / (max(countdown.ends.values()) - first), lost=len(countdown.failed))


def retia_sequential(backend: Backend, hub: EventHub, evaluator: retia.FunctionalEvaluator, n: int) -> Stats:
    """One no-op trial at a time: submit, wait for its result, next."""
    stats = Stats()
    for _ in range(n):
        countdown = Countdown(1)
        start = time.perf_counter()
        hub.submit(backend, evaluator, _trial_done(countdown))
        countdown.wait(60)
        stats.samples.append(next(iter(countdown.ends.values())) - start)
        stats.lost += len(countdown.failed)
    return stats


# ---- (a) the floor: a process pool running the same function ----


def _call_pickled(blob: bytes) -> Any:
    fit = cloudpickle.loads(blob)
    collector = CollectingReporter()
    with use_reporter(collector):
        fit(object)
    return collector.final_value


def _count_done(countdown: Countdown, key: str, future: concurrent.futures.Future[Any]) -> None:
    countdown.done(key, future.exception() is None)


def pool_bulk(pool: concurrent.futures.Executor, blob: bytes, n: int) -> Stats:
    countdown = Countdown(n)
    starts: dict[str, float] = {}
    first = time.perf_counter()
    for i in range(n):
        key = str(i)
        starts[key] = time.perf_counter()
        future = pool.submit(_call_pickled, blob)
        future.add_done_callback(functools.partial(_count_done, countdown, key))
    countdown.wait(60 + n)
    latencies = [countdown.ends[k] - starts[k] for k in starts]
    return Stats(latencies, rate=n / (max(countdown.ends.values()) - first), lost=len(countdown.failed))


def pool_sequential(pool: concurrent.futures.Executor, blob: bytes, n: int) -> Stats:
    stats = Stats()
    for _ in range(n):
        start = time.perf_counter()
        pool.submit(_call_pickled, blob).result(timeout=60)
        stats.samples.append(time.perf_counter() - start)
    return stats


class Pool:
    """The floor: a ProcessPoolExecutor, forked before any cluster thread exists, kept for the whole run
    so that its bulk phase can run right before each retia bulk phase (paired rounds)."""

    def __init__(self, workers: int) -> None:
        self.blob = cloudpickle.dumps(noop_fit)
        context = multiprocessing.get_context("fork")
        self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context)
        for f in [
            self.pool.submit(_call_pickled, self.blob) for _ in range(4 * workers)
        ]:  # start the processes
            f.result()
        self.pids = list(self.pool._processes)
        self.rounds: list[Stats] = []
        self.cpu = [0.0, 0.0]  # seconds: this process, the pool's processes

    def _cpu(self) -> tuple[float, float]:
        times = os.times()
        return times.user + times.system, sum(proc_stat(pid)[1] for pid in self.pids)

    def bulk(self, trials: int) -> Stats:
        before = self._cpu()
        stats = pool_bulk(self.pool, self.blob, trials)
        after = self._cpu()
        self.cpu = [c + a - b for c, a, b in zip(self.cpu, after, before)]
        self.rounds.append(stats)
        return stats

    def summary(self) -> Stats:
        """The median round, with the CPU per trial over all rounds."""
        median = sorted(self.rounds, key=lambda r: r.rate or 0.0)[len(self.rounds) // 2]
        parent, children = (c * 1000 / (len(self.rounds) * len(median.samples)) for c in self.cpu)
        median.note = f"{parent + children:.1f} ms = {parent:.1f} (parent) + {children:.1f} (pool processes)"
        return median

    def sequential(self, n: int) -> Stats:
        return pool_sequential(self.pool, self.blob, n)

    def close(self) -> None:
        self.pool.shutdown()


# ---- (b) start latency ----


def retia_start_latency(backend: Backend, hub: EventHub, n: int) -> Stats:
    """Sequential trials whose fit imports torch + Lightning and stamps the wall clock."""
    evaluator = retia.FunctionalEvaluator(torch_start_fit)
    stats = Stats()
    for _ in range(n):
        countdown = Countdown(1)
        submitted = time.time()
        trial = hub.submit(backend, evaluator, _trial_done(countdown))
        countdown.wait(120)
        if trial.state is TrialState.SUCCEEDED and isinstance(trial.final, dict):
            stats.samples.append(trial.final["t_start"] - submitted)
        else:
            stats.lost += 1
    return stats


def subprocess_start_latency(n: int) -> Stats:
    """What a per-trial ``python -c`` pays before its first line of user code."""
    stats = Stats()
    for _ in range(n):
        started = time.time()
        out = subprocess.run(
            [sys.executable, "-c", SUBPROCESS_CODE], capture_output=True, text=True, check=True
        )
        stats.samples.append(float(out.stdout.strip().splitlines()[-1]) - started)
    return stats


# ---- (c) reports ----


def report_latency(backend: Backend, hub: EventHub, n: int, pause_every: int, pause: float) -> Stats:
    """One trial, ``n`` reports with a sleep every ``pause_every``: report call to client callback.

    The sleeps keep the offered rate below what the path sustains, so this is latency, not queueing.
    """
    evaluator = retia.FunctionalEvaluator(reporting_fit, n=n, pause_every=pause_every, pause=pause)
    stats = Stats()
    countdown = Countdown(1)
    hub.submit(
        backend,
        evaluator,
        _trial_done(countdown),
        on_report=lambda value: stats.samples.append(time.time() - value["t"]),
    )
    countdown.wait(120 + n / 100)
    stats.lost = n - len(stats.samples)
    return stats


def report_throughput(backend: Backend, hub: EventHub, trials: int, n: int) -> Stats:
    """``trials`` trials each reporting ``n`` times flat out; reports/s seen by the client."""
    evaluator = retia.FunctionalEvaluator(reporting_fit, n=n)
    arrivals: list[float] = []
    countdown = Countdown(trials)
    for _ in range(trials):
        hub.submit(
            backend,
            evaluator,
            _trial_done(countdown),
            on_report=lambda _v: arrivals.append(time.perf_counter()),
        )
    countdown.wait(120 + trials * n / 200)
    span = arrivals[-1] - arrivals[0] if len(arrivals) > 1 else float("nan")
    return Stats(
        rate=len(arrivals) / span, lost=trials * n - len(arrivals), note=f"{len(arrivals)} in {span:.2f}s"
    )


# ---- one cluster configuration ----


@dataclass
class ClusterResults:
    label: str
    bulk: Stats  # the median round
    ratios: list[float]  # each round's throughput over the pool's in the same round, ascending
    sequential: Stats
    start: Stats
    report: Stats
    throughput: Stats
    startup_s: float
    cpu: CpuSplit


def wait_for_workers(backend: Backend, workers: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(backend.status().workers) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not join within {timeout:.0f}s")
        time.sleep(0.2)


def warm_up(backend: Backend, hub: EventHub, workers: int) -> None:
    """A few trials of each kind, so first-trial effects (imports, pages) are not measured."""
    countdown = Countdown(3 * workers)
    for fit in (noop_fit, noop_fit, torch_start_fit):
        evaluator = retia.FunctionalEvaluator(fit)
        for _ in range(workers):
            hub.submit(backend, evaluator, _trial_done(countdown))
    countdown.wait(180)


def measure_cluster(
    args: argparse.Namespace, worker_args: Sequence[str], pool: Pool, log: Callable[[str], None]
) -> ClusterResults:
    label = (
        "retia"
        + (f" [{' '.join(worker_args)}]" if worker_args else "")
        + (" (CurveZMQ)" if args.curve else "")
    )
    started = time.perf_counter()
    with local_cluster(workers=args.workers, worker_args=worker_args, curve=args.curve) as backend:
        hub = EventHub()
        backend.add_listener(hub)
        wait_for_workers(backend, args.workers)
        startup = time.perf_counter() - started
        log(f"{label}: {args.workers} workers ready in {startup:.1f}s; warming up")
        warm_up(backend, hub, args.workers)
        noop = retia.FunctionalEvaluator(noop_fit)
        meter = CpuMeter(backend)
        rounds, ratios, cpu = [], [], CpuSplit()
        for i in range(args.rounds):  # the pool right before retia, each round: both see the same machine
            log(f"{label}: round {i + 1}/{args.rounds}: {args.trials} no-op trials at once, pool then retia")
            floor = pool.bulk(args.trials)
            before = meter.snapshot()
            rounds.append(retia_bulk(backend, hub, noop, args.trials))
            cpu = cpu + CpuMeter.per_trial(before, meter.snapshot(), args.trials * args.rounds)
            ratios.append((rounds[-1].rate or 0.0) / (floor.rate or float("inf")))
        bulk = sorted(rounds, key=lambda r: r.rate or 0.0)[len(rounds) // 2]
        bulk.lost = sum(r.lost for r in rounds)
        log(f"{label}: {args.sequential} no-op trials one at a time")
        sequential = retia_sequential(backend, hub, noop, args.sequential)
        log(f"{label}: {args.start_trials} torch-importing trials one at a time")
        start = retia_start_latency(backend, hub, args.start_trials)
        log(f"{label}: one trial with {args.reports} reports")
        report = report_latency(
            backend, hub, args.reports, args.report_pause_every, args.report_pause_ms / 1000
        )
        log(f"{label}: {args.throughput_trials} trials x {args.throughput_reports} reports flat out")
        throughput = report_throughput(backend, hub, args.throughput_trials, args.throughput_reports)
    return ClusterResults(label, bulk, sorted(ratios), sequential, start, report, throughput, startup, cpu)


# ---- the table ----


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def rate(stats: Stats, unit: str) -> str:
    return f"{stats.rate:,.0f} {unit}/s" if stats.rate is not None else "-"


def per_trial(stats: Stats, workers: int) -> float:
    """Seconds of one worker's time each trial costs, from the all-at-once throughput."""
    return workers / stats.rate if stats.rate else float("nan")


def ratio_cell(result: ClusterResults) -> str:
    ratios = result.ratios
    text = f"{ratios[len(ratios) // 2]:.0%} ({ratios[0]:.0%}-{ratios[-1]:.0%})"
    if "--reuse-process" in result.label:
        text += " " + verdict(ratios[len(ratios) // 2], 0.25, False)
    return text


def verdict(value: float, target: float, below: bool) -> str:
    met = value < target if below else value > target
    return "[green]met[/green]" if met else "[red]missed[/red]"


def with_losses(text: str, stats: Stats, what: str) -> str:
    return text + (f" [red]({stats.lost} {what})[/red]" if stats.lost else "")


def build_table(
    results: list[ClusterResults], pool: tuple[Stats, Stats], spawn: Stats, args: argparse.Namespace
) -> Table:
    pool_bulk_, pool_seq = pool
    table = Table(title=f"Dispatch benchmark ({args.workers} workers)", show_lines=False)
    table.add_column("Measurement")
    for r in results:
        table.add_column(r.label, justify="right")
    table.add_column("Baseline", justify="right")
    table.add_column("Target")

    def row(name: str, cells: list[str], baseline: str, target: str) -> None:
        table.add_row(name, *cells, baseline, target)

    table.add_row(
        f"[bold](a) per-trial overhead, no-op trials[/bold] (baseline: ProcessPoolExecutor({args.workers}))"
    )
    row(
        f"  all {args.trials} at once: latency p50 (includes queueing)",
        [with_losses(ms(r.bulk.p50), r.bulk, "failed") for r in results],
        ms(pool_bulk_.p50),
        "",
    )
    row(
        f"  all {args.trials} at once: latency p99", [ms(r.bulk.p99) for r in results], ms(pool_bulk_.p99), ""
    )
    row(
        f"  all {args.trials} at once: throughput (median round)",
        [rate(r.bulk, "trials") for r in results],
        rate(pool_bulk_, "trials"),
        "",
    )
    row(
        f"  throughput / the pool's in the same round: median (min-max of {args.rounds})",
        [ratio_cell(r) for r in results],
        "100%",
        ">= 25% with --reuse-process",
    )
    row(
        f"  all at once: per-trial cost ({args.workers} workers / throughput)",
        [
            ms(per_trial(r.bulk, args.workers)) + " " + verdict(per_trial(r.bulk, args.workers), 0.030, True)
            for r in results
        ],
        ms(per_trial(pool_bulk_, args.workers)),
        "< 30 ms (Ray Tune ~140 ms, NNI ~17 s)",
    )
    row(
        "  all at once: CPU per trial = client + dispatcher + agents + trial processes",
        [r.cpu.cell() for r in results],
        f"{pool_bulk_.note}",
        "",
    )
    row(
        f"  one at a time ({args.sequential}): latency p50",
        [ms(r.sequential.p50) + " " + verdict(r.sequential.p50, 0.030, True) for r in results],
        ms(pool_seq.p50),
        "< 30 ms",
    )
    row(
        f"  one at a time ({args.sequential}): latency p99",
        [ms(r.sequential.p99) for r in results],
        ms(pool_seq.p99),
        "",
    )
    table.add_section()
    table.add_row(
        "[bold](b) trial start latency, fit imports torch + Lightning[/bold] "
        "(baseline: fresh `python -c` per trial)"
    )
    row(
        f"  submit -> first line of fit: p50 (retia n={args.start_trials}, baseline n={len(spawn.samples)})",
        [
            with_losses(ms(r.start.p50), r.start, "failed") + " " + verdict(r.start.p50, 0.050, True)
            for r in results
        ],
        ms(spawn.p50),
        "< 50 ms",
    )
    row("  submit -> first line of fit: p99", [ms(r.start.p99) for r in results], ms(spawn.p99), "")
    table.add_section()
    table.add_row("[bold](c) reports[/bold] (baseline: Ray Tune's published ceiling)")
    row(
        f"  report -> client callback, {args.reports} reports "
        f"({args.report_pause_ms:g} ms sleep every {args.report_pause_every}): p50",
        [with_losses(ms(r.report.p50), r.report, "lost") for r in results],
        "",
        "",
    )
    row(
        "  report -> client callback: p99",
        [ms(r.report.p99) + " " + verdict(r.report.p99, 0.005, True) for r in results],
        "",
        "< 5 ms",
    )
    row(
        f"  sustained, {args.throughput_trials} trials x {args.throughput_reports} reports",
        [
            with_losses(rate(r.throughput, "reports"), r.throughput, "lost")
            + " "
            + verdict(r.throughput.rate or 0.0, 20_000, False)
            for r in results
        ],
        "~500 results/s",
        "> 20,000 reports/s",
    )
    table.add_section()
    row("cluster start (workers ready)", [f"{r.startup_s:.1f} s" for r in results], "", "")
    return table


# ---- entry point ----


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=2000, help="no-op trials submitted at once (default %(default)s)"
    )
    parser.add_argument(
        "--sequential", type=int, default=100, help="no-op trials one at a time (default %(default)s)"
    )
    parser.add_argument(
        "--start-trials", type=int, default=50, help="torch-importing trials (default %(default)s)"
    )
    parser.add_argument(
        "--subprocess-runs", type=int, default=5, help="fresh `python -c` baseline runs (default %(default)s)"
    )
    parser.add_argument(
        "--reports", type=int, default=2000, help="reports in the latency trial (default %(default)s)"
    )
    parser.add_argument(
        "--report-pause-every", type=int, default=5, help="sleep after every N reports (default %(default)s)"
    )
    parser.add_argument(
        "--report-pause-ms", type=float, default=5.0, help="that sleep, in ms (default %(default)s)"
    )
    parser.add_argument(
        "--throughput-trials", type=int, default=3, help="trials reporting flat out (default %(default)s)"
    )
    parser.add_argument(
        "--throughput-reports", type=int, default=20_000, help="reports per such trial (default %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="local workers (default %(default)s)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="bulk phases per column, each right after one of the pool (default %(default)s)",
    )
    parser.add_argument(
        "--worker-args",
        action="append",
        help="extra `retia worker` arguments, one retia column per use; write --worker-args=--reuse-process "
        '(with "=" when the value starts with a dash); --worker-args= is the default column',
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="encrypt the cluster's traffic with CurveZMQ (local_cluster(curve=True))",
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts, for a smoke test (under a minute)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.trials, args.sequential, args.start_trials, args.subprocess_runs, args.rounds = 20, 10, 5, 1, 1
        args.reports, args.throughput_trials, args.throughput_reports = 200, 2, 2000
    args.worker_args = [shlex.split(a) for a in (args.worker_args or [""])]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 150))

    def log(text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')} {text}[/dim]")

    log(
        f"{platform.node()} python {platform.python_version()}, "
        f"{multiprocessing.cpu_count()} cores; floor first"
    )
    pool = Pool(args.workers)
    try:
        pool_sequential_ = pool.sequential(args.sequential)
        log(f"{args.subprocess_runs} fresh `python -c` runs importing torch + Lightning")
        spawn = subprocess_start_latency(args.subprocess_runs)
        results = [measure_cluster(args, worker_args, pool, log) for worker_args in args.worker_args]
    finally:
        pool.close()
    table = build_table(results, (pool.summary(), pool_sequential_), spawn, args)
    console.print(table)
    console.print(f"{datetime.datetime.now().isoformat(timespec='seconds')}  {' '.join(sys.argv)}")
    if args.markdown:
        print(to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
