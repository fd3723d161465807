"""The dispatcher's view of its peers: workers with the trials given to them, and clients."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

__all__ = ["Client", "Worker", "pick_recalls"]


@dataclass
class Worker:
    id: str
    identity: bytes
    host: str
    gpu: str
    pid: int
    expiry: float
    since: float = field(default_factory=time.time)
    slots: int = 1  # trials it takes at once: the one it runs and the ones it holds (--prefetch)
    trials: list[str] = field(
        default_factory=list
    )  # given to it, in order: the first runs, the rest wait there

    @property
    def trial(self) -> str:
        """The trial it runs ("" when idle)."""
        return self.trials[0] if self.trials else ""


@dataclass
class Client:
    id: str
    identity: bytes
    expiry: float


def pick_recalls(holders: list[Worker], recalled: set[str], count: int) -> list[tuple[Worker, str]]:
    """Up to ``count`` held trials to ask back for idle workers, each the last one of the longest line.

    ``recalled`` (trials already asked for) is updated with the picks."""
    picks: list[tuple[Worker, str]] = []
    for _ in range(count):
        candidates = [(len(w.trials), w, t) for w in holders for t in w.trials[1:] if t not in recalled]
        if not candidates:
            break
        _n, donor, trial = max(reversed(candidates), key=lambda c: c[0])
        recalled.add(trial)
        picks.append((donor, trial))
    return picks
