"""The worker agent's settings, parsed once at the entry point into a frozen dataclass."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

from retia.errors import ConfigError
from retia.keys import DEFAULT_HOME
from retia.peer import PeerTiming
from retia.protocol import DEFAULT_MAX_MESSAGE_BYTES, MAX_PREFETCH

from .isolation import TrialUser, trial_user

__all__ = ["WorkerConfig", "DEFAULT_PRELOAD"]

# the fork server imports these once (a trial forks with them loaded): retia.lightning and
# retia.packing are what every Lightning trial and every pack imports
DEFAULT_PRELOAD = (
    "retia.worker.runner",
    "retia.serializer",
    "torch",
    "pytorch_lightning",
    "retia.lightning",
    "retia.packing",
)


@dataclass(frozen=True)
class WorkerConfig:
    """Where the dispatcher is, which GPU this worker owns, and how it supervises trials."""

    connect: str
    gpu: str = "none"  # a CUDA device index, or "none" for CPU
    home: Path = DEFAULT_HOME
    key_file: Path | None = None
    name: str = ""  # worker id; default host-gpu-pid
    threads: int = 0  # torch threads per trial; 0 = cores / workers_per_host
    workers_per_host: int = 1
    heartbeat_interval: float = 1.0
    liveness: int = 5
    reconnect_min: float = 1.0
    reconnect_max: float = 32.0
    kill_grace: float = 3.0  # seconds between SIGTERM and SIGKILL
    max_artifact_bytes: int = 50 << 20
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    preload: tuple[str, ...] = field(default=DEFAULT_PRELOAD)
    reuse_process: bool = False  # run trials one after another in one long-lived child
    prefetch: int = 0  # trials held beyond the running one: no round trip between short trials
    blob_cache_bytes: int = 20 << 30  # local cache of large arguments, least recently used evicted
    curve_server_key: Path | None = None  # the dispatcher's public CurveZMQ certificate, when it uses Curve
    trial_user: str = ""  # run trials as this user (the agent must be root); "": as the worker's user
    trial_memory_bytes: int = 0  # what a trial process may allocate beyond the fork server's (0: no cap)
    gpu_memory_fraction: float = 1.0  # the share of its GPU(s) a trial may allocate (--trials-per-gpu)
    gpu_release_wait: float = 10.0  # seconds a GPU may stay above its idle level after a trial

    def __post_init__(self) -> None:
        problems = []
        if self.gpu != "none" and not all(part.strip().isdigit() for part in self.gpu.split(",")):
            problems.append(f"gpu must be a device index like 0 (or 0,1) or 'none' (got {self.gpu!r})")
        if self.workers_per_host < 1:
            problems.append(f"workers_per_host must be >= 1 (got {self.workers_per_host})")
        if self.trial_memory_bytes < 0:
            problems.append(f"trial_memory_bytes must be >= 0 (got {self.trial_memory_bytes})")
        if not 0 < self.gpu_memory_fraction <= 1:
            problems.append(f"gpu_memory_fraction must be in (0, 1] (got {self.gpu_memory_fraction})")
        if not 0 <= self.gpu_release_wait <= 3600:
            problems.append(
                f"gpu_release_wait must be between 0 and 3600 seconds (got {self.gpu_release_wait})"
            )
        if not 0 <= self.prefetch <= MAX_PREFETCH:
            problems.append(f"prefetch must be between 0 and {MAX_PREFETCH} trials (got {self.prefetch})")
        try:
            self.timing  # noqa: B018 - checks heartbeat, liveness and the reconnect back-off
        except ConfigError as exc:
            problems.append(str(exc).removeprefix("invalid connection timing: "))
        if self.trial_user:
            try:
                self.trial_account  # noqa: B018 - the user exists and this process can become it
            except ConfigError as exc:
                problems.append(str(exc))
        if "://" not in self.connect:
            problems.append(f"connect must be a ZeroMQ endpoint like tcp://head:5555 (got {self.connect!r})")
        if problems:
            raise ConfigError("invalid worker configuration: " + "; ".join(problems))

    @property
    def timing(self) -> PeerTiming:
        """Heartbeats, liveness and back-off, as the connection takes them."""
        return PeerTiming(self.heartbeat_interval, self.liveness, self.reconnect_min, self.reconnect_max)

    @functools.cached_property  # (these are asked for every trial)
    def cuda_visible_devices(self) -> str:
        return "" if self.gpu == "none" else self.gpu

    @functools.cached_property
    def gpu_list(self) -> tuple[str, ...]:
        """Its GPUs' indices, in order (none for a CPU worker)."""
        return tuple(part.strip() for part in self.cuda_visible_devices.split(",") if part.strip())

    def trial_devices(self, gpus: int | None) -> str | None:
        """``CUDA_VISIBLE_DEVICES`` for a trial asking for ``gpus`` (None: all of this worker's; 0:
        none), or None when it asks for more than this worker has."""
        if gpus is None:
            return self.cuda_visible_devices
        if gpus > len(self.gpu_list):
            return None
        return ",".join(self.gpu_list[:gpus])

    @functools.cached_property  # os.cpu_count() reads /sys: once is enough
    def trial_threads(self) -> int:
        if self.threads > 0:
            return self.threads
        return max(1, (os.cpu_count() or 1) // self.workers_per_host)

    @functools.cached_property
    def trial_account(self) -> TrialUser | None:
        """The account trials run as (``trial_user`` looked up once), or None: the worker's own."""
        return trial_user(self.trial_user) if self.trial_user else None

    @functools.cached_property
    def trials_dir(self) -> Path:
        return self.home.expanduser() / "trials"

    @functools.cached_property
    def blobs_dir(self) -> Path:
        return self.home.expanduser() / "blobs"
