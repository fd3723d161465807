"""The scheduler's rules on plain worker records: no sockets, no journal."""

from __future__ import annotations

from retia.dispatcher.peers import Worker
from retia.dispatcher.scheduler import Assignment, Scheduler


def _worker(name: str, slots: int = 1) -> Worker:
    return Worker(name, name.encode(), "host", "none", 1, expiry=0.0, slots=slots)


def _pairs(assignments: list[Assignment]) -> list[tuple[Worker, str]]:
    return [(a.worker, a.trial) for a in assignments]


def _pool(*workers: Worker) -> dict[bytes, Worker]:
    return {w.identity: w for w in workers}


def test_queued_trials_go_to_idle_workers_in_the_order_they_became_idle() -> None:
    a, b = _worker("a"), _worker("b")
    scheduler = Scheduler()
    for worker in (b, a):
        scheduler.became_idle(worker)
    for trial in ("t1", "t2", "t3"):
        scheduler.enqueue(trial)
    placed = scheduler.placements(_pool(a, b))
    assert [(w.id, t) for w, t in _pairs(placed)] == [("b", "t1"), ("a", "t2")]
    assert list(scheduler.queue) == ["t3"] and not scheduler.can_place  # both full: slots 1
    assert (a.trials, b.trials) == (["t2"], ["t1"])


def test_a_worker_that_holds_trials_fills_its_slots_round_robin_after_the_idle_ones() -> None:
    holder, other = _worker("holder", slots=3), _worker("other", slots=2)
    scheduler = Scheduler()
    scheduler.became_idle(holder)
    scheduler.became_idle(other)
    for i in range(6):
        scheduler.enqueue(f"t{i}")
    placed = [(w.id, t) for w, t in _pairs(scheduler.placements(_pool(holder, other)))]
    assert placed == [("holder", "t0"), ("other", "t1"), ("holder", "t2"), ("other", "t3"), ("holder", "t4")]
    assert list(scheduler.queue) == ["t5"]


def test_a_trial_that_ran_already_keeps_its_turn_and_a_cancelled_one_leaves() -> None:
    scheduler = Scheduler()
    for trial in ("t1", "t2", "t3"):
        scheduler.enqueue(trial)
    scheduler.enqueue("lost", front=True)
    scheduler.dequeue("t2")
    assert list(scheduler.queue) == ["lost", "t1", "t3"]


def test_a_gone_worker_is_never_given_a_trial() -> None:
    gone, here = _worker("gone"), _worker("here")
    scheduler = Scheduler()
    scheduler.became_idle(gone)
    scheduler.became_idle(here)
    scheduler.forget(gone)
    scheduler.enqueue("t1")
    assert [(w.id, t) for w, t in _pairs(scheduler.placements(_pool(here)))] == [("here", "t1")]
    stale = Scheduler()
    stale.became_idle(gone)  # still listed, but no longer among the workers
    stale.enqueue("t1")
    assert stale.placements(_pool(here)) == [] and list(stale.queue) == ["t1"]


def test_a_blocked_worker_is_given_nothing_until_it_is_idle_again() -> None:
    blocked, other = _worker("blocked", slots=2), _worker("other")
    scheduler = Scheduler()
    scheduler.became_idle(blocked)
    scheduler.enqueue("t1")
    assert [t for _w, t in _pairs(scheduler.placements(_pool(blocked, other)))] == ["t1"]  # a slot left
    blocked.blocked = "GPU 0 holds memory"  # (its READY said so: the dispatcher forgets its slots)
    scheduler.forget(blocked)
    blocked.trials.clear()  # t1 came back unstarted
    scheduler.worker_done(blocked)
    scheduler.enqueue("t1", front=True)
    assert scheduler.placements(_pool(blocked, other)) == [] and list(scheduler.queue) == ["t1"]
    scheduler.became_idle(other)
    assert [(w.id, t) for w, t in _pairs(scheduler.placements(_pool(blocked, other)))] == [("other", "t1")]
    blocked.blocked = ""  # a plain READY
    scheduler.became_idle(blocked)
    scheduler.enqueue("t2")
    assert [(w.id, t) for w, t in _pairs(scheduler.placements(_pool(blocked, other)))] == [("blocked", "t2")]


