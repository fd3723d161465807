"""What the blob cache saves: N trials sharing one large tensor argument, with and without it.

A ``FunctionalEvaluator(fit, data=<tensor>)`` whose ``fit`` sums the whole tensor (so every
page of it is read: a memory map that is never touched would look free) and reports the sum.

- **retia (blobs)**: a default ``local_cluster(workers=N)``. The client hashes the tensor,
  uploads it to the dispatcher once, each worker fetches it once, verifies it, caches it,
  and every trial memory-maps the cached file. Bytes moved = the client's upload (the blob,
  once) + ``status().bytes_sent`` growth (everything the dispatcher sent to workers and clients).
- **plain cloudpickle (baseline)**: what shipping the argument with every trial costs: a
  ``ProcessPoolExecutor(N)`` (fork) runs ``cloudpickle.loads(payload)`` where
  ``payload = cloudpickle.dumps((fit, data))`` is made per trial, as a task queue that pickles
  each task's arguments does. ``workers + 1`` tasks are in flight (the executor's own queue
  depth), so pickling the next payload overlaps the running ones. Bytes moved = N x payload.
  retia itself cannot be the baseline: ``Backend.submit`` always collects blobs (no
  ``DumpOptions`` can be passed), and an inline 200 MB payload would be refused anyway
  (messages are capped at 8 MiB).

Both sides run one torch thread per trial (retia's default with 2 workers on 2 cores).
Printed: total time (first submit to last result), per-trial p50 (median gap between two
completions on one worker, the first counted from the start: what a trial costs a worker,
queueing excluded), bytes moved, and the ratios; then the blob path's parts (client hashing,
upload, first vs second trial start on each worker, time to read the tensor inside fit).
Numbers only, never assertions: the machine this runs on is usually shared and noisy.

    .venv/bin/python benchmarks/blobs.py [--size-mb 200] [--trials 20] [--workers 2] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import functools
import multiprocessing
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import torch
from _tables import to_markdown
from rich.console import Console
from rich.table import Table

import retia
from retia.blobs import Blob, digest_of
from retia.client.backend import Backend, Trial
from retia.client.cluster import local_cluster
from retia.protocol import Event, TrialState
from retia.reporting import CollectingReporter, use_reporter
from retia.serializer import dump

MiB = 1 << 20

# ---- the fit functions (defined in __main__, so they travel cloudpickled, as a user's would) ----


def fit(model_cls: Any, data: torch.Tensor) -> None:
    """Stamp the wall clock at the first line, read every element once, report the sum."""
    started = time.time()
    t0 = time.perf_counter()
    total = float(data.sum())
    touch = time.perf_counter() - t0
    retia.report_final_result(
        {"default": total, "t_start": started, "touch_s": touch, "pid": float(os.getpid())}
    )


def noop_fit(model_cls: Any) -> None:
    retia.report_final_result(0.0)


# ---- what one trial left behind ----


@dataclass
class TrialTimes:
    worker: str
    done: float  # perf_counter at the client when the result arrived
    t_start: float = float("nan")  # wall clock at fit's first line
    touch_s: float = float("nan")  # seconds fit took to read the whole tensor
    running_at: float = float("nan")  # wall clock at the client when RUNNING arrived (retia only)
    ok: bool = True
    value: float = float("nan")  # the sum fit reported


@dataclass
class ModeResult:
    label: str
    total_s: float
    bytes_moved: int
    trials: list[TrialTimes]
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return sum(not t.ok for t in self.trials)

    def per_trial_p50(self, started: float) -> float:
        """Median gap between consecutive completions on one worker (the first from ``started``)."""
        gaps: list[float] = []
        for runs in by_worker(self.trials).values():
            previous = started
            for t in sorted(runs, key=lambda t: t.done):
                gaps.append(t.done - previous)
                previous = t.done
        return statistics.median(gaps) if gaps else float("nan")


def by_worker(trials: list[TrialTimes]) -> dict[str, list[TrialTimes]]:
    groups: dict[str, list[TrialTimes]] = {}
    for t in trials:
        groups.setdefault(t.worker, []).append(t)
    return groups


def from_final(worker: str, done: float, final: Any, ok: bool) -> TrialTimes:
    times = TrialTimes(worker, done, ok=ok and isinstance(final, dict))
    if isinstance(final, dict):
        times.t_start, times.touch_s, times.value = final["t_start"], final["touch_s"], final["default"]
    return times


# ---- baseline: per-trial cloudpickle payloads to a process pool ----


def _init_pool_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_payload(payload: bytes) -> Any:
    fn, data = cloudpickle.loads(payload)
    collector = CollectingReporter()
    with use_reporter(collector):
        fn(object, data=data)
    return collector.final_value


def _run_noop(_: int) -> int:
    return os.getpid()


def _stamp(done_at: dict[int, float], index: int, _future: concurrent.futures.Future[Any]) -> None:
    done_at[index] = time.perf_counter()


def run_pool(data: torch.Tensor, trials: int, workers: int) -> ModeResult:
    """``trials`` payloads, each pickled when submitted, ``workers + 1`` in flight."""
    context = multiprocessing.get_context("fork")  # before any cluster thread exists
    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_pool_worker, initargs=(1,)
    ) as pool:
        list(pool.map(_run_noop, range(4 * workers)))  # start the processes
        done_at: dict[int, float] = {}
        pickle_s: list[float] = []
        moved = 0
        inflight: set[concurrent.futures.Future[Any]] = set()
        futures: list[concurrent.futures.Future[Any]] = []
        started = time.perf_counter()
        while len(futures) < trials or inflight:
            while len(futures) < trials and len(inflight) < workers + 1:
                t0 = time.perf_counter()
                payload = cloudpickle.dumps((fit, data))
                pickle_s.append(time.perf_counter() - t0)
                moved += len(payload)
                future = pool.submit(_run_payload, payload)
                del payload
                index = len(futures)
                future.add_done_callback(functools.partial(_stamp, done_at, index))
                futures.append(future)
                inflight.add(future)
            _done, inflight = concurrent.futures.wait(
                inflight, return_when=concurrent.futures.FIRST_COMPLETED
            )
        total = max(done_at.values()) - started
    results = []
    for i, f in enumerate(futures):
        final = f.result() if f.exception() is None else None
        worker = f"pid {int(final['pid'])}" if isinstance(final, dict) else "?"
        results.append(from_final(worker, done_at[i] - started, final, f.exception() is None))
    extra = {"cloudpickle.dumps per trial (client), p50": f"{statistics.median(pickle_s):.2f} s"}
    return ModeResult("plain cloudpickle per trial", total, moved, results, extra)


# ---- retia with the blob cache ----


class Recorder:
    """A ``Backend`` listener: when each trial started running and finished, as the client saw it."""

    def __init__(self) -> None:
        self.running_at: dict[str, float] = {}
        self.done_at: dict[str, float] = {}
        self._cond = threading.Condition()

    def __call__(self, trial: Trial, event: Event) -> None:
        if event.state is None:
            return
        state = event.state.state
        with self._cond:
            if state is TrialState.RUNNING:
                self.running_at.setdefault(trial.id, time.time())
            elif state.finished:
                self.done_at[trial.id] = time.perf_counter()
                self._cond.notify_all()

    def wait(self, ids: list[str], timeout: float) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: all(i in self.done_at for i in ids), timeout):
                missing = sum(i not in self.done_at for i in ids)
                raise TimeoutError(f"{missing} trial(s) still running after {timeout:.0f}s")


def wait_for_workers(backend: Backend, workers: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while len(backend.status().workers) < workers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{workers} workers did not join within {timeout:.0f}s")
        time.sleep(0.2)


def watch_for(path: Path, since: float, timeout: float) -> Callable[[], float]:
    """Poll for ``path`` in a thread; the returned function gives seconds from ``since`` to its arrival."""
    seen: list[float] = []

    def poll() -> None:
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        seen.append(time.perf_counter() - since if path.exists() else float("nan"))

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()

    def result() -> float:
        thread.join()
        return seen[0]

    return result


def client_blob(evaluator: retia.FunctionalEvaluator) -> tuple[Blob, float]:
    """The evaluator's one blob and the time ``dump`` takes to find and hash it (what each submit pays)."""
    blobs: dict[str, Blob] = {}
    t0 = time.perf_counter()
    dump(evaluator, name="evaluator", blobs=blobs)
    elapsed = time.perf_counter() - t0
    [blob] = blobs.values()
    return blob, elapsed


