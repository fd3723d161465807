"""The client's settings, like the dispatcher's and the worker's: one frozen dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from retia.errors import ConfigError
from retia.peer import PeerTiming
from retia.protocol import id_problem

__all__ = ["ClientConfig"]


@dataclass(frozen=True)
class ClientConfig:
    """Which dispatcher, who we are to it, and how patient we are with it."""

    address: str
    client_id: str
    timing: PeerTiming = field(default_factory=PeerTiming)
    curve_server_key: str | Path | None = None  # the dispatcher's public CurveZMQ certificate
    # seconds of silence from the dispatcher before waits raise DispatcherLostError (None: wait forever)
    lost_after: float | None = 60.0

    def __post_init__(self) -> None:
        problems = []
        if "://" not in self.address:
            problems.append(f"address must be a ZeroMQ endpoint like tcp://head:5555 (got {self.address!r})")
        if problem := id_problem(self.client_id, "client_id"):
            problems.append(problem)
        lost = self.lost_after
        if lost is not None and (
            isinstance(lost, bool) or not isinstance(lost, (int, float)) or not 0 < lost < math.inf
        ):
            problems.append(f"lost_after must be a positive number of seconds or None (got {lost!r})")
        if problems:
            raise ConfigError("invalid client configuration: " + "; ".join(problems))
