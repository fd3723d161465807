"""RegularizedEvolution and TPE beat Random on a cheap synthetic objective, same seeds and budget."""

from __future__ import annotations

import random
import statistics

from retia.strategy import TPE, Arch, Random, RegularizedEvolution, Strategy

LABELS = [f"l{i}" for i in range(6)]
# 6 labels x 5 options (15,625 archs), mixing string, int and list options.
SPACE = {
    label: list(range(5)) if i % 2 else [f"op{j}" for j in range(4)] + [[1, 2]]
    for i, label in enumerate(LABELS)
}
_prefs = random.Random(1234)
PREF = [[_prefs.uniform(0, 1) for _ in range(5)] for _ in LABELS]
BUDGET = 30
SEEDS = [0, 1, 2, 3, 4]


def score(arch: Arch, noise: random.Random) -> float:
    """Known function of the arch: per-label preferences + two interaction terms + small noise."""
    idx = [SPACE[label].index(arch[label]) for label in LABELS]
    s = sum(PREF[i][j] for i, j in enumerate(idx))
    s += 0.8 * (idx[0] == idx[1]) + 0.5 * (idx[2] == 4 and idx[3] == 4)
    return s + noise.gauss(0, 0.05)


def best_of(strategy: Strategy, seed: int) -> float:
    """Best observed value over BUDGET sequential trials; the noise stream depends only on ``seed``."""
    strategy.attach(SPACE)
    noise = random.Random(seed + 10_000)
    best = float("-inf")
    for key in range(BUDGET):
        arch = strategy.ask(key)
        assert arch is not None
        value = score(arch, noise)
        strategy.tell(key, arch, value)
        best = max(best, value)
    return best


# Startup sizes scaled to a 30-trial budget: a third random for evolution, 5 for TPE.
MAKERS = {
    "random": lambda seed: Random(seed=seed),
    "evolution": lambda seed: RegularizedEvolution(population_size=10, sample_size=5, seed=seed),
    "tpe": lambda seed: TPE(seed=seed, n_startup_trials=5),
}


def test_evolution_and_tpe_beat_random_on_average() -> None:
    means = {name: statistics.mean(best_of(make(s), s) for s in SEEDS) for name, make in MAKERS.items()}
    assert means["evolution"] > means["random"], means
    assert means["tpe"] > means["random"], means
