"""Scale: one real dispatcher, hundreds of simulated workers, tens of thousands of no-op trials.

What is measured, and why: with no-op trials all the work is the dispatcher's own (verify,
decode, journal, schedule, sign, send), so this shows how many messages per second one
dispatcher process handles, what each message costs it in CPU, and how long an idle worker
waits between its READY and the RUN it is given when the cluster is large and the queue is
never empty. That bounds the cluster size and the trial rate one head node can drive.

Set-up:

- the dispatcher is the real one, ``python -m retia.dispatcher`` in a subprocess, with its
  SQLite journal on disk by default (``--journal memory`` for ``:memory:``) and its default
  INFO log going to a file; ``--heartbeat 1 --liveness 30``;
- ``--workers`` simulated workers speak the real protocol with one worker credential issued from
  the ``cluster.key`` the dispatcher created: ``--sim-procs`` processes, each driving its share of
  DEALER sockets (routing ids assigned by the dispatcher's socket) from one ``zmq.Poller`` loop.
  Each says HELLO (role worker), waits for its WELCOME and says READY in the session it opens,
  sends a HEARTBEAT every heartbeat interval like the real agent, and on RUN answers at once
  REPORT(final, seq 1), DONE(SUCCEEDED, seq 2) and READY, as ``worker/agent.py`` does; a RESET
  makes it say HELLO again. Payloads are never unpickled (neither here nor by the dispatcher);
- one real client (``Backend``) submits ``--trials`` trials of a ``FunctionalEvaluator`` with a
  no-op fit, keeping ``--in-flight`` of them unfinished, with a client credential.

Measured over the window from the first SUBMIT to the last trial's final state at the client:
messages the dispatcher received and sent (counted by the simulators, plus the client's
SUBMITs, ACKs and events counted at the client, plus its heartbeats), messages/s, the
dispatcher's CPU time (utime + stime from ``/proc/<pid>/stat``) per message, and READY->RUN
latency at the simulated workers (only READYs sent inside the window). All processes share
the machine's cores: on a small machine the simulators and the client compete with the
dispatcher, so read the numbers as a lower bound for a head node of its own.

    .venv/bin/python benchmarks/scale.py [--workers 500] [--trials 50000] [--quick]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

import retia
from retia import FunctionalEvaluator
from retia.client.backend import Backend, Trial, connect, query_status
from retia.credentials import Credential, issue
from retia.errors import RetiaError
from retia.keys import load_key
from retia.protocol import (
    Done,
    DoneBatch,
    Event,
    Header,
    Hello,
    Message,
    MsgType,
    Report,
    Role,
    TrialState,
    pack_metric,
)
from retia.session import Opening, Session, read_reset

CLK_TCK = os.sysconf("SC_CLK_TCK")

# ---- the trial (never run: simulated workers do not load payloads) ----


class NoopModel:
    """A zero-argument model factory."""


def noop_fit(model_cls: Any) -> None:
    retia.report_final_result(0.0)


# ---- settings ----


@dataclass(frozen=True)
class ScaleConfig:
    workers: int = 500
    trials: int = 50_000
    in_flight: int = 2_000
    sim_procs: int = 4
    heartbeat: float = 1.0
    liveness: int = 30
    journal: str = "file"  # "file" (<home>/journal.sqlite) or "memory"
    log_level: str = "INFO"
    profile: Path | None = None  # run the dispatcher under cProfile, stats written here


# ---- the dispatcher ----


def start_dispatcher(home: Path, config: ScaleConfig) -> tuple[subprocess.Popen[bytes], str]:
    """The real dispatcher in a subprocess; returns it and its bound address."""
    ready = home / "dispatcher.address"
    profiler = ["-m", "cProfile", "-o", str(config.profile)] if config.profile else []
    cmd = [
        sys.executable,
        *profiler,
        "-m",
        "retia.dispatcher",
        "--bind",
        "tcp://127.0.0.1:*",
        "--home",
        str(home),
        "--ready-file",
        str(ready),
        "--heartbeat",
        str(config.heartbeat),
        "--liveness",
        str(config.liveness),
        "--log-level",
        config.log_level,
    ]
    if config.journal == "memory":
        cmd += ["--journal", ":memory:"]
    with open(home / "dispatcher.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the dispatcher did not start; see {home / 'dispatcher.log'}")
        time.sleep(0.02)
    return proc, ready.read_text().strip()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# ---- the simulated workers ----


@dataclass
class _SimWorker:
    id: str
    sock: zmq.Socket[bytes]
    credential: Credential
    session: Session | None = None  # keyed by the last WELCOME
    opening: Opening | None = None  # a HELLO sent, its WELCOME awaited
    ready_at: float = 0.0


@dataclass
class SimResult:
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (READY sent at, READY->RUN seconds)
    received: collections.Counter[str] = field(default_factory=collections.Counter)
    sent: collections.Counter[str] = field(default_factory=collections.Counter)
    dropped: int = 0


class Simulator:
    """``count`` simulated worker agents on one zmq.Poller loop, speaking the real protocol."""

    def __init__(
        self, index: int, count: int, address: str, credential: Credential, heartbeat: float, counters: Any
    ) -> None:
        self.index, self.heartbeat, self.counters = index, heartbeat, counters
        self.ctx = zmq.Context()
        self.poller = zmq.Poller()
        self.workers: dict[zmq.Socket[bytes], _SimWorker] = {}
        self.result = SimResult()
        self._sent = self._received = 0
        for i in range(count):
            worker_id = f"sim-{socket.gethostname()}-{index}-{i}"
            sock = self.ctx.socket(zmq.DEALER)  # its routing id is the dispatcher socket's choice
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(address)
            self.poller.register(sock, zmq.POLLIN)
            self.workers[sock] = _SimWorker(worker_id, sock, credential)
        # heartbeats staggered over one interval, sent round robin like each agent's own timer
        now = time.monotonic()
        self.beats = collections.deque(
            (now + heartbeat * i / count, w) for i, w in enumerate(self.workers.values())
        )

    def send(self, worker: _SimWorker, type: MsgType, body: Any = None, **header: Any) -> None:
        if worker.session is None or worker.opening is not None:
            return  # nothing is signed between a HELLO and its WELCOME
        self._send_frames(worker, type, worker.session.frames(type, body, **header))

    def _send_frames(self, worker: _SimWorker, type: MsgType, frames: list[bytes]) -> None:
        worker.sock.send_multipart(frames, zmq.NOBLOCK)
        self._sent += 1
        self.result.sent[type.name] += 1

    def hello(self, worker: _SimWorker) -> None:
        """HELLO; the WELCOME that answers it opens the session its READY goes out in."""
        hello = Hello(Role.WORKER, worker.id, socket.gethostname(), os.getpid(), "none", [])
        worker.opening = Opening(worker.credential, worker.id)
        self._send_frames(worker, MsgType.HELLO, worker.opening.hello_frames(hello))

    def ready(self, worker: _SimWorker) -> None:
        worker.ready_at = time.monotonic()
        self.send(worker, MsgType.READY)

    def run(self, stop: Any) -> SimResult:
        for worker in self.workers.values():
            self.hello(worker)
        while not stop.is_set():
            for sock, _event in self.poller.poll(50):
                self._drain(self.workers[sock])
            self._beat(time.monotonic())
            self.counters[2 * self.index], self.counters[2 * self.index + 1] = self._sent, self._received
        for worker in self.workers.values():
            self.send(worker, MsgType.BYE)
            worker.sock.close(linger=200)
        self.ctx.term()
        return self.result

    def _beat(self, now: float) -> None:
        while self.beats and self.beats[0][0] <= now:
            due, worker = self.beats.popleft()
            self.send(worker, MsgType.HEARTBEAT)
            self.beats.append((max(due + self.heartbeat, now), worker))

    def _drain(self, worker: _SimWorker) -> None:
        while True:
            try:
                frames = worker.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._received += 1
            msg = self._read(worker, frames)
            if msg is None:
                self.result.dropped += 1
                continue
            self.result.received[msg.type.name] += 1
            self._handle(worker, msg)

    def _read(self, worker: _SimWorker, frames: list[bytes]) -> Any:
        """As ``retia.peer`` reads: the answer to our HELLO, a message of the session, or a RESET."""
        if worker.opening is not None:
            try:
                return worker.opening.answer(frames)
            except RetiaError:
                pass
        if worker.session is not None:
            try:
                return worker.session.parse(frames)
            except RetiaError:
                pass
        reset = read_reset(frames)
        return None if reset is None else Message(Header(MsgType.RESET), reset)

    def _handle(self, worker: _SimWorker, msg: Any) -> None:
        if msg.type is MsgType.WELCOME and worker.opening is not None:
            worker.session, worker.opening = worker.opening.session(msg.body), None
            self.ready(worker)  # the first message of the session proves it: the worker joins
        elif msg.type is MsgType.REFUSED:
            raise RuntimeError(f"the dispatcher refused {worker.id}: {msg.body.reason}")
        elif msg.type is MsgType.RUNS:
            for run in msg.body.items:
                now = time.monotonic()
                self.result.latencies.append((worker.ready_at, now - worker.ready_at))
                final = Report(run.trial, run.attempt, 1, True, pack_metric(0.0))
                done = Done(run.trial, run.attempt, 2, TrialState.SUCCEEDED, reports=[final])
                self.send(worker, MsgType.DONES, DoneBatch([done]))  # as a real worker: DONE is also READY
                worker.ready_at = time.monotonic()
        elif msg.type is MsgType.RESET:
            self.hello(worker)


def _simulate(
    index: int,
    count: int,
    address: str,
    credential: Credential,
    heartbeat: float,
    counters: Any,
    stop: Any,
    out: Any,
) -> None:
    sim = Simulator(index, count, address, credential, heartbeat, counters)
    out.put((index, sim.run(stop)))


# ---- the client ----


class Submitter:
    """Submits ``trials`` no-op trials, at most ``in_flight`` unfinished; counts what the client saw."""

    def __init__(self, backend: Backend, trials: int, in_flight: int) -> None:
        self.backend, self.trials = backend, trials
        self.slots = threading.Semaphore(in_flight)
        self.all_done = threading.Event()
        self.finished = 0
        self.succeeded = 0
        self.events = 0
        self._lock = threading.Lock()
        backend.add_listener(self._on_event)

    def _on_event(self, trial: Trial, event: Event) -> None:
        self.events += 1  # only the client's I/O thread calls this

    def _on_done(self, trial: Trial) -> None:
        with self._lock:
            self.finished += 1
            self.succeeded += trial.state is TrialState.SUCCEEDED
            if self.finished == self.trials:
                self.all_done.set()
        self.slots.release()

    def run(self) -> None:
        evaluator = FunctionalEvaluator(noop_fit)
        for i in range(self.trials):
            self.slots.acquire()
            trial = self.backend.submit(NoopModel, evaluator, name=f"scale-{i}")
            trial.add_done_callback(self._on_done)
        self.all_done.wait()


# ---- the run ----


@dataclass
class ScaleResult:
    config: ScaleConfig
    elapsed: float
    dispatcher_cpu: float
    dispatcher_rss_mib: float
    sim_sent: int  # by simulators in the window: received by the dispatcher
    sim_received: int  # by simulators in the window: sent by the dispatcher
    client_messages: int
    succeeded: int
    latencies: list[float]
    sims: list[SimResult]

    @property
    def messages(self) -> int:
        return self.sim_sent + self.sim_received + self.client_messages


def run_scale(config: ScaleConfig) -> ScaleResult:
    with tempfile.TemporaryDirectory(prefix="retia-scale-") as tmp:
        home = Path(tmp)
        dispatcher, address = start_dispatcher(home, config)
        mp = multiprocessing.get_context("fork")  # before any zmq context exists in this process
        counters = mp.RawArray("q", 2 * config.sim_procs)
        stop, out = mp.Event(), mp.Queue()
        shares = [len(range(i, config.workers, config.sim_procs)) for i in range(config.sim_procs)]
        key = load_key(home / "cluster.key")  # the admin's: for the status polls only
        workers = issue(key, Role.WORKER, "scale-sims")  # one credential for the pool, as deployed
        client = issue(key, Role.CLIENT, "scale-client")
        sims = [
            mp.Process(
                target=_simulate,
                args=(i, n, address, workers, config.heartbeat, counters, stop, out),
                daemon=True,
            )
            for i, n in enumerate(shares)
        ]
        try:
            for sim in sims:
                sim.start()
            _wait_for_workers(address, key, config.workers)
            return _measure(config, dispatcher.pid, address, client, counters, stop, out, sims)
        finally:
            stop.set()
            for sim in sims:
                sim.join(timeout=30)
                if sim.is_alive():
                    sim.kill()
            dispatcher.terminate()
            dispatcher.wait(timeout=30)


def _wait_for_workers(address: str, key: bytes, count: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while (known := len(query_status(address, key, timeout=30).workers)) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {known} of {count} simulated workers joined within {timeout}s")
        time.sleep(0.2)


def _measure(
    config: ScaleConfig,
    pid: int,
    address: str,
    credential: Credential,
    counters: Any,
    stop: Any,
    out: Any,
    sims: Sequence[Any],
) -> ScaleResult:
    backend = connect(
        address, credential=credential, heartbeat_interval=config.heartbeat, liveness=config.liveness
    )
    try:
        submitter = Submitter(backend, config.trials, config.in_flight)
        before = list(counters)
        cpu0, t0 = cpu_seconds(pid), time.monotonic()
        submitter.run()
        cpu1, t1 = cpu_seconds(pid), time.monotonic()
        after = list(counters)
        rss = rss_mib(pid)
    finally:
        backend.close()
    stop.set()
    results = [out.get(timeout=60)[1] for _ in sims]
    heartbeats = 2 * int((t1 - t0) / config.heartbeat)  # the client's, both ways
    client = 2 * config.trials + submitter.events + heartbeats  # SUBMIT + ACK each, events relayed
    latencies = sorted(lat for r in results for ready_at, lat in r.latencies if t0 <= ready_at <= t1)
    return ScaleResult(
        config,
        t1 - t0,
        cpu1 - cpu0,
        rss,
        sum(after[0::2]) - sum(before[0::2]),
        sum(after[1::2]) - sum(before[1::2]),
        client,
        submitter.succeeded,
        latencies,
        results,
    )


# ---- the report ----


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q / 100 * len(sorted_values)))]


def print_report(r: ScaleResult, markdown: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    c = r.config
    console = Console()
    console.print(
        f"[bold]Scale benchmark[/bold] {datetime.date.today()} on {platform.node()} ({os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}): {c.workers} simulated workers in {c.sim_procs} processes, "
        f"{c.trials} no-op trials, {c.in_flight} in flight, journal {c.journal}, "
        f"dispatcher log {c.log_level}, heartbeat {c.heartbeat}s"
    )
    lat = r.latencies
    table = Table(title="dispatcher under load")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("trials succeeded", f"{r.succeeded} / {c.trials}"),
        ("wall time (first SUBMIT to last result)", f"{r.elapsed:.1f} s"),
        ("trials/s", f"{c.trials / r.elapsed:.0f}"),
        ("messages handled (in + out)", f"{r.messages}"),
        ("  from/to simulated workers", f"{r.sim_sent} in, {r.sim_received} out"),
        ("  from/to the client (incl. events)", f"{r.client_messages}"),
        ("messages per trial", f"{r.messages / max(c.trials, 1):.1f}"),
        ("dispatcher messages/s", f"{r.messages / r.elapsed:.0f}"),
        ("dispatcher CPU", f"{r.dispatcher_cpu:.1f} s ({100 * r.dispatcher_cpu / r.elapsed:.0f}% of a core)"),
        ("dispatcher CPU per message", f"{1e6 * r.dispatcher_cpu / max(r.messages, 1):.0f} us"),
        ("dispatcher CPU per trial", f"{1e3 * r.dispatcher_cpu / max(c.trials, 1):.2f} ms"),
        ("dispatcher RSS at the end", f"{r.dispatcher_rss_mib:.1f} MiB"),
        ("READY->RUN p50", f"{1e3 * percentile(lat, 50):.1f} ms"),
        ("READY->RUN p90", f"{1e3 * percentile(lat, 90):.1f} ms"),
        ("READY->RUN p99", f"{1e3 * percentile(lat, 99):.1f} ms"),
        ("READY->RUN max", f"{1e3 * (lat[-1] if lat else float('nan')):.1f} ms"),
        ("READY->RUN samples", f"{len(lat)}"),
        ("messages dropped (bad signature)", f"{sum(s.dropped for s in r.sims)}"),
    ]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    received = sum((s.received for s in r.sims), collections.Counter())
    console.print(
        "simulators received (whole run): " + ", ".join(f"{k} {v}" for k, v in received.most_common())
    )
    if markdown:
        from _tables import (
            to_markdown,  # benchmarks/ is on sys.path when run as a script
        )

        print(to_markdown(table))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=500)
    parser.add_argument("--trials", type=int, default=50_000)
    parser.add_argument("--in-flight", type=int, default=2_000)
    parser.add_argument("--sim-procs", type=int, default=4, help="processes sharing the simulated workers")
    parser.add_argument("--journal", choices=("file", "memory"), default="file")
    parser.add_argument("--log-level", default="INFO", help="the dispatcher's logging level")
    parser.add_argument(
        "--profile", type=Path, help="run the dispatcher under cProfile; stats go to this file"
    )
    parser.add_argument("--quick", action="store_true", help="50 workers, 2,000 trials")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    workers, trials = (50, 2_000) if args.quick else (args.workers, args.trials)
    config = ScaleConfig(
        workers=workers,
        trials=trials,
        in_flight=min(args.in_flight, trials),
        sim_procs=args.sim_procs,
        journal=args.journal,
        log_level=args.log_level,
        profile=args.profile,
    )
    result = run_scale(config)
    print_report(result, args.markdown)
    return 0 if result.succeeded == config.trials else 1


if __name__ == "__main__":
    sys.exit(main())
