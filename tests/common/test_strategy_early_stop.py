"""MedianStop and OptunaPruner on synthetic learning curves: bad trials stopped, the best never."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from retia.errors import ConfigError
from retia.strategy import EarlyStop, MedianStop, OptunaPruner, Random

STEPS = 20
N_TRIALS = 24
CONCURRENCY = 3


def _curve(quality: float, step: int, noise: random.Random) -> float:
    """A saturating learning curve whose level is ``quality``."""
    return quality * (1 - math.exp(-(step + 1) / 4)) + noise.gauss(0, 0.01)


def _simulate(early_stop: EarlyStop | None, seed: int = 0) -> tuple[int, set[int], dict[int, float]]:
    """Run N_TRIALS curves, CONCURRENCY at a time in lockstep; return (steps run, stopped keys, qualities)."""
    rng = random.Random(seed)
    qualities = {k: rng.uniform(0.2, 1.0) for k in range(N_TRIALS)}
    noise = random.Random(seed + 1)
    s = Random(seed=0, early_stop=early_stop)
    s.attach({"a": list(range(10)), "b": list(range(10))})
    queue, steps = list(range(N_TRIALS)), 0
    running: dict[int, list[Any]] = {}  # key -> [arch, steps run]
    stopped: set[int] = set()
    while queue or running:
        while queue and len(running) < CONCURRENCY:
            key = queue.pop(0)
            running[key] = [s.ask(key), 0]
        for key, slot in list(running.items()):
            s.report(key, slot[1], _curve(qualities[key], slot[1], noise))
            slot[1] += 1
            steps += 1
            if slot[1] == STEPS:
                s.tell(key, slot[0], _curve(qualities[key], STEPS, noise))
                del running[key]
        for key in s.to_stop(list(running)):
            stopped.add(key)
            s.tell(key, running.pop(key)[0], None)  # cancelled trials are told as failed
    return steps, stopped, qualities


@pytest.mark.parametrize(
    "rule",
    [
        MedianStop(warmup_steps=2, min_trials=3),
        OptunaPruner(__import__("optuna").pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)),
    ],
    ids=["MedianStop", "OptunaPruner(MedianPruner)"],
)
def test_early_stop_cuts_bad_curves_and_never_the_best(rule: EarlyStop) -> None:
    full_steps, none_stopped, qualities = _simulate(None)
    assert none_stopped == set() and full_steps == N_TRIALS * STEPS
    steps, stopped, _ = _simulate(rule)
    best = max(qualities, key=qualities.__getitem__)
    assert best not in stopped
    completed = set(qualities) - stopped
    assert statistics.mean(qualities[k] for k in stopped) < statistics.mean(qualities[k] for k in completed)
    bottom_half = sorted(qualities, key=qualities.__getitem__)[: N_TRIALS // 2]
    assert sum(k in stopped for k in bottom_half) >= 0.75 * len(bottom_half)
    assert steps < 0.7 * full_steps  # 201 of 480 here


def test_median_stop_rules_by_hand() -> None:
    rule = MedianStop(warmup_steps=1, min_trials=3)
    completed = {0: [0.5, 0.6, 0.7], 1: [0.4, 0.5, 0.6], 2: [0.6, 0.7, 0.8]}
    history = {**completed, 9: [0.1], 10: [0.1, 0.2], 11: [0.9, 0.2], 12: [0.1, 0.2, 0.3, 0.4]}
    assert not rule.should_stop(9, history, completed)  # still warming up
    assert rule.should_stop(10, history, completed)  # 0.2 < median(0.5, 0.6, 0.7)
    assert not rule.should_stop(11, history, completed)  # running best 0.9 counts, not the last value
    assert not rule.should_stop(12, history, completed)  # no completed trial reached step 4
    assert not rule.should_stop(10, history, {0: completed[0], 1: completed[1]})  # fewer than min_trials
    with pytest.raises(ConfigError):
        MedianStop(min_trials=0)


def test_to_stop_names_a_trial_once() -> None:
    s = Random(seed=0, early_stop=MedianStop(warmup_steps=0, min_trials=1))
    s.attach({"a": [0, 1, 2]})
    arch = s.ask(0)
    assert arch is not None
    s.report(0, 0, 1.0)
    s.tell(0, arch, 1.0)
    s.ask(1)
    s.report(1, 0, 0.1)
    assert s.to_stop([1]) == [1]
    assert s.to_stop([1]) == []
