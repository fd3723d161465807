"""retia.numpy_rng: NumPy's global generator saved and restored fast, drawing exactly as NumPy's own
get_state/set_state would, Gaussians kept aside included."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy
import pytest

from retia.numpy_rng import NumpyGenerator

pytestmark = pytest.mark.timeout(60)

DRAWS: list[Callable[[], Any]] = [
    lambda: numpy.random.rand(),
    lambda: numpy.random.randn(),  # one Gaussian: the second of its pair is kept aside
    lambda: numpy.random.randn(3),
    lambda: numpy.random.randint(100),
    lambda: numpy.random.normal(size=5),
    lambda: numpy.random.permutation(7),
]


def alone(seed: int, draws: list[Callable[[], Any]]) -> list[Any]:
    numpy.random.seed(seed)
    return [draw() for draw in draws]


@pytest.fixture
def generator() -> Any:
    saved = numpy.random.get_state()
    yield NumpyGenerator(numpy)
    numpy.random.set_state(saved)


def test_the_fast_path_is_on_for_this_numpy(generator: NumpyGenerator) -> None:
    assert generator._address is not None  # the layout check passed: saving copies one block


def interleave(
    generator: NumpyGenerator, seeds: list[int], draws: list[Callable[[], Any]]
) -> list[list[Any]]:
    """Each stream's draws, taken in turn, swapping streams in and out around each (and around
    hooks that draw nothing, and code outside every stream that draws and reseeds)."""
    choose = random.Random(0)
    states = {}
    for seed in seeds:
        numpy.random.seed(seed)
        states[seed] = generator.save()
    got: dict[int, list[Any]] = {seed: [] for seed in seeds}
    for draw in draws:
        for seed in seeds:
            generator.restore(states[seed])
            got[seed].append(draw())
            states[seed] = generator.save()
            for _ in range(choose.randrange(3)):  # a hook of the same stream drawing nothing
                generator.restore(states[seed])
                states[seed] = generator.save()
        if choose.random() < 0.2:  # code of no stream: draws, reseeds
            numpy.random.seed(choose.randrange(1000))
            numpy.random.randn()
    return [got[seed] for seed in seeds]


@pytest.mark.parametrize("fast", [True, False])
def test_interleaved_streams_draw_what_each_draws_alone(generator: NumpyGenerator, fast: bool) -> None:
    if not fast:
        generator._address = None  # NumPy's own functions only
    draws = [random.Random(i).choice(DRAWS) for i in range(300)]
    for seed, got in zip([1, 2, 3], interleave(generator, [1, 2, 3], draws)):
        want = alone(seed, draws)
        assert all(numpy.array_equal(a, b) for a, b in zip(want, got))


def test_a_kept_gaussian_is_restored(generator: NumpyGenerator) -> None:
    numpy.random.seed(5)
    numpy.random.randn()  # keeps the pair's second Gaussian aside
    state = generator.save()
    assert state.legacy is not None  # ... which the words alone cannot hold
    kept = numpy.random.randn()
    numpy.random.seed(6)  # holds none now
    generator.restore(state)
    assert numpy.random.randn() == kept


def test_a_gaussian_kept_by_outside_code_does_not_leak_into_a_restored_stream(
    generator: NumpyGenerator,
) -> None:
    want = alone(7, [lambda: numpy.random.rand(4), lambda: numpy.random.randn()])
    numpy.random.seed(7)
    state = generator.save()
    numpy.random.randn()  # code of no stream keeps a Gaussian aside
    generator.restore(state)
    got: list[Any] = [numpy.random.rand(4), numpy.random.randn()]
    assert numpy.array_equal(got[0], want[0]) and got[1] == want[1]
