"""What CurveZMQ encryption costs beside plain TCP, on 127.0.0.1, in the same run.

Both transports are set up as retia sets them up (``retia.encryption``: ``server_certificate``,
``secure_server`` on the ROUTER, ``secure_client`` on the DEALER), and every message is signed
and checked by a real ``retia.session.Session`` opened with a real HELLO/WELCOME handshake
(a worker credential issued from a cluster key), so the numbers include what retia does per
message on top of the transport. The "dispatcher" (ROUTER) runs in a child process and the
"worker" (DEALER) in this one, so each side's CPU (``time.process_time``: all of a process's
threads, ZeroMQ's I/O thread included, where Curve encrypts) is measured apart.

(a) per message: HEARTBEAT, and REPORTS batches of 1 and of 64 reports.
    Round trips/s: the worker sends one, the dispatcher checks it and sends the same kind back
    (signed in its own direction), the worker checks that, next. One-way messages/s: the worker
    sends flat out, the dispatcher checks each, the time runs until it has checked the last.
(b) per MB: BLOB_DATA, the way a worker pulls a blob: 8 BLOB_GETs outstanding, each answered
    with a 1 MiB ``FileChunk`` (from memory, so no disk is measured); MB/s, and CPU ms per MB
    on the sending (dispatcher) and receiving (worker) side.
(c) end to end: no-op trials on two real ``local_cluster``\\ s, one with ``curve=True``, using
    ``benchmarks/dispatch.py``'s phases: all at once (trials/s and CPU per trial across every
    process of the cluster) and one at a time (latency p50). ``--no-cluster`` skips it.

Each round runs every case on both transports, one right after the other, so that the ratio
compares like with like on a shared machine whose speed drifts; the table shows the median
round and the spread (min-max) over ``--rounds``. Numbers only, never assertions.

    .venv/bin/python benchmarks/curve.py [--duration 1.0] [--rounds 3] [--trials 300] \\
        [--sequential 30] [--workers 2] [--no-cluster] [--quick] [--markdown]
"""

from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import cloudpickle
import dispatch
import zmq
from _cpu import CpuMeter, CpuSplit
from _tables import to_markdown
from rich.console import Console
from rich.table import Table

import retia
from retia.blobs import CHUNK
from retia.client.cluster import local_cluster
from retia.credentials import Credential, Role, derive_key, issue
from retia.encryption import secure_client, secure_server, server_certificate
from retia.protocol import (
    BlobRequest,
    FileChunk,
    Heartbeat,
    Hello,
    MsgType,
    Report,
    ReportBatch,
    Welcome,
    pack_metric,
)
from retia.session import Opening, Session, accept, read_hello, welcome_frames

# dispatch.py's fit functions travel by value: the workers cannot import the benchmarks folder
cloudpickle.register_pickle_by_value(dispatch)

TRANSPORTS = ("plain TCP", "CurveZMQ TCP")
WINDOW = 8  # BLOB_GETs outstanding, as worker/fetch.py's BlobFetcher asks
DIGEST = "ab" * 32
DISPATCHER = "bench-dispatcher"


def _reports(n: int) -> ReportBatch:
    """A REPORTS batch as a trial's ``report_intermediate_result({"default": x, "step": i})`` makes."""
    return ReportBatch(
        [
            Report("trial-0123456789abcdef", 1, i + 1, False, pack_metric({"default": 0.5 + i, "step": i}))
            for i in range(n)
        ]
    )


MESSAGES: dict[str, tuple[MsgType, Any]] = {
    "HEARTBEAT": (MsgType.HEARTBEAT, Heartbeat(12345)),
    "REPORTS x1": (MsgType.REPORTS, _reports(1)),
    "REPORTS x64": (MsgType.REPORTS, _reports(64)),
}

# ---- the dispatcher's side, in a child process ----


def _handshake(router: zmq.Socket[bytes], cluster_key: bytes) -> tuple[bytes, Session]:
    """Answer the worker's HELLO as the dispatcher does: derive its credential's key, check, WELCOME."""
    identity, *frames = router.recv_multipart()
    greeting = read_hello(frames)
    hello = greeting.hello
    key = derive_key(cluster_key, hello.role, hello.credential, hello.issued)
    if not greeting.verify(key):
        raise RuntimeError("the benchmark's HELLO did not verify")
    session, nonce = accept(greeting, key, DISPATCHER)
    welcome = Welcome(1.0, 5, DISPATCHER, nonce=nonce)
    router.send_multipart([identity, *welcome_frames(greeting, key, DISPATCHER, welcome)])
    return identity, session


