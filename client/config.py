"""The client's settings, like the dispatcher's and the worker's: one frozen dataclass."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from retia.errors import ConfigError
from retia.peer import PeerTiming

__all__ = ["ClientConfig"]


@dataclass(frozen=True)
class ClientConfig:
    """Which dispatcher, who we are to it, and how patient we are with it."""

    address: str
    client_id: str
    timing: PeerTiming = field(default_factory=PeerTiming)
    curve_server_key: str | Path | None = None  # the dispatcher's public CurveZMQ certificate

    def __post_init__(self) -> None:
        problems = []
        if "://" not in self.address:
            problems.append(f"address must be a ZeroMQ endpoint like tcp://head:5555 (got {self.address!r})")
        if not self.client_id:
            problems.append("client_id must not be empty")
        if problems:
            raise ConfigError("invalid client configuration: " + "; ".join(problems))
