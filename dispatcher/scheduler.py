"""Which trial goes to which worker: the queue, the free workers, and held trials asked back.

Pure bookkeeping over :class:`~retia.dispatcher.peers.Worker` records, no sockets and no journal,
so every rule is unit-tested on its own. The service asks it for placements once per loop turn
and sends what it says.

Rules: queued trials go first to idle workers (the longest idle first), then round-robin to the
free slots of busy workers that hold trials (``--prefetch``); a worker holds at most ``slots``
trials. When workers idle while the queue is empty and others hold trials they have not
started, some of those are asked back, each the last one of the longest line.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from .peers import Worker

__all__ = ["Scheduler", "Assignment"]


@dataclass(frozen=True)
class Assignment:
    """A trial and a worker: to run or hold it (a placement), or to give it back (a recall)."""

    worker: Worker
    trial: str


class Scheduler:
    def __init__(self) -> None:
        self.queue: deque[str] = deque()  # trial ids, the next first
        self.idle: deque[bytes] = deque()  # workers holding nothing
        self.free_slots: deque[bytes] = deque()  # busy workers with room for one more (one entry each)
        self._recalled: set[str] = set()  # held trials asked back, not answered yet
        self._rebalance_due = False

    # ---- the queue ----

    def enqueue(self, trial: str, *, front: bool = False) -> None:
        """Queue a trial; ``front`` for one that ran already (lost or given back), so it keeps its turn."""
        if front:
            self.queue.appendleft(trial)
        else:
            self.queue.append(trial)

    def dequeue(self, trial: str) -> None:
        """Take a queued trial out (cancelled before it started)."""
        self.queue.remove(trial)

    @property
    def can_place(self) -> bool:
        """A queued trial and a worker with room for it (the loop then makes its turn short)."""
        return bool(self.queue) and bool(self.idle or self.free_slots)

    # ---- workers ----

    def became_idle(self, worker: Worker) -> None:
        if worker.identity not in self.idle:
            self.idle.append(worker.identity)
        self._rebalance_due = True

    def freed_slot(self, worker: Worker) -> None:
        """A busy worker may take one more; one entry per worker, so slots fill round-robin."""
        if worker.load < worker.slots and worker.identity not in self.free_slots:
            self.free_slots.append(worker.identity)

    def worker_done(self, worker: Worker) -> None:
        """One of its trials ended: it is idle, or the next it holds starts now and a slot is free."""
        if not worker.load:
            self.became_idle(worker)
        else:
            self.freed_slot(worker)

    def forget(self, worker: Worker) -> None:
        """The worker is gone (its trials are re-queued by the caller)."""
        if worker.identity in self.idle:
            self.idle.remove(worker.identity)

    # ---- decisions ----

    def placements(self, workers: Mapping[bytes, Worker]) -> list[Assignment]:
        """Queued trials for workers with room, in order; each trial is added to its worker's list."""
        placed: list[Assignment] = []
        passed: list[tuple[deque[bytes], bytes]] = []  # workers still stopping the next trial's last attempt
        while self.queue and (self.idle or self.free_slots):
            source = self.idle or self.free_slots
            identity = source.popleft()
            worker = workers.get(identity)
            if worker is None or worker.load >= worker.slots:
                continue  # gone, or filled since it was queued here
            if worker.stops(self.queue[0]):
                passed.append((source, identity))
                continue
            trial = self.queue.popleft()
            worker.trials.append(trial)
            self.freed_slot(worker)
            placed.append(Assignment(worker, trial))
            for passed_source, passed_identity in reversed(passed):  # they may take the trials after it
                passed_source.appendleft(passed_identity)
            passed = []
        for passed_source, passed_identity in reversed(passed):
            passed_source.appendleft(passed_identity)
        return placed

    def recalls(self, workers: Mapping[bytes, Worker]) -> list[Assignment]:
        """Held, unstarted trials to ask back for idle workers (once per change in who idles)."""
        if not self._rebalance_due:
            return []
        self._rebalance_due = False
        if self.queue or not self.idle:
            return []
        holders = [w for w in workers.values() if len(w.trials) > 1]
        self._recalled &= {t for w in holders for t in w.trials[1:]}  # forget those answered or gone
        return _pick_recalls(holders, self._recalled, len(self.idle) - len(self._recalled))


def _pick_recalls(holders: list[Worker], recalled: set[str], count: int) -> list[Assignment]:
    """Up to ``count`` held trials to ask back for idle workers, each the last one of the longest line.

    ``recalled`` (trials already asked for) is updated with the picks."""
    picks: list[Assignment] = []
    for _ in range(count):
        candidates = [(len(w.trials), w, t) for w in holders for t in w.trials[1:] if t not in recalled]
        if not candidates:
            break
        _n, donor, trial = max(reversed(candidates), key=lambda c: c[0])
        recalled.add(trial)
        picks.append(Assignment(donor, trial))
    return picks
