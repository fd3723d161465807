"""SPOS as one flow: RandomOneShot trains the supernet, an evolution over subnets inheriting its
weights (only validated, each a trial on the workers) picks the architecture, which is then
retrained from scratch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest
import torch
from oneshot_spaces import USEFUL, UselessOpSpace

import retia
from retia.client.backend import Backend
from retia.errors import ConfigError
from retia.oneshot import SUPERNET_FILE, InheritedWeights, RandomOneShot, supernet_weights
from retia.strategy import RegularizedEvolution
from tests.clusters import on_cluster
from tests.common.test_oneshot import classification

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_spos_evolution_over_inherited_weights_avoids_every_useless_op(
    cluster: Backend, tmp_path: Path
) -> None:
    # a useless op anywhere silences the network, so SPOS trains the one useful path 1/16 of the time
    evaluator = classification(epochs=60)
    first = retia.Experiment(  # seeded: the supernet's weights and batches are the same in every run
        UselessOpSpace(), evaluator, RandomOneShot(seed=0), path=tmp_path / "supernet", seed=1
    )
    [trained] = first.run(**on_cluster(cluster))
    assert trained.state == "SUCCEEDED", trained.reason
    assert (Path(trained.output_dir) / SUPERNET_FILE).is_file()
    weights = supernet_weights(first)
    assert set(weights) == set(UselessOpSpace().state_dict())

    # a population as large as the space: its first 16 asks are the 16 distinct subnets, whatever
    # order the trials finish in (with a smaller one, which subnets it reaches depends on timing)
    strategy = RegularizedEvolution(population_size=16, sample_size=3, seed=0)
    second = retia.Experiment(
        UselessOpSpace(), InheritedWeights(evaluator, weights), strategy, path=tmp_path / "subnets"
    )
    results = second.run(max_trials=16, **on_cluster(cluster))
    assert [r.state for r in results] == ["SUCCEEDED"] * 16, [r.reason for r in results]
    scores = {json.dumps(r.arch, sort_keys=True): cast(dict[str, float], r.final)["val_acc"] for r in results}
    assert len(scores) == 16
    useful = scores.pop(json.dumps(USEFUL, sort_keys=True))
    assert useful > max(scores.values()) + 0.05, (useful, scores)  # the trained path stands out
    assert all(r.intermediates == [] for r in results)  # validated, never trained
    [best] = second.export_top_models()
    assert best == USEFUL

    # the score a subnet got on the worker is its frozen model's with the supernet's weights
    result = next(r for r in results if r.arch == USEFUL)
    local = InheritedWeights(evaluator, weights).evaluate(
        UselessOpSpace().freeze(USEFUL), output_dir=tmp_path / "l"
    )
    final = cast(dict[str, float], result.final)
    assert final["val_acc"] == pytest.approx(cast(dict[str, float], local.final)["val_acc"], abs=1e-6)

    torch.manual_seed(0)  # then the chosen architecture is retrained from scratch
    retrained = evaluator.evaluate(UselessOpSpace().freeze(best), output_dir=tmp_path / "retrained")
    assert cast(dict[str, float], retrained.final)["val_acc"] > 0.5


def test_inherited_weights_needs_a_lightning_evaluator_and_a_state_dict() -> None:
    with pytest.raises(ConfigError, match="through a Lightning evaluator"):
        InheritedWeights(retia.FunctionalEvaluator(lambda m: None), {})
    with pytest.raises(ConfigError, match="state dict"):
        InheritedWeights(classification(), {"w": 1.0})  # type: ignore[dict-item]