def run_blobs(data: torch.Tensor, trials: int, workers: int, log: Callable[[str], None]) -> ModeResult:
    t0 = time.perf_counter()
    evaluator = retia.FunctionalEvaluator(fit, data=data)
    construct_s = time.perf_counter() - t0
    blob, dump_s = client_blob(evaluator)
    with local_cluster(workers=workers) as backend:
        assert backend.cluster is not None  # local_cluster set it
        home: Path = backend.cluster.home
        recorder = Recorder()
        backend.add_listener(recorder)
        wait_for_workers(backend, workers)
        warm = [backend.submit(object, retia.FunctionalEvaluator(noop_fit)) for _ in range(2 * workers)]
        recorder.wait([t.id for t in warm], 120)
        log(f"retia: {workers} workers ready and warm; submitting {trials} trials")
        sent_before = backend.status().bytes_sent
        started = time.perf_counter()
        uploaded = watch_for(home / "blobs" / blob.digest, started, timeout=600)
        submit_s: list[float] = []
        submitted: list[Trial] = []
        for _ in range(trials):
            s0 = time.perf_counter()
            submitted.append(backend.submit(object, evaluator))
            submit_s.append(time.perf_counter() - s0)
        submitted_all = time.perf_counter() - started
        recorder.wait([t.id for t in submitted], 600 + 30 * trials)
        total = max(recorder.done_at[t.id] for t in submitted) - started
        sent = backend.status().bytes_sent - sent_before
        upload_s = uploaded()
        cached = home / "worker-0" / "blobs" / blob.digest
        v0 = time.perf_counter()
        digest_of(cached)
        verify_s = time.perf_counter() - v0
    results = []
    for t in submitted:
        times = from_final(
            t.worker, recorder.done_at[t.id] - started, t.final, t.state is TrialState.SUCCEEDED
        )
        times.running_at = recorder.running_at.get(t.id, float("nan"))
        results.append(times)
    later_p50 = statistics.median(submit_s[1:] or submit_s)
    extra = {
        "FunctionalEvaluator(...) construction (dumps once to check)": f"{construct_s:.2f} s",
        "dump(evaluator) on the client (finds and hashes the tensor)": f"{dump_s:.2f} s",
        "first submit (dump + enqueue the upload)": f"{submit_s[0]:.2f} s",
        "later submits, p50 (dump again; upload skipped)": f"{later_p50:.2f} s",
        f"all {trials} submits returned": f"{submitted_all:.2f} s",
        "blob verified and stored on the dispatcher (from the first submit)": f"{upload_s:.2f} s",
        "re-verifying the cached blob (digest_of, once per trial on the worker)": f"{verify_s:.2f} s",
    }
    moved = blob.size + sent
    result = ModeResult("retia, blob cache", total, moved, results, extra)
    result.extra.update(start_rows(result.trials))
    return result


