"""The dispatcher's settings, parsed once at the entry point into a frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from retia.encryption import reachable_from_afar
from retia.errors import ConfigError
from retia.keys import DEFAULT_HOME
from retia.protocol import DEFAULT_MAX_MESSAGE_BYTES

__all__ = ["DispatcherConfig"]


@dataclass(frozen=True)
class DispatcherConfig:
    """Where to listen, where to keep state, and how patient to be with peers."""

    bind: str = "tcp://0.0.0.0:5555"
    home: Path = DEFAULT_HOME
    key_file: Path | None = None  # default: <home>/cluster.key
    journal: Path | None = None  # default: <home>/journal.sqlite; ":memory:" for none
    heartbeat_interval: float = 1.0
    liveness: int = 5  # heartbeats missed before a peer is declared dead
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ready_file: Path | None = None  # written with the bound address once listening
    blob_budget_bytes: int = 20 << 30  # blob store size; unneeded blobs are evicted, oldest first
    curve: bool = False  # encrypt with CurveZMQ even on loopback (certificate in <home>/curve)
    insecure: bool = False  # do not encrypt, even where other machines can connect
    pack_wait: float = 0.1  # seconds a trial that may pack waits for its pack to fill, at most
    # seconds a trial asking for more GPUs than any connected worker has waits for one, then fails
    placement_wait: float = 60.0

    def __post_init__(self) -> None:
        problems = []
        if self.heartbeat_interval <= 0:
            problems.append(f"heartbeat_interval must be > 0 (got {self.heartbeat_interval})")
        if self.liveness < 1:
            problems.append(f"liveness must be >= 1 (got {self.liveness})")
        if self.max_message_bytes < 1024:
            problems.append(f"max_message_bytes must be >= 1024 (got {self.max_message_bytes})")
        if "://" not in self.bind:
            problems.append(f"bind must be a ZeroMQ endpoint like tcp://0.0.0.0:5555 (got {self.bind!r})")
        if not 0 <= self.pack_wait <= 60:
            problems.append(f"pack_wait must be from 0 to 60 seconds (got {self.pack_wait})")
        if not self.placement_wait >= 0:
            problems.append(f"placement_wait must be >= 0 seconds (got {self.placement_wait})")
        if self.curve and self.insecure:
            problems.append("curve and insecure contradict each other: pick one")
        if problems:
            raise ConfigError("invalid dispatcher configuration: " + "; ".join(problems))

    @property
    def encrypted(self) -> bool:
        """CurveZMQ on: asked for, or by default on any endpoint other machines can reach."""
        return self.curve or (not self.insecure and reachable_from_afar(self.bind))

    @property
    def home_dir(self) -> Path:
        return self.home.expanduser()

    @property
    def key_path(self) -> Path:
        return (self.key_file or self.home_dir / "cluster.key").expanduser()

    @property
    def journal_path(self) -> str:
        if self.journal is not None and str(self.journal) == ":memory:":
            return ":memory:"
        return str((self.journal or self.home_dir / "journal.sqlite").expanduser())

    @property
    def artifacts_dir(self) -> Path:
        return self.home_dir / "artifacts"

    @property
    def expiry(self) -> float:
        return self.heartbeat_interval * self.liveness
