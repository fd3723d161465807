"""Soak: many short trials with intermediate reports while workers are killed and restarted.

What is measured, and why: the dispatcher's promise is that every trial ends with exactly one
final result and every intermediate report is stored and delivered exactly once, whatever
happens to workers, and that it can run for a long time without growing. This runs
``--trials`` short trials (each reports ``--reports`` intermediate values, then a final one)
over ``--workers`` workers of a real ``local_cluster``, SIGKILLs one worker agent every
``--kill-every`` seconds (round robin) and starts a fresh one in its place, then checks:

- at the client: each trial's ``result()`` (once) is its own expected final value, and its
  ``intermediates`` (those of the attempt that finished) are exactly the expected list; the
  final REPORT event arrives once per trial;
- in the journal (SQLite, read after the run): exactly one final report per trial; for every
  (trial, attempt), intermediate seqs are unique and a gap-free prefix ``1..k`` carrying the
  values that seq must carry; the finishing attempt has all of them, then the final;
- the dispatcher's resident memory (``VmRSS``) after the first 1,000 trials and at the end.

With ``--dispatcher-kills N`` the dispatcher itself is SIGKILLed N times during the run (every
``--dispatcher-every`` seconds) and started again on its journal and address; with a high
``--reports`` that is a report flood cut three times. ``--load K`` runs K busy processes beside
it (a loaded machine stretches every timing window), ``--runs R`` repeats the whole soak R
times. A trial that makes no progress for ``--stall`` seconds counts as stuck and ends the run.

Numbers only, never timing assertions (the machine is usually shared). Exit status 1 when a
correctness count is wrong, so the check can run unattended.

    .venv/bin/python benchmarks/soak.py [--trials 10000] [--workers 4] [--kill-every 3] [--reports 3]
    .venv/bin/python benchmarks/soak.py --trials 40 --reports 1000 --workers 2 --kill-every 0 \
        --in-flight 4 --dispatcher-kills 3 --dispatcher-every 2 --load 2 --runs 20
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import platform
import queue
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

import retia
from retia import FunctionalEvaluator
from retia.client.backend import Backend, Trial
from retia.client.cluster import LocalCluster, local_cluster
from retia.errors import RetiaError
from retia.protocol import Event, TrialState

WORKER_ARGS = ("--reuse-process", "--preload", "retia.worker.runner,retia.serializer")
RSS_MARK = 1000  # trials finished when the reference RSS is taken


# ---- the trial: no torch, so the fork server need not import it ----


class TinyModel:
    """A zero-argument model factory; the fit never builds it."""


def soak_fit(model_cls: Any, index: int, reports: int) -> None:
    """``reports`` intermediate values ``index * 1000 + k``, then the final value ``index``."""
    for k in range(reports):
        retia.report_intermediate_result(float(index * 1000 + k))
    retia.report_final_result(float(index))


def expected_intermediates(index: int, reports: int) -> list[float]:
    return [float(index * 1000 + k) for k in range(reports)]


# ---- settings and results ----


@dataclass(frozen=True)
class SoakConfig:
    trials: int = 10_000
    workers: int = 4
    kill_every: float = 3.0  # seconds between worker kills; 0 for none
    max_kills: int | None = None  # stop killing after this many (the test uses 2)
    reports: int = 3
    in_flight: int = 400
    max_retries: int = 10
    heartbeat_interval: float = 0.2
    liveness: int = 5
    home: Path | None = None  # default: a temporary directory, removed afterwards
    worker_args: tuple[str, ...] = WORKER_ARGS
    progress: bool = True
    dispatcher_kills: int = 0  # SIGKILL the dispatcher this many times during the run
    dispatcher_every: float = 2.0  # seconds between those kills (the first after this long)
    dispatcher_down: float = 0.0  # seconds each kill leaves it down
    load: int = 0  # busy processes beside the cluster
    stall: float = 120.0  # seconds without a trial finishing before the rest count as stuck


@dataclass
class SoakResult:
    trials: int = 0
    succeeded: int = 0
    failed: list[str] = field(default_factory=list)  # "trial: reason"
    wrong_final: list[str] = field(default_factory=list)
    wrong_intermediates: list[str] = field(default_factory=list)
    client_finals: Counter[str] = field(default_factory=Counter)  # final REPORT events per trial
    client_intermediates: int = 0  # intermediate values of the finishing attempts
    attempts_over_one: int = 0
    kills: int = 0
    dispatcher_kills: int = 0
    stuck: list[str] = field(default_factory=list)  # "trial: state" of those that never finished
    journal: dict[str, Any] = field(default_factory=dict)
    rss_kb: dict[int, int] = field(default_factory=dict)  # trials finished -> dispatcher VmRSS
    elapsed: float = 0.0

    @property
    def duplicate_client_finals(self) -> int:
        return sum(1 for n in self.client_finals.values() if n > 1)

    @property
    def rss_ratio(self) -> float | None:
        if not self.rss_kb:
            return None
        marks = sorted(self.rss_kb)
        first = next((m for m in marks if m >= RSS_MARK), marks[0])
        return self.rss_kb[marks[-1]] / self.rss_kb[first]

    def problems(self) -> list[str]:
        """Every broken exactly-once promise, in words (empty when all is well)."""
        out = []
        if self.stuck:
            out.append(f"{len(self.stuck)} trial(s) stuck (no progress): {self.stuck[:3]}")
        if self.succeeded != self.trials:
            out.append(f"{self.trials - self.succeeded} trial(s) did not succeed: {self.failed[:3]}")
        if self.wrong_final:
            out.append(f"{len(self.wrong_final)} wrong final value(s): {self.wrong_final[:3]}")
        if self.wrong_intermediates:
            out.append(
                f"{len(self.wrong_intermediates)} wrong intermediate list(s): {self.wrong_intermediates[:3]}"
            )
        missing = self.trials - len(self.client_finals)
        if missing or self.duplicate_client_finals:
            out.append(
                f"client final REPORT events: {missing} trial(s) without, "
                f"{self.duplicate_client_finals} with more than one"
            )
        out += self.journal.get("problems", [])
        return out


# ---- measurements ----


def rss_kb(pid: int) -> int:
    """Resident memory of a process in kB, from /proc (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def dispatcher_rss_kb(cluster: LocalCluster) -> int:
    """Resident memory of the cluster's dispatcher in kB (0 if it is not running)."""
    return 0 if cluster.dispatcher is None else rss_kb(cluster.dispatcher.pid)


class Killer(threading.Thread):
    """SIGKILLs one worker agent every ``every`` seconds (round robin) and starts a fresh one."""

    def __init__(self, cluster: LocalCluster, every: float, max_kills: int | None) -> None:
        super().__init__(name="soak-killer", daemon=True)
        self.cluster, self.every, self.max_kills = cluster, every, max_kills
        self.kills = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        victims = itertools.cycle(range(self.cluster.workers))
        while not self._stop_event.wait(self.every):
            if self.max_kills is not None and self.kills >= self.max_kills:
                return
            index = next(victims)
            proc = self.cluster.worker_procs[index]
            proc.kill()
            proc.wait()
            self.kills += 1
            self.cluster.start_worker(index)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class DispatcherKiller(threading.Thread):
    """SIGKILLs the dispatcher ``times`` times, ``every`` seconds apart, and starts it again each time
    on its journal and address (workers and the client reconnect and re-send what they keep)."""

    def __init__(self, cluster: LocalCluster, every: float, times: int, down: float = 0.0) -> None:
        super().__init__(name="soak-dispatcher-killer", daemon=True)
        self.cluster, self.every, self.times, self.down = cluster, every, times, down
        self.kills = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        while self.kills < self.times and not self._stop_event.wait(self.every):
            self.cluster.kill_dispatcher()
            self.kills += 1
            self._stop_event.wait(self.down)  # as a supervisor restarting it a while later
            self.cluster.start_dispatcher()
        self._stop_event.wait()  # (a retia before 0bf19a6 tied the dispatcher's life to this thread)

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


class BusyLoad:
    """``count`` processes that spin on a core each, for as long as the block runs."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> BusyLoad:
        spin = [sys.executable, "-c", "while True: pass"]
        self._procs = [subprocess.Popen(spin) for _ in range(self.count)]
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()


# ---- the run ----


def _started(backend: Backend) -> LocalCluster:
    """The processes local_cluster started for ``backend``."""
    if backend.cluster is None:
        raise RuntimeError("the soak needs a backend from local_cluster")
    return backend.cluster


def run_soak(config: SoakConfig) -> SoakResult:
    """Run the soak on a fresh local cluster; return the counts (the caller judges them)."""
    tmp: tempfile.TemporaryDirectory[str] | None = None
    home = config.home
    if home is None:
        tmp = tempfile.TemporaryDirectory(prefix="retia-soak-")
        home = Path(tmp.name)
    try:
        with local_cluster(
            workers=config.workers,
            home=home,
            heartbeat_interval=config.heartbeat_interval,
            liveness=config.liveness,
            worker_args=config.worker_args,
        ) as backend:
            cluster = _started(backend)
            result = SoakResult(trials=config.trials)
            backend.add_listener(lambda trial, event: _count_final(result, trial, event))
            killer = Killer(cluster, config.kill_every, config.max_kills) if config.kill_every > 0 else None
            dispatcher_killer = (
                DispatcherKiller(
                    cluster, config.dispatcher_every, config.dispatcher_kills, config.dispatcher_down
                )
                if config.dispatcher_kills
                else None
            )
            started = time.monotonic()
            with BusyLoad(config.load):
                for thread in (killer, dispatcher_killer):
                    if thread is not None:
                        thread.start()
                try:
                    _submit_and_check(backend, cluster, config, result)
                finally:
                    if killer is not None:
                        killer.stop()
                        result.kills = killer.kills
                    if dispatcher_killer is not None:
                        dispatcher_killer.stop()
                        result.dispatcher_kills = dispatcher_killer.kills
            result.elapsed = time.monotonic() - started
            result.rss_kb[config.trials] = dispatcher_rss_kb(cluster)
            result.journal = check_journal(cluster.home / "journal.sqlite", config.trials, config.reports)
            return result
    finally:
        if tmp is not None:
            tmp.cleanup()


def _count_final(result: SoakResult, trial: Trial, event: Event) -> None:
    if event.report is not None and event.report.final:
        result.client_finals[trial.id] += 1  # the client's I/O thread is the only writer


def _submit_and_check(
    backend: Backend, cluster: LocalCluster, config: SoakConfig, result: SoakResult
) -> None:
    """Keep ``in_flight`` trials submitted; check each one as it finishes."""
    finished: queue.SimpleQueue[tuple[Trial, int]] = queue.SimpleQueue()
    submitted = done = 0
    last_print = time.monotonic()
    pending: dict[int, Trial] = {}
    while done < config.trials:
        while submitted < config.trials and submitted - done < config.in_flight:
            index = submitted
            evaluator = FunctionalEvaluator(soak_fit, index=index, reports=config.reports)
            trial = backend.submit(TinyModel, evaluator, name=f"soak-{index}", max_retries=config.max_retries)
            pending[index] = trial
            trial.add_done_callback(functools.partial(_put_finished, finished, index))
            submitted += 1
        try:
            trial, index = finished.get(timeout=config.stall)
        except queue.Empty:
            result.stuck = [f"{t.id}: {t.state.value}" for t in pending.values()]
            return
        del pending[index]
        _check_trial(trial, index, config.reports, result)
        done += 1
        if done % RSS_MARK == 0:
            result.rss_kb[done] = dispatcher_rss_kb(cluster)
        if config.progress and (time.monotonic() - last_print > 10 or done == config.trials):
            last_print = time.monotonic()
            rss_mib = dispatcher_rss_kb(cluster) / 1024
            print(f"  {done}/{config.trials} trials done, dispatcher RSS {rss_mib:.1f} MiB", flush=True)


def _put_finished(finished: queue.SimpleQueue[tuple[Trial, int]], index: int, trial: Trial) -> None:
    finished.put((trial, index))


def _check_trial(trial: Trial, index: int, reports: int, result: SoakResult) -> None:
    try:
        value = trial.result()
    except RetiaError as exc:
        result.failed.append(f"{trial.id}: {exc}".splitlines()[0])
        return
    result.succeeded += 1
    if value != float(index):
        result.wrong_final.append(f"{trial.id}: {value!r} != {float(index)!r}")
    expected = expected_intermediates(index, reports)
    if trial.intermediates != expected:
        result.wrong_intermediates.append(
            f"{trial.id} attempt {trial.attempt}: {trial.intermediates!r} != {expected!r}"
        )
    result.client_intermediates += len(trial.intermediates)
    if trial.attempt > 1:
        result.attempts_over_one += 1


# ---- the journal ----


def check_journal(path: Path, trials: int, reports: int) -> dict[str, Any]:
    """Counts from the journal, and every exactly-once rule it breaks (under ``problems``)."""
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        states = dict(db.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        names = {tid: int(name.rsplit("-", 1)[1]) for tid, name in db.execute("SELECT id, name FROM trials")}
        last_attempt = dict(db.execute("SELECT id, attempt FROM trials").fetchall())
        rows = db.execute(
            "SELECT trial, attempt, seq, final, value FROM reports ORDER BY trial, attempt, seq"
        ).fetchall()
    problems: list[str] = []
    if states.get(TrialState.SUCCEEDED.value, 0) != trials:
        problems.append(f"journal states {states}, expected {trials} SUCCEEDED")
    finals: Counter[str] = Counter()
    seqs: dict[tuple[str, int], list[tuple[int, bool, float]]] = {}
    for trial, attempt, seq, final, value in rows:
        reported = msgpack.unpackb(value, raw=False)  # the metric, as the trial packed it
        seqs.setdefault((trial, attempt), []).append((seq, bool(final), reported))
        finals[trial] += bool(final)
    duplicated = {t: n for t, n in finals.items() if n > 1}
    without = [t for t in names if finals[t] == 0]
    if duplicated or without:
        problems.append(
            f"journal finals: {len(duplicated)} trial(s) with more than one "
            f"(e.g. {_final_attempts(seqs, duplicated)}), {len(without)} without"
        )
    bad = [
        f"{t} attempt {a}"
        for (t, a), items in seqs.items()
        if not _attempt_ok(items, names[t], reports, a == last_attempt[t])
    ]
    if bad:
        problems.append(
            f"journal reports: {len(bad)} attempt(s) with missing, duplicated or wrong seqs, e.g. {bad[:3]}"
        )
    intermediates = sum(1 for items in seqs.values() for _s, final, _v in items if not final)
    finishing = sum(
        1 for (t, a), items in seqs.items() if a == last_attempt[t] for _s, final, _v in items if not final
    )
    return {
        "states": states,
        "finals": sum(finals.values()),
        "trials_with_duplicate_finals": len(duplicated),
        "intermediates": intermediates,
        "intermediates_of_finishing_attempts": finishing,
        "attempts_with_reports": len(seqs),
        "problems": problems,
    }


def _attempt_ok(items: list[tuple[int, bool, float]], index: int, reports: int, finishing: bool) -> bool:
    """Seqs 1..k without gaps, seq s carrying intermediate s-1; the finishing attempt complete."""
    expected = expected_intermediates(index, reports)
    for position, (seq, final, value) in enumerate(items, start=1):
        if seq != position:
            return False
        if final != (seq == reports + 1) or value != (float(index) if final else expected[seq - 1]):
            return False
    return len(items) == reports + 1 if finishing else len(items) <= reports + 1


def _final_attempts(
    seqs: dict[tuple[str, int], list[tuple[int, bool, float]]], duplicated: dict[str, int]
) -> str:
    """For the first duplicated trial: the attempts that stored a final report."""
    if not duplicated:
        return "-"
    trial = next(iter(duplicated))
    attempts = sorted(a for (t, a), items in seqs.items() if t == trial and any(f for _s, f, _v in items))
    return f"trial {trial} attempts {attempts}"


# ---- the command line ----


def print_report(config: SoakConfig, result: SoakResult) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]Soak[/bold] {datetime.date.today()} on {platform.node()} ({platform.machine()}, Python "
        f"{platform.python_version()}): {config.trials} trials x {config.reports} reports, "
        f"{config.workers} workers, a kill every {config.kill_every}s, {config.in_flight} in flight, "
        f"worker args {' '.join(config.worker_args)}"
    )
    j = result.journal
    table = Table(title="exactly once")
    table.add_column("count")
    table.add_column("client", justify="right")
    table.add_column("journal", justify="right")
    table.add_column("expected", justify="right")
    table.add_row(
        "trials succeeded",
        str(result.succeeded),
        str(j.get("states", {}).get("SUCCEEDED", 0)),
        str(config.trials),
    )
    table.add_row(
        "final results", str(sum(result.client_finals.values())), str(j.get("finals")), str(config.trials)
    )
    table.add_row(
        "trials with >1 final",
        str(result.duplicate_client_finals),
        str(j.get("trials_with_duplicate_finals")),
        "0",
    )
    table.add_row(
        "intermediates (finishing attempts)",
        str(result.client_intermediates),
        str(j.get("intermediates_of_finishing_attempts")),
        str(config.trials * config.reports),
    )
    table.add_row("intermediates (all attempts)", "-", str(j.get("intermediates")), ">= expected")
    table.add_row("trials with attempt > 1", str(result.attempts_over_one), "-", "-")
    table.add_row("worker kills", str(result.kills), "-", "-")
    console.print(table)
    marks = sorted(result.rss_kb)
    first = next((m for m in marks if m >= RSS_MARK), marks[0]) if marks else None
    if first is not None:
        console.print(
            f"dispatcher RSS: {result.rss_kb[first] / 1024:.1f} MiB after {first} trials, "
            f"{result.rss_kb[marks[-1]] / 1024:.1f} MiB at the end ({marks[-1]}): "
            f"ratio {result.rss_ratio:.2f} (target <= 1.5)"
        )
        console.print(
            "RSS timeline (trials: MiB): " + ", ".join(f"{m}: {result.rss_kb[m] / 1024:.1f}" for m in marks)
        )
    if config.dispatcher_kills:
        console.print(
            f"dispatcher SIGKILLed and restarted {result.dispatcher_kills} times; "
            f"{config.load} busy processes"
        )
    console.print(f"elapsed {result.elapsed:.0f}s, {config.trials / max(result.elapsed, 1e-9):.1f} trials/s")
    problems = result.problems()
    console.print(
        "[green]no exactly-once violation[/green]"
        if not problems
        else "[red]PROBLEMS:[/red]\n  " + "\n  ".join(problems)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--kill-every", type=float, default=3.0, help="seconds between worker kills (0: none)"
    )
    parser.add_argument("--reports", type=int, default=3, help="intermediate reports per trial")
    parser.add_argument("--in-flight", type=int, default=400, help="trials submitted and not yet finished")
    parser.add_argument("--max-retries", type=int, default=10)
    parser.add_argument("--home", type=Path, help="keep the cluster's files (journal, logs) here")
    parser.add_argument("--dispatcher-kills", type=int, default=0, help="SIGKILL the dispatcher this often")
    parser.add_argument("--dispatcher-every", type=float, default=2.0, help="seconds between those kills")
    parser.add_argument("--dispatcher-down", type=float, default=0.0, help="seconds down after each kill")
    parser.add_argument("--load", type=int, default=0, help="busy processes beside the cluster")
    parser.add_argument("--stall", type=float, default=120.0, help="seconds without progress: stuck")
    parser.add_argument("--runs", type=int, default=1, help="repeat the soak this many times")
    args = parser.parse_args(argv)
    config = SoakConfig(
        trials=args.trials,
        workers=args.workers,
        kill_every=args.kill_every,
        reports=args.reports,
        in_flight=args.in_flight,
        max_retries=args.max_retries,
        home=args.home,
        dispatcher_kills=args.dispatcher_kills,
        dispatcher_every=args.dispatcher_every,
        dispatcher_down=args.dispatcher_down,
        load=args.load,
        stall=args.stall,
        progress=args.runs == 1,
    )
    failed_runs = 0
    for run in range(1, args.runs + 1):
        result = run_soak(config)
        problems = result.problems()
        failed_runs += bool(problems)
        if args.runs > 1:
            print(
                f"run {run}/{args.runs}: {result.succeeded}/{config.trials} succeeded, "
                f"{result.client_intermediates} intermediates (expected {config.trials * config.reports}), "
                f"{result.dispatcher_kills} dispatcher kills, {result.attempts_over_one} retried, "
                f"{result.elapsed:.0f}s: {'; '.join(problems) or 'no exactly-once violation'}",
                flush=True,
            )
        if args.runs == 1 or problems or run == args.runs:
            print_report(config, result)
    if args.runs > 1:
        print(f"{args.runs - failed_runs} of {args.runs} runs without a violation")
    return 1 if failed_runs else 0


if __name__ == "__main__":
    sys.exit(main())
