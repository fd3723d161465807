"""The scheduler's packing rules on plain worker records (issue 21): a pack fills from the queued
trials of its key, in queue order, takes one slot, waits at most ``pack_wait`` to fill, and is
never asked back; no sockets, no journal."""

from __future__ import annotations

import time

from retia.dispatcher.peers import Worker
from retia.dispatcher.scheduler import Assignment, Scheduler

from .test_scheduler import _pool, _worker

# trial -> (pack key, pack size): "a*" and "b*" pack in fours under their letter; "s*" run alone
_KEYS = {"a": ("key-a", 4), "b": ("key-b", 4), "s": ("", 1)}


def _packing(trial: str) -> tuple[str, int]:
    return _KEYS[trial[0]]


def _placed(assignments: list[Assignment]) -> list[tuple[str, str, list[str]]]:
    return [(a.worker.id, a.trial, a.mates) for a in assignments]


def _scheduler(*trials: str, idle: tuple[Worker, ...], pack_wait: float = 60.0) -> Scheduler:
    scheduler = Scheduler(_packing, pack_wait)
    for worker in idle:
        scheduler.became_idle(worker)
    for trial in trials:
        scheduler.enqueue(trial)
    return scheduler


def _done(scheduler: Scheduler, worker: Worker, trial: str) -> None:
    """What the service does on a trial's DONE."""
    worker.trials.remove(trial)
    worker.packs.pop(trial, None)
    scheduler.worker_done(worker)


def test_a_pack_takes_the_queued_trials_of_its_key_only_in_queue_order() -> None:
    worker, other = _worker("w"), _worker("other")
    scheduler = _scheduler("a1", "b1", "a2", "s1", "a3", "a4", "a5", idle=(worker, other))
    placed = scheduler.placements(_pool(worker, other))
    # b1's pack waits to fill (and the queue behind it): the other worker gets nothing yet
    assert _placed(placed) == [("w", "a1", ["a2", "a3", "a4"])]
    assert list(scheduler.queue) == ["b1", "s1", "a5"]
    assert worker.trials == ["a1", "a2", "a3", "a4"]
    assert worker.packs == {"a2": "a1", "a3": "a1", "a4": "a1"}


def test_a_pack_takes_one_slot_until_its_last_trial_ends() -> None:
    worker = _worker("w", slots=2)
    scheduler = _scheduler("a1", "a2", "a3", "a4", "s1", "s2", idle=(worker,))
    placed = scheduler.placements(_pool(worker))
    assert _placed(placed) == [("w", "a1", ["a2", "a3", "a4"]), ("w", "s1", [])]  # the pack, and one more
    assert worker.load == 2 and list(scheduler.queue) == ["s2"] and not scheduler.can_place
    _done(scheduler, worker, "a1")  # the pack's first trial ends before its mates: the pack goes on
    assert worker.load == 2 and scheduler.placements(_pool(worker)) == []
    for mate in ("a2", "a3"):
        _done(scheduler, worker, mate)
        assert worker.load == 2 and scheduler.placements(_pool(worker)) == []
    _done(scheduler, worker, "a4")  # its last: the slot is free
    assert worker.load == 1
    assert _placed(scheduler.placements(_pool(worker))) == [("w", "s2", [])]


def test_a_lone_packable_trial_waits_at_most_pack_wait_then_goes_alone() -> None:
    worker = _worker("w")
    scheduler = _scheduler("a1", "s1", idle=(worker,), pack_wait=60.0)
    queued = time.monotonic()
    assert scheduler.placements(_pool(worker)) == []  # its pack may fill: it waits, and the queue with it
    assert list(scheduler.queue) == ["a1", "s1"] and list(scheduler.idle) == [b"w"]
    assert queued - 1 < scheduler.wake_at() - 60.0 <= queued  # the service's loop wakes then

    short = _scheduler("a1", "s1", idle=(worker,), pack_wait=0.02)
    while time.monotonic() <= short.wake_at():
        time.sleep(0.005)
    assert _placed(short.placements(_pool(worker))) == [("w", "a1", [])]  # alone, after its wait
    assert worker.packs == {} and worker.load == 1 and list(short.queue) == ["s1"]
    assert short.wake_at() == 0.0  # the lone trial behind it does not wait


def test_a_full_pack_does_not_wait() -> None:
    worker = _worker("w")
    scheduler = _scheduler("a1", "a2", "a3", "a4", idle=(worker,), pack_wait=60.0)
    assert _placed(scheduler.placements(_pool(worker))) == [("w", "a1", ["a2", "a3", "a4"])]


def test_a_packs_trials_are_never_asked_back_and_a_held_one_behind_it_is() -> None:
    holder, idle = _worker("holder", slots=3), _worker("idle")
    scheduler = _scheduler("a1", "a2", "a3", "a4", idle=(holder,))
    scheduler.placements(_pool(holder))
    scheduler.became_idle(idle)
    assert scheduler.recalls(_pool(holder, idle)) == []  # the pack runs in one process: nothing to give
    assert holder.held() == []

    scheduler.enqueue("s1")
    scheduler.enqueue("s2")
    scheduler.freed_slot(holder)
    scheduler.idle.remove(idle.identity)
    assert [a.trial for a in scheduler.placements(_pool(holder))] == ["s1", "s2"]
    scheduler.became_idle(idle)
    assert [(a.worker.id, a.trial) for a in scheduler.recalls(_pool(holder, idle))] == [("holder", "s2")]
    assert holder.held() == ["s1", "s2"]


def test_a_packs_last_run_is_its_first_trial_while_any_of_it_runs() -> None:
    worker = _worker("w")
    scheduler = _scheduler("a1", "a2", "a3", idle=(worker,), pack_wait=0.0)
    scheduler.placements(_pool(worker))
    assert worker.trials == ["a1", "a2", "a3"] and worker.last_run == "a1"  # what the agent's READY names
    _done(scheduler, worker, "a1")
    assert worker.last_run == "a1"  # its mates run on in the RUN of a1
    _done(scheduler, worker, "a3")
    assert worker.last_run == "a1"
    _done(scheduler, worker, "a2")
    assert worker.last_run == "" and list(scheduler.idle) == [b"w"]
