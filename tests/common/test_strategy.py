"""Contracts of the search strategies: validation, Random, GridSearch, RegularizedEvolution, TPE."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

import retia.strategy as strategy_pkg
from retia.errors import ConfigError, InvalidArchitectureError
from retia.strategy import (
    TPE,
    Arch,
    GridSearch,
    MedianStop,
    Random,
    RegularizedEvolution,
    SearchSpace,
    Strategy,
)

SPACE: dict[str, list[Any]] = {"a": [1, 2, 3], "b": ["x", "y"], "c": [[0, 1], [2]]}
SIZE = 12
ALL = [dict(zip(SPACE, combo)) for combo in itertools.product(*SPACE.values())]

FACTORIES = {
    "random": lambda seed: Random(seed=seed),
    "grid": lambda seed: GridSearch(shuffle=True, seed=seed),
    "evolution": lambda seed: RegularizedEvolution(population_size=4, sample_size=2, seed=seed),
    "tpe": lambda seed: TPE(seed=seed, n_startup_trials=3),
}


def _attached(name: str, seed: int = 0, space: SearchSpace = SPACE) -> Strategy:
    s = FACTORIES[name](seed)
    s.attach(space)
    return s


def _drive(
    s: Strategy, n: int, value: Callable[[Arch], float | None] = lambda arch: float(arch["a"])
) -> list[Arch]:
    archs = []
    for key in range(n):
        arch = s.ask(key)
        if arch is None:
            break
        archs.append(arch)
        s.tell(key, arch, value(arch))
    return archs


def _ask(s: Strategy, key: int) -> Arch:
    """``s.ask(key)`` where the test expects an architecture (the strategy is not exhausted)."""
    arch = s.ask(key)
    assert arch is not None
    return arch


def test_public_names_are_pinned() -> None:
    assert sorted(strategy_pkg.__all__) == sorted(
        [
            "DARTS",
            "ENAS",
            "GumbelDARTS",
            "Proxyless",
            "RandomOneShot",
            "TPE",
            "Arch",
            "EarlyStop",
            "GridSearch",
            "MedianStop",
            "OptunaPruner",
            "Random",
            "RegularizedEvolution",
            "SearchSpace",
            "Strategy",
        ]
    )


def test_import_needs_neither_torch_nor_optuna() -> None:
    code = "import sys, retia.strategy; print('torch' in sys.modules, 'optuna' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    "space, needle",
    [
        ({}, "empty"),
        ([("a", [1])], "dict"),
        ({"a": [1, 2], "b": []}, "'b'"),
        ({"a": "abc"}, "'a'"),
    ],
)
def test_bad_search_space_raises_config_error(name: str, space, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        FACTORIES[name](0).attach(space)


@pytest.mark.parametrize("name", FACTORIES)
@pytest.mark.parametrize(
    "arch, label",
    [
        ({"a": 1, "b": "x"}, "'c'"),
        ({"a": 1, "b": "x", "c": [2], "z": 0}, "'z'"),
        ({"a": 4, "b": "x", "c": [2]}, "'a'"),
        ({"a": 1, "b": "x", "c": [3]}, "'c'"),
    ],
)
def test_tell_with_a_misshapen_arch_names_the_label(name: str, arch: dict[str, Any], label: str) -> None:
    s = _attached(name)
    with pytest.raises(InvalidArchitectureError, match=label):
        s.tell(0, arch, 1.0)


@pytest.mark.parametrize("name", FACTORIES)
def test_every_strategy_is_deterministic_and_ends_once_the_space_is_seen(name: str) -> None:
    first, second = _drive(_attached(name, 7), 400), _drive(_attached(name, 7), 400)
    assert first == second
    assert sorted({repr(a) for a in first}) == sorted(map(repr, ALL))  # tuples come back as lists
    if name in ("random", "grid"):
        assert len(first) == SIZE  # each architecture exactly once
    s = _attached(name, 7)
    _drive(s, 400)
    assert s.exhausted and s.ask(999) is None


def test_ask_before_attach_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="attach"):
        Random(seed=0).ask(0)


def test_random_never_repeats_and_respects_replayed_archs() -> None:
    s = _attached("random", 3)
    replayed = ALL[::3]
    for i, arch in enumerate(replayed):
        s.tell(100 + i, arch, None if i % 2 else 1.0)  # replay: keys never asked here
    asked = [s.ask(k) for k in range(SIZE - len(replayed))]
    assert all(a is not None and a not in replayed for a in asked)
    assert len({repr(a) for a in asked}) == len(asked)
    assert s.exhausted and s.ask(50) is None
    assert _drive(_attached("random", 3), 40) != _drive(_attached("random", 4), 40)


def test_random_in_a_huge_space_stays_cheap() -> None:
    s = Random(seed=0)
    s.attach({f"l{i}": list(range(10)) for i in range(30)})
    archs = [_ask(s, k) for k in range(200)]
    assert len({tuple(a.values()) for a in archs}) == 200 and not s.exhausted


def test_grid_enumerates_the_cartesian_product_in_order_then_none() -> None:
    s = GridSearch()
    s.attach(SPACE)
    got = [s.ask(k) for k in range(SIZE)]
    assert got == ALL  # label order as given, last label fastest
    assert s.exhausted and s.ask(SIZE) is None and s.ask(SIZE + 1) is None


def test_grid_shuffle_is_a_seeded_permutation_and_replay_skips() -> None:
    a, b = GridSearch(shuffle=True, seed=1), GridSearch(shuffle=True, seed=1)
    a.attach(SPACE)
    b.attach(SPACE)
    got = [a.ask(k) for k in range(SIZE)]
    assert got == [b.ask(k) for k in range(SIZE)] and got != ALL
    assert sorted(map(repr, got)) == sorted(map(repr, ALL))
    resumed = GridSearch()
    resumed.attach(SPACE)
    for k in range(5):
        resumed.tell(k, ALL[k], 0.5)
    assert [resumed.ask(k) for k in range(5, SIZE)] == ALL[5:]
    assert resumed.ask(SIZE) is None


BIG = {f"l{i}": list(range(5)) for i in range(6)}


def _differ(x: Arch, y: Arch) -> int:
    return sum(x[k] != y[k] for k in x)


def test_evolution_starts_random_while_the_population_is_being_evaluated() -> None:
    s = RegularizedEvolution(population_size=8, sample_size=3, seed=0)
    s.attach(BIG)
    pending = [_ask(s, k) for k in range(20)]  # concurrency: nothing told yet
    assert len({repr(a) for a in pending}) == 20
    for k, arch in enumerate(pending[:7]):
        s.tell(k, arch, 1.0)
    assert len(s.population) == 7  # still short of 8: the next ask is random, not an error
    assert s.ask(20) is not None


def test_evolution_children_mutate_exactly_one_label_of_a_member() -> None:
    s = RegularizedEvolution(population_size=6, sample_size=3, seed=1)
    s.attach(BIG)
    for k in range(6):
        arch = _ask(s, k)
        s.tell(k, arch, float(sum(arch.values())))
    for k in range(6, 60):
        population = [a for a, _ in s.population]
        child = _ask(s, k)
        assert any(_differ(child, p) == 1 for p in population)
        s.tell(k, child, float(sum(child.values())))


def test_evolution_population_ages_fifo_and_skips_failures() -> None:
    s = RegularizedEvolution(population_size=5, sample_size=2, seed=2)
    s.attach(BIG)
    told = []
    for k in range(30):
        arch = _ask(s, k)
        value = None if k % 4 == 3 else float(k)
        s.tell(k, arch, value)
        if value is not None:
            told.append((arch, value))
    assert s.population == told[-5:]  # the latest five completed, oldest first
    assert all(v is not None for _, v in s.population)


def test_evolution_mutation_prob_changes_at_least_one_label() -> None:
    s = RegularizedEvolution(population_size=4, sample_size=2, mutation_prob=0.5, seed=3)
    s.attach(BIG)
    diffs = []
    for k in range(40):
        population = [a for a, _ in s.population]
        arch = _ask(s, k)
        if len(population) == 4:
            diffs.append(min(_differ(arch, p) for p in population))
        s.tell(k, arch, float(arch["l0"]))
    assert min(diffs) >= 1 and max(diffs) >= 2


def test_evolution_rejects_bad_sizes() -> None:
    with pytest.raises(ConfigError):
        RegularizedEvolution(population_size=3, sample_size=4)
    with pytest.raises(ConfigError):
        RegularizedEvolution(mutation_prob=1.5)


def test_tpe_proposes_valid_archs_and_records_failures_and_replays() -> None:
    from optuna.trial import TrialState

    space: SearchSpace = {
        "op": ["conv3", "conv5", "pool"],
        "width": [16, 32, 64],
        "inputs": [[0], [1], [0, 1]],
    }
    s = TPE(seed=0, n_startup_trials=4)
    s.attach(space)
    replayed = {"op": "pool", "width": 64, "inputs": [0, 1]}
    s.tell(1000, replayed, 9.0)  # resumed experiment: a key this process never asked
    s.tell(1001, {"op": "conv3", "width": 16, "inputs": [0]}, None)
    archs = []
    for key in range(15):
        arch = s.ask(key)
        assert arch is not None and all(arch[label] in opts for label, opts in space.items())
        archs.append(arch)
        s.tell(key, arch, None if key % 5 == 0 else float(arch["width"]) / 64)
    assert replayed not in archs and len({repr(a) for a in archs}) >= 13  # repeats retried away
    states = [t.state for t in s.study.trials]
    assert states.count(TrialState.FAIL) >= 4 and states.count(TrialState.COMPLETE) >= 13
    assert not any(st == TrialState.RUNNING for st in states)
    assert s.study.best_trial.params == {"op": 2, "width": 2, "inputs": 2}


def test_tpe_handles_concurrent_asks_and_tells_out_of_order() -> None:
    s = TPE(seed=1, n_startup_trials=2)
    s.attach(BIG)
    pending = {k: _ask(s, k) for k in range(6)}
    for k in (3, 0, 5, 1, 4, 2):
        s.tell(k, pending[k], float(pending[k]["l0"]))
    assert len(s.study.trials) >= 6 and s.ask(6) is not None


def test_to_stop_is_empty_without_an_early_stop_rule() -> None:
    s = Random(seed=0)
    s.attach(SPACE)
    s.report(0, 0, 1.0)
    assert s.to_stop([0]) == []
    assert isinstance(MedianStop(), strategy_pkg.EarlyStop)


def test_random_without_dedup_draws_with_repetition_and_is_never_exhausted() -> None:
    """NNI's ``Random(dedup=...)``; before, a TypeError. With dedup (the default) a space of two is
    exhausted after two; without, the tenth draw still comes, and some repeat."""
    space: SearchSpace = {"a": [0, 1]}
    deduped = Random(seed=0)
    deduped.attach(space)
    assert [deduped.ask(i) is None for i in range(3)] == [False, False, True]
    free = Random(dedup=False, seed=0)
    free.attach(space)
    draws = [free.ask(i) for i in range(10)]
    assert None not in draws and len({str(d) for d in draws}) == 2
