"""``local_cluster``: a private dispatcher and N workers on this machine, over the real code path."""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from retia.children import die_with_parent, exit_status
from retia.credentials import Role, issue
from retia.devices import visible_gpus
from retia.errors import ClusterLostError, DispatcherLostError, RetiaError
from retia.keys import create_key_file, load_key

from .backend import Backend, connect

__all__ = ["LocalCluster", "local_cluster", "detect_gpus"]

_log = logging.getLogger(__name__)
_WATCH_INTERVAL = 0.2  # how often local_cluster looks at its processes


def detect_gpus() -> list[str]:
    """GPU indices visible to this machine, without importing torch (:func:`retia.devices.visible_gpus`)."""
    return visible_gpus()


@dataclass
class LocalCluster:
    """The processes of a local cluster; tests use it to kill, stop and restart them for real."""

    home: Path
    workers: int
    gpus: Sequence[str] = ()
    heartbeat_interval: float = 1.0
    liveness: int = 5
    journal: str | None = None
    worker_args: Sequence[str] = ()
    dispatcher_args: Sequence[str] = ()
    curve: bool = False
    address: str = ""
    dispatcher: subprocess.Popen[bytes] | None = None
    worker_procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _logs: list[IO[bytes]] = field(default_factory=list)
    _restarting: bool = False  # kill_dispatcher was called: start_dispatcher is expected, not a crash
    _watching: threading.Event | None = None  # set to stop the watch
    _watcher: threading.Thread | None = None

    @property
    def key_file(self) -> Path:
        return self.home / "cluster.key"

    def credential_file(self, role: Role) -> Path:
        """The credential this cluster's workers (or its client) use, issued at start."""
        return self.home / "credentials" / f"{role.value}.json"

    @property
    def curve_server_key(self) -> Path | None:
        """The dispatcher's public CurveZMQ certificate, when the cluster encrypts its transport."""
        return self.home / "curve" / "dispatcher.key" if self.curve else None

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        key = load_key(self.key_file) if self.key_file.exists() else create_key_file(self.key_file)
        for role in (Role.WORKER, Role.CLIENT):  # the cluster key stays here: peers hold these
            issue(key, role, f"local-{role.value}s").save(self.credential_file(role), overwrite=True)
        self.start_dispatcher()
        for i in range(self.workers):
            self.start_worker(i)

    def start_dispatcher(self, bind: str | None = None) -> None:
        """Start (or restart, on the same journal and address) the dispatcher process."""
        ready = self.home / "dispatcher.address"
        ready.unlink(missing_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "retia.dispatcher",
            "--bind",
            bind or self.address or "tcp://127.0.0.1:*",
            "--home",
            str(self.home),
            "--ready-file",
            str(ready),
            "--heartbeat",
            str(self.heartbeat_interval),
            "--liveness",
            str(self.liveness),
        ]
        if self.journal:
            cmd += ["--journal", self.journal]
        if self.curve:
            cmd += ["--curve"]
        cmd += list(self.dispatcher_args)
        self.dispatcher = self._spawn(cmd, "dispatcher")
        deadline = time.monotonic() + 30
        while not ready.exists():
            if self.dispatcher.poll() is not None:
                raise RetiaError(
                    f"the dispatcher exited with code {self.dispatcher.returncode}; see {self.home}/logs"
                )
            if time.monotonic() > deadline:
                raise RetiaError(f"the dispatcher did not start within 30s; see {self.home}/logs")
            time.sleep(0.02)
        self.address = ready.read_text().strip()
        self._restarting = False

    def start_worker(self, index: int) -> subprocess.Popen[bytes]:
        gpu = self.gpus[index % len(self.gpus)] if self.gpus else "none"
        cmd = [
            sys.executable,
            "-m",
            "retia.worker",
            "--connect",
            self.address,
            "--credential",
            str(self.credential_file(Role.WORKER)),
            "--gpu",
            gpu,
            "--home",
            str(self.home / f"worker-{index}"),
            "--name",
            f"local-{index}-{os.getpid()}-{time.monotonic_ns() % 10**6}",
            "--workers-per-host",
            str(1 if self.gpus else self.workers),
            "--heartbeat",
            str(self.heartbeat_interval),
            "--liveness",
            str(self.liveness),
            *self.worker_args,
        ]
        if self.curve:
            cmd += ["--curve-server-key", str(self.curve_server_key)]
        proc = self._spawn(cmd, f"worker-{index}")
        if index < len(self.worker_procs):
            self.worker_procs[index] = proc
        else:
            self.worker_procs.append(proc)
        return proc

    def kill_dispatcher(self, sig: int = signal.SIGKILL) -> None:
        """Kill the dispatcher on purpose, to restart it with :meth:`start_dispatcher` (the watch waits)."""
        if self.dispatcher is not None:
            self._restarting = True
            self.dispatcher.send_signal(sig)
            self.dispatcher.wait(timeout=30)

    def watch(self, backend: Backend) -> None:
        """Until :meth:`stop`: if the dispatcher exits, or every worker has exited for a liveness
        window (one killed and started again is no loss), ``backend``'s waits raise a ClusterLostError."""
        stopping = self._watching = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(backend, stopping), name="retia-cluster-watch", daemon=True
        )
        thread.start()
        self._watcher = thread

    def _watch(self, backend: Backend, stopping: threading.Event) -> None:
        grace = self.heartbeat_interval * self.liveness
        workers_gone_at: float | None = None
        reported: ClusterLostError | None = None
        while not stopping.wait(_WATCH_INTERVAL):
            now = time.monotonic()
            workers = list(self.worker_procs)
            if workers and all(p.poll() is not None for p in workers):
                workers_gone_at = workers_gone_at or now
            else:
                workers_gone_at = None
            error: ClusterLostError | None = self._dispatcher_lost()
            if error is None and workers_gone_at is not None and now - workers_gone_at >= grace:
                error = self._workers_lost(workers)
            if (error is None) != (reported is None) and not stopping.is_set():
                if error is not None:
                    _log.error("%s", error)
                backend._set_cluster_error(error)
                reported = error

    def _dispatcher_lost(self) -> DispatcherLostError | None:
        proc = self.dispatcher
        if proc is None or self._restarting or proc.poll() is None:
            return None
        return DispatcherLostError(
            f"the dispatcher of this local cluster (pid {proc.pid}) {exit_status(proc.returncode)}; its log "
            f"is {self.home / 'logs' / 'dispatcher.log'}. No trial can run or report: leave the "
            "local_cluster block and start a new one (with the same home= and journal, what it "
            "acknowledged is kept)."
        )

    def _workers_lost(self, workers: list[subprocess.Popen[bytes]]) -> ClusterLostError:
        statuses = ", ".join(
            f"worker-{i} (pid {p.pid}) {exit_status(p.returncode)}" for i, p in enumerate(workers)
        )
        return ClusterLostError(
            f"every worker of this local cluster has exited: {statuses}; their logs are "
            f"{self.home / 'logs'}/worker-*.log. Queued trials cannot run: fix what the logs say, then "
            "start_worker() again or start a new local_cluster."
        )

    def stop(self, timeout: float = 15.0) -> None:
        if self._watching is not None:
            self._watching.set()  # what stops now is stopped on purpose
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        procs = [p for p in self.worker_procs if p.poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        _wait_all(procs, timeout)
        if self.dispatcher is not None and self.dispatcher.poll() is None:
            self.dispatcher.send_signal(signal.SIGTERM)
            _wait_all([self.dispatcher], timeout)
        for log in self._logs:
            log.close()
        self._logs.clear()

    def _spawn(self, cmd: list[str], name: str) -> subprocess.Popen[bytes]:
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = open(logs / f"{name}.log", "ab")
        self._logs.append(log)
        env = {k: v for k, v in os.environ.items() if k != "RETIA_KEY"}

        def popen() -> subprocess.Popen[bytes]:
            return subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                preexec_fn=die_with_parent,
            )

        # The death signal follows the thread that forked, not the process: a worker or dispatcher
        # started again from a short-lived thread (a test's, a soak's killer) would get SIGTERM when
        # that thread ends. They are all forked from one thread that lives as long as the process.
        return _SPAWNER.submit(popen).result()