def start_rows(trials: list[TrialTimes]) -> dict[str, str]:
    """RUNNING at the client -> fit's first line, and fit's read of the tensor: by order on each worker."""
    ranks: dict[int, list[TrialTimes]] = {}
    for runs in by_worker(trials).values():
        for rank, t in enumerate(sorted(runs, key=lambda t: t.running_at)):
            ranks.setdefault(min(rank, 2), []).append(t)
    names = {0: "1st trial on each worker", 1: "2nd trial on each worker", 2: "later trials, p50"}
    rows: dict[str, str] = {}
    for rank, name in names.items():
        group = ranks.get(rank, [])
        starts = [t.t_start - t.running_at for t in group]
        touches = [t.touch_s for t in group]
        if not group:
            continue
        if rank < 2:
            start_text = " / ".join(f"{s:.2f}" for s in starts) + " s"
            touch_text = " / ".join(f"{s * 1000:.0f}" for s in touches) + " ms"
        else:
            start_text = f"{statistics.median(starts):.2f} s"
            touch_text = f"{statistics.median(touches) * 1000:.0f} ms"
        rows[f"{name}: RUNNING -> first line of fit"] = start_text
        rows[f"{name}: fit reads the tensor (data.sum())"] = touch_text
    return rows


# ---- the tables ----


