"""Random, grid, evolution and TPE over a described space: valid archs, shared labels, nesting, priors."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from test_space_describe import DISTINCT, EveryKind

from retia.nn.describe import describe_space
from retia.searchspace import Choice, ChoiceKind, SpaceDescription
from retia.strategy import TPE, GridSearch, Random, RegularizedEvolution, Strategy

MAKERS: dict[str, Callable[[], Strategy]] = {
    "random": lambda: Random(seed=1),
    "grid": lambda: GridSearch(),
    "grid-shuffled": lambda: GridSearch(shuffle=True, seed=2),
    "evolution": lambda: RegularizedEvolution(population_size=6, sample_size=3, seed=3),
    "tpe": lambda: TPE(seed=4, n_startup_trials=5),
}


def _key(desc: SpaceDescription, arch: dict[str, Any]) -> str:
    return json.dumps(desc.representative(arch), sort_keys=True)


@pytest.mark.parametrize("name", list(MAKERS))
def test_each_strategy_proposes_valid_archs_that_freeze(name: str) -> None:
    space = EveryKind()
    desc = describe_space(space)
    strategy = MAKERS[name]()
    strategy.attach(desc)
    archs = []
    for key in range(40):
        arch = strategy.ask(key)
        assert arch is not None
        assert space.validate(arch) == arch  # every label, each a valid option
        assert arch == desc.representative(arch)  # labels the path does not reach at their defaults
        strategy.tell(key, arch, float(sum(map(len, map(str, arch.values()))) % 5))
        archs.append(arch)
    assert len({_key(desc, a) for a in archs}) == len(archs) or name in ("evolution", "tpe")
    for arch in archs[:4]:
        model: Any = space.freeze(arch)
        assert model.norm1.__class__ is model.norm2.__class__  # the shared label: one decision
        assert model.stem.out_features == model.head.in_features == arch["width"]
        assert len(model.blocks) == arch["depth"]


@pytest.mark.parametrize("name", ["grid", "grid-shuffled", "random"])
def test_grid_and_dedup_propose_each_distinct_model_once(name: str) -> None:
    desc = describe_space(EveryKind())
    strategy = MAKERS[name]()
    strategy.attach(desc)
    keys: list[str] = []
    while (arch := strategy.ask(len(keys))) is not None:
        keys.append(_key(desc, arch))
        assert len(keys) <= DISTINCT
    assert len(keys) == len(set(keys)) == DISTINCT  # not the 2*2*2*3*2*2*2*2*3 label combinations
    assert strategy.exhausted


def test_the_flat_interface_still_works() -> None:
    flat: dict[str, list[Any]] = {"a": [1, 2], "b": ["x", "y", "z"]}
    grid = GridSearch()
    grid.attach(flat)
    archs: list[dict[str, Any]] = []
    while (arch := grid.ask(len(archs))) is not None:
        archs.append(arch)
    assert archs[:2] == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}] and len(archs) == 6


PRIOR_SPACE = SpaceDescription(
    (
        Choice("p", ChoiceKind.VALUECHOICE, ("a", "b", "c"), "a", (0.9, 0.05, 0.05)),
        Choice("q", ChoiceKind.VALUECHOICE, tuple(range(1000)), 0),
    )
)
N = 400  # the favourite's count is binomial(400, 0.9): mean 360, sd 6; uniform would give 133
TPE_N = 150  # binomial(150, 0.9): mean 135, sd 3.7; uniform would give 50


@pytest.mark.parametrize(
    "make",
    [
        lambda: Random(seed=5, dedup=False),
        lambda: Random(seed=5),
        lambda: RegularizedEvolution(population_size=N, sample_size=1, seed=6),
        # (optuna's ask costs more with each trial told: fewer draws, still 4 sd from the bound)
        lambda: TPE(seed=7, n_startup_trials=TPE_N),
    ],
    ids=["random", "random-dedup", "evolution-population", "tpe-startup"],
)
def test_draws_follow_the_prior(make: Callable[[], Strategy]) -> None:
    strategy = make()
    strategy.attach(PRIOR_SPACE)
    count = TPE_N if isinstance(strategy, TPE) else N
    draws = []
    for key in range(count):
        arch = strategy.ask(key)
        assert arch is not None
        draws.append(arch["p"])
        strategy.tell(key, arch, 0.0)
    assert draws.count("a") > 0.8 * count  # 7 sd (TPE: 4) under the mean: seeded, and safe for any seed


def test_evolution_mutates_by_the_prior() -> None:
    strategy = RegularizedEvolution(population_size=N, sample_size=1, seed=8)
    strategy.attach(PRIOR_SPACE)
    for key in range(N):
        strategy.tell(key, {"p": "b", "q": key}, 0.0)  # every parent has p='b'
    changed = []
    for key in range(N, 2 * N):
        arch = strategy.ask(key)
        assert arch is not None
        if arch["p"] != "b":
            changed.append(arch["p"])
    assert len(changed) > N / 4  # about half the mutations change p
    assert changed.count("a") > 0.8 * len(changed)  # 0.9 / 0.95 by the prior; 1/2 uniformly


def test_evolution_mutates_only_labels_the_parent_reaches() -> None:
    desc = describe_space(EveryKind())
    strategy = RegularizedEvolution(population_size=1, sample_size=1, seed=9)
    strategy.attach(desc)
    parent = desc.representative({**EveryKind().random_sample(seed=0), "op": "id", "depth": 1})
    strategy.tell(0, parent, 1.0)
    for key in range(1, 60):
        child = strategy.ask(key)
        assert child is not None
        # a mutation of a label the parent does not reach would be the parent's model again
        assert _key(desc, child) != _key(desc, parent)