_SPAWNER = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="retia-spawn")


def _wait_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            _log.warning("process %d did not stop in time; killing it", proc.pid)
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_cluster(
    workers: int | None = None,
    *,
    home: str | Path | None = None,
    gpus: Sequence[str] | None = None,
    heartbeat_interval: float = 1.0,
    liveness: int = 5,
    journal: str | None = None,
    worker_args: Sequence[str] = (),
    dispatcher_args: Sequence[str] = (),
    client_id: str | None = None,
    curve: bool = False,
    lost_after: float | None = 60.0,
) -> Iterator[Backend]:
    """Start a dispatcher and ``workers`` local workers (default: one per GPU, else 2); yield a Backend.

    Everything started is stopped on exit. ``home`` keeps the key, journal, logs and artefacts
    (a temporary directory, removed afterwards, when not given). If the dispatcher exits, or every
    worker does, waits on the backend raise a ClusterLostError instead of waiting forever
    (``lost_after`` as for ``connect``).
    """
    gpu_list = list(gpus) if gpus is not None else detect_gpus()
    count = workers if workers is not None else (len(gpu_list) or 2)
    if count < 1:
        raise RetiaError(f"local_cluster needs at least one worker (got {count})")
    tmp: str | None = None
    if home is None:
        home = tmp = tempfile.mkdtemp(prefix="retia-cluster-")
    cluster = LocalCluster(
        Path(home).resolve(),
        count,
        gpu_list,
        heartbeat_interval,
        liveness,
        journal,
        tuple(worker_args),
        tuple(dispatcher_args),
        curve,
    )
    backend: Backend | None = None
    try:
        cluster.start()
        backend = connect(
            cluster.address,
            credential=cluster.credential_file(Role.CLIENT),
            client_id=client_id,
            heartbeat_interval=heartbeat_interval,
            liveness=liveness,
            curve_server_key=cluster.curve_server_key,
            lost_after=lost_after,
        )
        backend.cluster = cluster
        cluster.watch(backend)
        yield backend
    finally:
        if backend is not None:
            backend.close()
        cluster.stop()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