def serve(conn: Connection, cluster_key: bytes, secret_file: str | None) -> None:
    """The dispatcher: a ROUTER (Curve server when ``secret_file``); each command from ``conn`` is a mode
    ("echo", "sink" or "blob") run until the worker's BYE, answered with this process's CPU seconds."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    if secret_file is not None:
        secure_server(router, Path(secret_file))
    conn.send(router.bind_to_random_port("tcp://127.0.0.1"))
    identity, session = _handshake(router, cluster_key)
    chunk = os.urandom(CHUNK)
    try:
        while (mode := conn.recv()) is not None:
            cpu = time.process_time()
            while True:
                _, *frames = router.recv_multipart()
                message = session.parse(frames)
                if message.type is MsgType.BYE:
                    break
                if mode == "echo":
                    router.send_multipart([identity, *session.frames(message.type, message.body)])
                elif mode == "blob":
                    req: BlobRequest = message.body
                    body = FileChunk(req.digest, req.offset, chunk[: req.length], False)
                    router.send_multipart(
                        [identity, *session.frames(MsgType.BLOB_DATA, body, trial=req.digest)]
                    )
            if mode == "sink":  # tell the worker the last one was checked
                router.send_multipart([identity, *session.frames(MsgType.HEARTBEAT, Heartbeat())])
            conn.send(time.process_time() - cpu)
    finally:
        ctx.destroy()


# ---- the worker's side, in this process ----


@dataclass
class Sample:
    """One case on one transport in one round."""

    rate: float  # per second: round trips, messages or MB
    cpu_worker: float  # CPU seconds per unit (message or MB) in this process
    cpu_dispatcher: float  # and in the dispatcher's


class Link:
    """A worker DEALER with an open session to a dispatcher child process, on one transport."""

    def __init__(self, curve: bool, cluster_key: bytes, home: Path) -> None:
        public, secret = server_certificate(home) if curve else (None, None)
        context = multiprocessing.get_context("spawn")  # no zmq context or thread of ours is inherited
        self.conn, child_conn = context.Pipe()
        self.proc = context.Process(target=serve, args=(child_conn, cluster_key, secret and str(secret)))
        self.proc.start()
        if not self.conn.poll(60):
            raise TimeoutError("the dispatcher process did not start within 60s")
        port = self.conn.recv()
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if public is not None:
            secure_client(self.sock, public)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        credential: Credential = issue(cluster_key, Role.WORKER, "bench-worker")
        opening = Opening(credential, "bench-worker")
        self.sock.send_multipart(opening.hello_frames(Hello(Role.WORKER, "bench-worker")))
        if not self.sock.poll(30_000):
            raise TimeoutError("no WELCOME within 30s")
        self.session = opening.session(opening.answer(self.sock.recv_multipart()).body)
        for kind in MESSAGES:  # first messages (connection buffers, code paths) are not measured
            self.round_trips(kind, 0.05)
        self.blob(0.05)

    def _recv(self) -> Any:
        return self.session.parse(self.sock.recv_multipart())

    def _finish(self, mode: str, cpu: float) -> tuple[float, float]:
        """Send BYE (and, for a sink, wait until all was checked): (this process's CPU, the dispatcher's)."""
        self.sock.send_multipart(self.session.frames(MsgType.BYE))
        if mode == "sink":
            self._recv()
        mine = time.process_time() - cpu
        return mine, self.conn.recv()

    def round_trips(self, kind: str, duration: float) -> Sample:
        type_, body = MESSAGES[kind]
        self.conn.send("echo")
        n, cpu, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < duration:
            self.sock.send_multipart(self.session.frames(type_, body))
            self._recv()
            n += 1
        elapsed = time.perf_counter() - start
        mine, theirs = self._finish("echo", cpu)
        return Sample(n / elapsed, mine / n, theirs / n)

    def one_way(self, kind: str, duration: float) -> Sample:
        type_, body = MESSAGES[kind]
        self.conn.send("sink")
        n, cpu, start = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - start < duration:
            self.sock.send_multipart(self.session.frames(type_, body))
            n += 1
        mine, theirs = self._finish("sink", cpu)  # the clock stops once the last one was checked
        elapsed = time.perf_counter() - start
        return Sample(n / elapsed, mine / n, theirs / n)

    def blob(self, duration: float) -> Sample:
        """Pull 1 MiB chunks, WINDOW requests outstanding, until ``duration`` has passed."""
        self.conn.send("blob")
        offset, received, cpu, start = 0, 0, time.process_time(), time.perf_counter()

        def ask() -> None:
            nonlocal offset
            request = BlobRequest(DIGEST, offset, CHUNK)
            self.sock.send_multipart(self.session.frames(MsgType.BLOB_GET, request, trial=DIGEST))
            offset += CHUNK

        for _ in range(WINDOW):
            ask()
        while True:
            chunk: FileChunk = self._recv().body
            assert len(chunk.data) == CHUNK
            received += 1
            if time.perf_counter() - start < duration:
                ask()
            elif received * CHUNK == offset:
                break
        elapsed = time.perf_counter() - start
        mine, theirs = self._finish("blob", cpu)
        mb = received * CHUNK / 1e6
        return Sample(mb / elapsed, mine / mb, theirs / mb)

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.ctx.destroy()


# ---- (c) end to end ----


@dataclass
class TrialSample:
    rate: float  # no-op trials/s, all at once
    cpu: CpuSplit  # per trial
    p50: float  # one at a time, seconds


def run_clusters(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, list[TrialSample]]:
    """Both clusters up at once; each round runs the same phases on plain, then on Curve."""
    results: dict[str, list[TrialSample]] = {t: [] for t in TRANSPORTS}
    noop = retia.FunctionalEvaluator(dispatch.noop_fit)
    with (
        local_cluster(workers=args.workers) as plain,
        local_cluster(workers=args.workers, curve=True) as curve,
    ):
        backends = dict(zip(TRANSPORTS, (plain, curve)))
        hubs = {}
        for name, backend in backends.items():
            key = backend.cluster.curve_server_key if backend.cluster is not None else None
            if (key is not None and key.exists()) != (name != TRANSPORTS[0]):  # its dispatcher made one
                raise RuntimeError(f"the {name} cluster is not what it says (Curve certificate: {key})")
            hubs[name] = hub = dispatch.EventHub()
            backend.add_listener(hub)
            dispatch.wait_for_workers(backend, args.workers)
            dispatch.warm_up(backend, hub, args.workers)
        log(f"clusters of {args.workers} workers ready and warm")
        for i in range(args.rounds):
            for name, backend in backends.items():
                log(
                    f"round {i + 1}/{args.rounds}, {name}: {args.trials} no-op trials at once, "
                    f"{args.sequential} one at a time"
                )
                meter = CpuMeter(backend)
                before = meter.snapshot()
                bulk = dispatch.retia_bulk(backend, hubs[name], noop, args.trials)
                cpu = CpuMeter.per_trial(before, meter.snapshot(), args.trials)
                sequential = dispatch.retia_sequential(backend, hubs[name], noop, args.sequential)
                if bulk.lost or sequential.lost:
                    log(f"[red]{name}: {bulk.lost + sequential.lost} trial(s) did not succeed[/red]")
                results[name].append(TrialSample(bulk.rate or float("nan"), cpu, sequential.p50))
    return results


# ---- the table ----


@dataclass
class Row:
    """One measurement: each transport's value per round; ``fmt`` writes one value."""

    name: str
    values: dict[str, list[float]] = field(default_factory=lambda: {t: [] for t in TRANSPORTS})
    fmt: Callable[[float], str] = lambda v: f"{v:,.0f}"

    def add(self, transport: str, value: float) -> None:
        self.values[transport].append(value)

    def cell(self, transport: str) -> str:
        values = self.values[transport]
        median = statistics.median(values)
        if len(values) == 1:
            return self.fmt(median)
        return f"{self.fmt(median)} ({self.fmt(min(values))}-{self.fmt(max(values))})"

    def ratio(self) -> str:
        """Curve over plain, round by round (paired): the median and the spread."""
        plain, curve = (self.values[t] for t in TRANSPORTS)
        ratios = sorted(c / p for p, c in zip(plain, curve) if p)
        if not ratios:
            return "-"
        median = statistics.median(ratios)
        return f"{median:.2f}x" + (f" ({ratios[0]:.2f}-{ratios[-1]:.2f})" if len(ratios) > 1 else "")


