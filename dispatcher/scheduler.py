"""Which trial goes to which worker: the queue, the free workers, and held trials asked back.

Pure bookkeeping over :class:`~retia.dispatcher.peers.Worker` records, no sockets and no journal,
so every rule is unit-tested on its own. The service asks it for placements once per loop turn
and sends what it says.

Rules: queued trials go first to idle workers (the longest idle first), then round-robin to the
free slots of busy workers that hold trials (``--prefetch``); a worker holds at most ``slots``
trials. When workers idle while the queue is empty and others hold trials they have not
started, some of those are asked back, each the last one of the longest line.

A trial that may pack (``pack`` > 1) takes the queued trials of its pack key after it, up to its
pack size, into its slot: one RUN, one process. While fewer are queued than would fill it, it
waits for more, at most ``pack_wait`` seconds after it was queued; then it goes with what there is.

A trial asking for GPUs (``gpus=N``) goes only to a worker with at least N; a worker takes the
first queued trial it can run, so one waiting for a bigger worker holds up none of the others.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from .peers import Worker

__all__ = ["Scheduler", "Assignment"]


@dataclass(frozen=True)
class Assignment:
    """A trial and a worker: to run or hold it (a placement, with the ``mates`` packed with it), or
    to give it back (a recall)."""

    worker: Worker
    trial: str
    mates: list[str] = field(default_factory=list)


def _alone(trial: str) -> tuple[str, int]:
    return "", 1


def _anywhere(trial: str) -> int:
    return 0


class Scheduler:
    def __init__(
        self,
        packing: Callable[[str], tuple[str, int]] = _alone,
        pack_wait: float = 0.1,
        needs: Callable[[str], int] = _anywhere,
    ) -> None:
        """``packing(trial)``: its pack key and pack size (1: it runs alone); ``needs(trial)``: the
        GPUs its worker must have (0: any worker)."""
        self.packing = packing
        self.pack_wait = pack_wait
        self.needs = needs
        self._queued_at: dict[str, float] = {}  # trials that may pack: when they were queued
        self._needing: dict[str, int] = {}  # queued trials that ask for GPUs: how many
        self.queue: deque[str] = deque()  # trial ids, the next first
        self.idle: deque[bytes] = deque()  # workers holding nothing
        self.free_slots: deque[bytes] = deque()  # busy workers with room for one more (one entry each)
        self._recalled: set[str] = set()  # held trials asked back, not answered yet
        self._rebalance_due = False

    # ---- the queue ----

    def enqueue(self, trial: str, *, front: bool = False) -> None:
        """Queue a trial; ``front`` for one that ran already (lost or given back), so it keeps its turn."""
        if self.packing(trial)[1] > 1:
            self._queued_at[trial] = time.monotonic()
        if gpus := self.needs(trial):
            self._needing[trial] = gpus
        if front:
            self.queue.appendleft(trial)
        else:
            self.queue.append(trial)

    def dequeue(self, trial: str) -> None:
        """Take a queued trial out (cancelled before it started)."""
        self.queue.remove(trial)
        self._queued_at.pop(trial, None)
        self._needing.pop(trial, None)

    def unfit(self, workers: Mapping[bytes, Worker]) -> list[str]:
        """Queued trials asking for more GPUs than any worker has (none while no worker is there)."""
        if not self._needing or not workers:
            return []
        most = max(worker.gpu_count for worker in workers.values())
        return [trial for trial, gpus in self._needing.items() if gpus > most]

    @property
    def can_place(self) -> bool:
        """A queued trial and a worker with room for it (the loop then makes its turn short)."""
        return bool(self.queue) and bool(self.idle or self.free_slots)

    # ---- workers ----

    def became_idle(self, worker: Worker) -> None:
        if worker.blocked:
            return  # (its next plain READY makes it idle)
        if worker.identity not in self.idle:
            self.idle.append(worker.identity)
        self._rebalance_due = True

    def freed_slot(self, worker: Worker) -> None:
        """A busy worker may take one more; one entry per worker, so slots fill round-robin."""
        if not worker.blocked and worker.load < worker.slots and worker.identity not in self.free_slots:
            self.free_slots.append(worker.identity)

    def worker_done(self, worker: Worker) -> None:
        """One of its trials ended: it is idle, or the next it holds starts now and a slot is free."""
        if not worker.load:
            self.became_idle(worker)
        else:
            self.freed_slot(worker)

    def forget(self, worker: Worker) -> None:
        """The worker is gone, or takes no trial for now (its trials are re-queued by the caller)."""
        if worker.identity in self.idle:
            self.idle.remove(worker.identity)
        if worker.identity in self.free_slots:
            self.free_slots.remove(worker.identity)

    # ---- decisions ----

    def placements(self, workers: Mapping[bytes, Worker]) -> list[Assignment]:
        """Queued trials for workers with room, in order; each trial is added to its worker's list."""
        placed: list[Assignment] = []
        passed: list[tuple[deque[bytes], bytes]] = []  # workers still stopping the next trial's last attempt
        while self.queue and (self.idle or self.free_slots):
            source = self.idle or self.free_slots
            identity = source.popleft()
            worker = workers.get(identity)
            if worker is None or worker.blocked or worker.load >= worker.slots:
                continue  # gone, taking no trial for now, or filled since it was queued here
            index = self._first_fit(worker)
            if index is None or worker.stops(self.queue[index]):  # it has too few GPUs for any, or
                passed.append((source, identity))  # it still stops the next one's last attempt
                continue
            mates = self._mates(worker, index)
            if (
                mates is None
            ):  # its pack is filling: it waits (and, the queue being in order, so do those after)
                self._put_back(source, identity, passed)
                return placed
            trial = self.queue[index]
            del self.queue[index]
            for mate in mates:
                self.queue.remove(mate)
                worker.packs[mate] = trial
            for packed in (trial, *mates):
                self._queued_at.pop(packed, None)
                self._needing.pop(packed, None)
            worker.trials += [trial, *mates]
            self.freed_slot(worker)
            placed.append(Assignment(worker, trial, mates))
            for passed_source, passed_identity in reversed(passed):  # they may take the trials after it
                passed_source.appendleft(passed_identity)
            passed = []
        self._put_back(None, b"", passed)
        return placed

    @staticmethod
    def _put_back(
        source: deque[bytes] | None, identity: bytes, passed: list[tuple[deque[bytes], bytes]]
    ) -> None:
        """Workers taken off their lists this turn but given nothing go back to the front, in order."""
        for passed_source, passed_identity in reversed(passed):
            passed_source.appendleft(passed_identity)
        if source is not None:
            source.appendleft(identity)

    def _first_fit(self, worker: Worker) -> int | None:
        """Where in the queue the first trial is that ``worker`` has the GPUs for (None: there is none)."""
        if not self._needing:
            return 0
        for index, trial in enumerate(self.queue):
            if worker.fits(self._needing.get(trial, 0)):
                return index
        return None

    def _mates(self, worker: Worker, index: int) -> list[str] | None:
        """The queued trials that go with the one at ``index`` (none if it runs alone), or None while
        its pack waits to fill (mates share a pack key, the GPUs they ask for among what it holds)."""
        first = self.queue[index]
        key, size = self.packing(first)
        if size <= 1:
            return []
        mates: list[str] = []
        for trial in itertools.islice(self.queue, index + 1, None):  # stops once the pack is full
            if len(mates) == size - 1:
                break
            mate_key, mate_size = self.packing(trial)
            if mate_key == key and mate_size > 1 and not worker.stops(trial):
                mates.append(trial)
        if len(mates) + 1 < size and time.monotonic() < self.wake_at(first):
            return None
        return mates

    def wake_at(self, trial: str | None = None) -> float:
        """When the next trial (or ``trial``) stops waiting for its pack to fill (0: it does not wait)."""
        if trial is None:
            if not self.queue:
                return 0.0
            trial = self.queue[0]
        queued = self._queued_at.get(trial)
        return 0.0 if queued is None else queued + self.pack_wait

    def recalls(self, workers: Mapping[bytes, Worker]) -> list[Assignment]:
        """Held, unstarted trials to ask back for idle workers (once per change in who idles)."""
        if not self._rebalance_due:
            return []
        self._rebalance_due = False
        if self.queue or not self.idle:
            return []
        holders = [w for w in workers.values() if len(w.trials) > 1]
        self._recalled &= {t for w in holders for t in w.held()}  # forget those answered or gone
        return _pick_recalls(holders, self._recalled, len(self.idle) - len(self._recalled))


def _pick_recalls(holders: list[Worker], recalled: set[str], count: int) -> list[Assignment]:
    """Up to ``count`` held trials to ask back for idle workers, each the last one of the longest line.

    ``recalled`` (trials already asked for) is updated with the picks."""
    picks: list[Assignment] = []
    for _ in range(count):
        candidates = [(w.load, w, t) for w in holders for t in w.held() if t not in recalled]
        if not candidates:
            break
        _n, donor, trial = max(reversed(candidates), key=lambda c: c[0])
        recalled.add(trial)
        picks.append(Assignment(donor, trial))
    return picks