def size(n: float) -> str:
    return f"{n / MiB:,.0f} MiB" if n < 10 * 1024 * MiB else f"{n / (1024 * MiB):,.1f} GiB"


def build_table(results: list[ModeResult], baseline: ModeResult, args: argparse.Namespace) -> Table:
    table = Table(
        title=f"Blob benchmark: {args.trials} trials, {args.size_mb} MiB tensor, {args.workers} workers"
    )
    for name in ("mode", "total time", "per-trial p50", "bytes moved", "time ratio", "bytes ratio"):
        table.add_column(name, justify="left" if name == "mode" else "right")
    for r in results:
        failed = f" [red]({r.failed} failed)[/red]" if r.failed else ""
        table.add_row(
            r.label + failed,
            f"{r.total_s:.2f} s",
            f"{r.per_trial_p50(0.0):.2f} s",
            size(r.bytes_moved),
            f"{r.total_s / baseline.total_s:.2f}x",
            f"{r.bytes_moved / baseline.bytes_moved:.3f}x",
        )
    return table


def detail_table(results: list[ModeResult]) -> Table:
    table = Table(title="Where the time goes")
    table.add_column("mode")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for r in results:
        for name, value in r.extra.items():
            table.add_row(r.label, name, value)
        touches = [t.touch_s for t in r.trials if t.ok]
        if touches and not any("reads the tensor" in k for k in r.extra):
            table.add_row(
                r.label,
                "fit reads the tensor (data.sum()), p50",
                f"{statistics.median(touches) * 1000:.0f} ms",
            )
        table.add_section()
    return table


# ---- entry point ----


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="tensor size in MiB (default %(default)s)")
    parser.add_argument("--trials", type=int, default=20, help="trials per mode (default %(default)s)")
    parser.add_argument(
        "--workers", type=int, default=2, help="workers / pool processes (default %(default)s)"
    )
    parser.add_argument("--quick", action="store_true", help="20 MiB, 6 trials: a smoke run")
    parser.add_argument("--markdown", action="store_true", help="also print the tables as Markdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mb, args.trials = 20, 6
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 150))

    def log(text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')} {text}[/dim]")

    log(f"{platform.node()} python {platform.python_version()}, {multiprocessing.cpu_count()} cores")
    torch.set_num_threads(1)  # as in the trials, so the client's sum is computed the same way
    data = torch.randn(args.size_mb * MiB // 4, generator=torch.Generator().manual_seed(0))
    log(
        f"baseline: {args.trials} trials, a fresh cloudpickle payload each, "
        f"ProcessPoolExecutor({args.workers})"
    )
    baseline = run_pool(data, args.trials, args.workers)
    blobs = run_blobs(data, args.trials, args.workers, log)
    expected = float(data.sum())
    mismatches = 0
    for r in (baseline, blobs):
        wrong = sum(abs(t.value - expected) > 1e-5 * abs(expected) for t in r.trials if t.ok)
        mismatches += wrong
        log(f"{r.label}: {len(r.trials) - r.failed - wrong}/{len(r.trials)} trials reported the client's sum")
    results = [blobs, baseline]
    table, details = build_table(results, baseline, args), detail_table(results)
    console.print(table)
    console.print(details)
    now = datetime.datetime.now().isoformat(timespec="seconds")
    console.print(f"tensor sum {expected:.3f}; {now}  {' '.join(sys.argv)}")
    if args.markdown:
        print(to_markdown(table))
        print()
        print(to_markdown(details))
    return 1 if mismatches or any(r.failed for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
