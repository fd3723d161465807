"""What the dispatcher would refuse is refused by submit itself, on the caller's thread, with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend
from retia.errors import ConfigError
from retia.seeding import SEED_MAX, trial_seed

from ..integration import fits


@pytest.fixture
def backend() -> Iterator[Backend]:
    """A backend whose dispatcher never answers: the checks must not need one."""
    client = Backend("tcp://127.0.0.1:9", b"k" * 32)
    yield client
    client.close()


@pytest.mark.parametrize(
    ("option", "match"),
    [
        ({"max_retries": "2"}, "max_retries must be an integer from 0 to 1000, got '2'"),
        ({"max_retries": -1}, "got -1"),
        ({"max_retries": 5000}, "got 5000"),
        ({"max_retries": True}, "got True"),
        ({"timeout": "600"}, "timeout must be a positive number of seconds or None, got '600'"),
        ({"timeout": -1.0}, "got -1.0"),
        ({"timeout": float("inf")}, "got inf"),
        ({"timeout": 0}, "got 0"),
        ({"trial_id": "../../etc/cron.d/x"}, "trial_id must be 1-128 letters, digits"),
        ({"trial_id": ".hidden"}, "trial_id must be"),
        ({"trial_id": ""}, "trial_id must be"),
        ({"trial_id": "x" * 129}, "trial_id must be"),
        ({"trial_id": 7}, "trial_id must be"),
        ({"name": 7}, "name must be a string of at most 256 characters, got 7"),
        ({"name": "n" * 257}, "name must be a string"),
        ({"seed": -1}, "seed must be an integer from 0 to 4294967295, got -1"),
        ({"seed": 2**32}, "seed must be an integer from 0 to 4294967295, got 4294967296"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"seed": "3"}, "seed must be an integer"),
        ({"seed": True}, "seed must be an integer"),
    ],
)
def test_a_bad_limit_is_refused_before_anything_is_queued(
    backend: Backend, option: dict[str, Any], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), **option)
    assert backend.trials == {}


@pytest.mark.parametrize("arch", [{"width": np.int64(8)}, {"width": b"8"}, {"width": {1, 2}}])
def test_an_architecture_that_is_not_json_is_refused(backend: Backend, arch: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="arch must be a JSON-able dict"):
        backend.submit_many([fits.DigitsMLP], FunctionalEvaluator(fits.counting), archs=[arch])
    assert backend.trials == {}


def test_good_limits_pass(backend: Backend) -> None:
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), timeout=1.5, max_retries=0)
    assert trial.id in backend.trials


def test_one_bad_seed_among_many_queues_none_of_them(backend: Backend) -> None:
    evaluator = FunctionalEvaluator(fits.counting)
    with pytest.raises(ConfigError, match=r"seeds\[2\] must be an integer from 0 to 4294967295, got -5"):
        backend.submit_many([fits.DigitsMLP] * 3, evaluator, seeds=[1, None, -5])
    with pytest.raises(ValueError, match="seeds need one entry per model"):
        backend.submit_many([fits.DigitsMLP] * 3, evaluator, seeds=[1, 2])
    assert backend.trials == {} and backend._outgoing.empty()


def test_a_trials_seed_is_known_at_once_given_or_its_own(backend: Backend) -> None:
    evaluator = FunctionalEvaluator(fits.counting)
    assert backend.submit(fits.DigitsMLP, evaluator, seed=0).seed == 0
    assert backend.submit(fits.DigitsMLP, evaluator, trial_id="mine").seed == trial_seed("mine")
    trials = backend.submit_many([fits.DigitsMLP] * 2, evaluator, seeds=[SEED_MAX, None])
    assert [t.seed for t in trials] == [SEED_MAX, trial_seed(trials[1].id)]


def test_a_client_id_that_cannot_name_a_directory_is_refused() -> None:
    with pytest.raises(ConfigError, match="client_id must be 1-128 letters"):
        Backend("tcp://127.0.0.1:9", b"k" * 32, client_id="a/../../b")