def per_second(unit: str) -> Callable[[float], str]:
    return lambda v: f"{v:,.0f} {unit}/s"


def micros(v: float) -> str:
    return f"{v * 1e6:,.1f} us"


def millis(v: float) -> str:
    return f"{v * 1e3:,.2f} ms"


def build_table(rows: list[Row | str], args: argparse.Namespace) -> Table:
    table = Table(title=f"CurveZMQ vs plain TCP on 127.0.0.1 (median of {args.rounds} rounds, min-max)")
    table.add_column("Measurement")
    for transport in TRANSPORTS:
        table.add_column(transport, justify="right")
    table.add_column("Curve / plain", justify="right")
    for row in rows:
        if isinstance(row, str):
            table.add_row(f"[bold]{row}[/bold]")
        else:
            table.add_row(row.name, *(row.cell(t) for t in TRANSPORTS), row.ratio())
    return table


def measure(args: argparse.Namespace, log: Callable[[str], None]) -> list[Row | str]:
    cluster_key = secrets.token_hex(32).encode()
    per_message: dict[str, tuple[Row, Row, Row, Row]] = {
        kind: (
            Row(f"  {kind}: round trips", fmt=per_second("rt")),
            Row(f"  {kind}: one way", fmt=per_second("msg")),
            Row(f"  {kind}: one way, CPU per message, worker (sends)", fmt=micros),
            Row(f"  {kind}: one way, CPU per message, dispatcher (checks)", fmt=micros),
        )
        for kind in MESSAGES
    }
    mb_rate = Row("  throughput", fmt=per_second("MB"))
    mb_sender = Row("  CPU per MB, dispatcher (signs, sends)", fmt=millis)
    mb_receiver = Row("  CPU per MB, worker (receives, checks)", fmt=millis)
    with tempfile.TemporaryDirectory(prefix="retia-curvebench-") as home:
        for i in range(args.rounds):
            for transport in TRANSPORTS:
                log(f"round {i + 1}/{args.rounds}, {transport}: messages, then 1 MiB chunks")
                link = Link(transport != TRANSPORTS[0], cluster_key, Path(home))
                try:
                    for kind, (rt, ow, cpu_w, cpu_d) in per_message.items():
                        rt.add(transport, link.round_trips(kind, args.duration).rate)
                        sample = link.one_way(kind, args.duration)
                        ow.add(transport, sample.rate)
                        cpu_w.add(transport, sample.cpu_worker)
                        cpu_d.add(transport, sample.cpu_dispatcher)
                    sample = link.blob(args.duration)
                    mb_rate.add(transport, sample.rate)
                    mb_sender.add(transport, sample.cpu_dispatcher)
                    mb_receiver.add(transport, sample.cpu_worker)
                finally:
                    link.close()
    rows: list[Row | str] = ["(a) per message, signed and checked by a retia Session"]
    for group in per_message.values():
        rows += group
    rows += [
        f"(b) per MB: 1 MiB BLOB_DATA chunks, {WINDOW} requests outstanding",
        mb_rate,
        mb_sender,
        mb_receiver,
    ]
    if args.cluster:
        results = run_clusters(args, log)
        bulk = Row(f"  all {args.trials} at once: throughput", fmt=per_second("trials"))
        cpu = Row("  all at once: CPU per trial, whole cluster", fmt=millis)
        cpu_d = Row("  all at once: CPU per trial, dispatcher", fmt=millis)
        seq = Row(f"  one at a time ({args.sequential}): latency p50", fmt=millis)
        for transport, samples in results.items():
            for s in samples:
                bulk.add(transport, s.rate)
                cpu.add(transport, s.cpu.client + s.cpu.dispatcher + s.cpu.agents + s.cpu.trials)
                cpu_d.add(transport, s.cpu.dispatcher)
                seq.add(transport, s.p50)
        rows += [f"(c) no-op trials on a local_cluster ({args.workers} workers)", bulk, cpu, cpu_d, seq]
    return rows


