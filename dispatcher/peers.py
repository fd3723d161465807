"""The dispatcher's view of its peers: workers with the trials given to them, and clients."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from retia.protocol import DeviceFacts

__all__ = ["Client", "Worker"]


@dataclass
class Worker:
    id: str
    identity: bytes
    host: str
    gpu: str
    pid: int
    expiry: float
    since: float = field(default_factory=time.time)
    max_message_bytes: int = 8 << 20  # the largest message it accepts (from its HELLO)
    slots: int = 1  # trials it takes at once: the one it runs and the ones it holds (--prefetch)
    # given to it, in order: the first runs, the rest wait there
    trials: list[str] = field(default_factory=list)
    # attempts it still runs that were given up (it came back after being declared lost): told to
    # stop, they hold their slot until their DONE, and the trial is not run there again meanwhile
    stopping: set[tuple[str, int]] = field(default_factory=set)
    packs: dict[str, str] = field(default_factory=dict)  # a pack's mates among ``trials``: -> its first trial
    credential: str = ""  # the credential its session was opened with ("" the cluster key)
    last_trial: str = ""  # the last trial it finished, and what that trial's GPUs did
    last_devices: DeviceFacts | None = None
    blocked: str = ""  # why it takes no trial now (its READY said so); "" when it does

    @property
    def gpu_count(self) -> int:
        """How many GPUs it has: its HELLO's list ("0,1"), or none ("none" or "": a CPU worker)."""
        return 0 if self.gpu in ("", "none") else len(self.gpu.split(","))

    def fits(self, gpus: int) -> bool:
        """It has at least ``gpus`` GPUs (what a trial asking for them needs)."""
        return self.gpu_count >= gpus

    @property
    def trial(self) -> str:
        """The trial it runs ("" when idle)."""
        return self.trials[0] if self.trials else ""

    @property
    def load(self) -> int:
        """Slots taken: the trials given to it (a pack takes one) and the given-up attempts it is stopping."""
        if not self.packs:
            return len(self.trials) + len(self.stopping)
        return len({self.packs.get(t, t) for t in self.trials}) + len(self.stopping)

    @property
    def last_run(self) -> str:
        """The trial of the last RUN it was sent (a pack's is its first trial's)."""
        return self.packs.get(self.trials[-1], self.trials[-1]) if self.trials else ""

    def held(self) -> list[str]:
        """The trials it holds unstarted that it could give back: not the running one, nor a pack's."""
        packed = {*self.packs, *self.packs.values()}
        return [t for t in self.trials[1:] if t not in packed]

    def stops(self, trial: str) -> bool:
        """It is still stopping a given-up attempt of ``trial``."""
        return any(stopped == trial for stopped, _attempt in self.stopping)


@dataclass
class Client:
    id: str
    identity: bytes
    expiry: float
    sees_all: bool = False  # the cluster key: it may cancel any client's trials and count them all