def test_a_finished_trial_frees_its_workers_slot_or_makes_it_idle() -> None:
    worker = _worker("w", slots=2)
    scheduler = Scheduler()
    scheduler.became_idle(worker)
    for trial in ("t1", "t2", "t3"):
        scheduler.enqueue(trial)
    assert [t for _w, t in _pairs(scheduler.placements(_pool(worker)))] == ["t1", "t2"]
    worker.trials.remove("t1")
    scheduler.worker_done(worker)
    assert [t for _w, t in _pairs(scheduler.placements(_pool(worker)))] == ["t3"]
    worker.trials.clear()
    scheduler.worker_done(worker)
    assert list(scheduler.idle) == [b"w"]


def test_idle_workers_ask_back_the_last_trial_of_the_longest_line_once() -> None:
    long, short, idle = _worker("long", slots=4), _worker("short", slots=4), _worker("idle")
    long.trials, short.trials = ["a1", "a2", "a3"], ["b1", "b2"]
    scheduler = Scheduler()
    scheduler.became_idle(idle)
    workers = _pool(long, short, idle)
    assert [(w.id, t) for w, t in _pairs(scheduler.recalls(workers))] == [("long", "a3")]
    assert scheduler.recalls(workers) == []  # asked once per change in who idles
    scheduler.became_idle(idle)
    assert scheduler.recalls(workers) == []  # a3 is still asked for: no second pick for one idle worker


def test_nothing_is_asked_back_while_trials_are_queued() -> None:
    holder, idle = _worker("holder", slots=3), _worker("idle")
    holder.trials = ["a1", "a2"]
    scheduler = Scheduler()
    scheduler.became_idle(idle)
    scheduler.enqueue("waiting")
    assert scheduler.recalls(_pool(holder, idle)) == []


def _gpu_worker(name: str, gpus: str, slots: int = 1) -> Worker:
    return Worker(name, name.encode(), "host", gpus, 1, expiry=0.0, slots=slots)


def test_a_trial_asking_for_gpus_goes_only_to_a_worker_that_has_them_and_holds_up_no_other() -> None:
    one, two, cpu = _gpu_worker("one", "3"), _gpu_worker("two", "0,1"), _worker("cpu")
    needs = {"big": 2, "small": 1, "any": 0, "big2": 2}
    scheduler = Scheduler(needs=lambda trial: needs[trial])
    for worker in (one, cpu, two):
        scheduler.became_idle(worker)
    for trial in ("big", "small", "any", "big2"):
        scheduler.enqueue(trial)
    placed = [(w.id, t) for w, t in _pairs(scheduler.placements(_pool(one, two, cpu)))]
    # each worker takes the first queued trial it has the GPUs for: "big" waits for nobody's turn
    assert placed == [("one", "small"), ("cpu", "any"), ("two", "big")]
    assert list(scheduler.queue) == ["big2"] and scheduler.unfit(_pool(one, two, cpu)) == []
    one.trials.clear()
    scheduler.worker_done(one)
    assert scheduler.placements(_pool(one, two, cpu)) == []  # one GPU is too few for "big2"
    two.trials.clear()
    scheduler.worker_done(two)
    assert [(w.id, t) for w, t in _pairs(scheduler.placements(_pool(one, two, cpu)))] == [("two", "big2")]


def test_trials_asking_for_more_gpus_than_any_worker_has_are_unfit_while_workers_are_there() -> None:
    needs = {"huge": 4, "fine": 2, "cpu": 0}
    scheduler = Scheduler(needs=lambda trial: needs[trial])
    for trial in needs:
        scheduler.enqueue(trial)
    assert scheduler.unfit({}) == []  # no worker yet: the cluster may be starting
    small, big = _gpu_worker("small", "0"), _gpu_worker("big", "0,1")
    assert scheduler.unfit(_pool(small)) == ["huge", "fine"]
    assert scheduler.unfit(_pool(small, big)) == ["huge"]
    scheduler.dequeue("huge")
    assert scheduler.unfit(_pool(small)) == ["fine"]