# ---- entry point ----


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--duration",
        type=float,
        default=1.0,
        help="seconds per case, transport and round (default %(default)s)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every case (default %(default)s)")
    parser.add_argument(
        "--trials", type=int, default=300, help="no-op trials at once per round (default %(default)s)"
    )
    parser.add_argument(
        "--sequential",
        type=int,
        default=30,
        help="no-op trials one at a time per round (default %(default)s)",
    )
    parser.add_argument("--workers", type=int, default=2, help="workers per cluster (default %(default)s)")
    parser.add_argument(
        "--no-cluster", dest="cluster", action="store_false", help="skip (c), the two local clusters"
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke test")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.rounds, args.trials, args.sequential = 0.1, 1, 10, 3
    return args


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: how busy the shared machine was."""
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=max(Console().width, 140))

    def log(text: str) -> None:
        console.print(f"[dim]{time.strftime('%H:%M:%S')} {text}[/dim]")

    log(
        f"{platform.node()} python {platform.python_version()}, pyzmq {zmq.__version__}, libzmq "
        f"{zmq.zmq_version()}, {multiprocessing.cpu_count()} cores, load {load_average()}"
    )
    table = build_table(measure(args, log), args)
    console.print(table)
    console.print(
        f"{datetime.datetime.now().isoformat(timespec='seconds')}  {' '.join(sys.argv)}  "
        f"(load average after: {load_average()})"
    )
    if args.markdown:
        print(to_markdown(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
