"""``Experiment.run(pack=K)`` (issue 21): a search whose early-stopping rule cancels a trial in the
middle of its pack leaves the pack's other trials alone (each ends with what it gives trained
alone under its seed); an evaluator that cannot pack runs one trial per process, saying why once;
a pack size out of range is refused before anything starts."""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import pytest

import retia.lightning as pl
from retia import Experiment, FunctionalEvaluator, trace
from retia.arch import FrozenModel
from retia.client.backend import Backend
from retia.datasets import DigitsDataset
from retia.errors import ConfigError
from retia.reporting import default_value
from retia.strategy import MedianStop, Random

from ..clusters import on_cluster
from ..common.spaces import DigitsMLPSpace
from . import fits
from .pack_models import DeadOpSpace

pytestmark = pytest.mark.timeout(120)

STOPPED = "stopped early by the strategy"
EPOCHS = 4  # MedianStop cancels after the first: three more for its pack's mates to train on alone


def _evaluator() -> pl.Classification:
    return pl.Classification(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=64, shuffle=True),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=512),
        max_epochs=EPOCHS,
    )


def _pack_of(output_dir: str) -> str:
    """The pack's trial.log (every trial of a pack writes the pack's log: it names them all)."""
    assert output_dir, "the trial recorded no output directory"
    return (Path(output_dir) / "trial.log").read_text()


def _close(a: Any, b: Any) -> bool:
    """Two reported metrics (numbers, or dicts of them) equal within rel 1e-5."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    return math.isclose(float(a), float(b), rel_tol=1e-5)


def test_median_stop_cancels_a_packed_trial_and_its_mates_end_with_their_solo_results(
    cluster: Backend, tmp_path: Path
) -> None:
    """Random(seed=149) proposes the space's dead op (chance accuracy) among trials 0-7, which are 16
    or 32 wide, and again as trial 8 beside three 64-wide models (trials 9-11, more accurate after one
    epoch than any earlier one). MedianStop judges from the first report on, once 3 trials finished:
    trial 8 is cancelled after its first epoch (and maybe others whose pack ran late), in the middle
    of its pack, and its mates train on to the end."""
    evaluator = _evaluator()
    strategy = Random(seed=149, early_stop=MedianStop(warmup_steps=0, min_trials=3))
    exp = Experiment(DeadOpSpace(), evaluator, strategy, path=tmp_path / "exp")
    results = exp.run(max_trials=12, pack=4, **on_cluster(cluster))
    assert exp.record.settings().concurrency == 8  # two packs in flight by default
    assert len(results) == 12
    cancelled = [r for r in results if r.state == "CANCELLED"]
    assert all(r.reason == STOPPED for r in cancelled), [r.reason for r in cancelled]
    assert all(r.state == "SUCCEEDED" for r in results if r not in cancelled), results
    assert any(r.key == 8 for r in cancelled), [(r.key, r.arch, r.state, r.intermediates) for r in results]
    for stopped in cancelled:  # each in a pack with others, cancelled before its pack's training ended
        assert "a pack of" in _pack_of(stopped.output_dir) and len(stopped.intermediates) < EPOCHS, stopped
    stopped, mates = next(
        (r, mates)
        for r in cancelled
        if (mates := [m for m in results if m is not r and m.trial_id in _pack_of(r.output_dir)])
        and all(m.state == "SUCCEEDED" for m in mates)
    )  # trial 8's pack, if no other
    for mate in mates:
        assert mate.seed is not None and mate.final is not None and len(mate.intermediates) == EPOCHS, mate
        alone = evaluator.evaluate(
            FrozenModel(DeadOpSpace, mate.arch), seed=mate.seed, output_dir=tmp_path / f"alone-{mate.key}"
        )
        assert _close(alone.final, mate.final), (mate.key, alone.final, mate.final)
        assert len(alone.intermediates) == EPOCHS
        assert all(_close(a, b) for a, b in zip(alone.intermediates, mate.intermediates)), mate.key
    assert max(default_value(m.final) for m in mates if m.final is not None) > 0.5


def test_a_functional_evaluator_runs_unpacked_and_says_why_once(
    cluster: Backend, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="retia")
    evaluator = FunctionalEvaluator(fits.arch_score, steps=1)
    exp = Experiment(DigitsMLPSpace(), evaluator, Random(seed=0), path=tmp_path / "exp")
    results = exp.run(max_trials=3, pack=4, **on_cluster(cluster))
    assert [r.state for r in results] == ["SUCCEEDED"] * 3
    warnings = [r.getMessage() for r in caplog.records if "run one per process" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "not in packs of 4" in warnings[0] and "FunctionalEvaluator" in warnings[0], warnings
    assert exp.record.settings().concurrency == 2  # unpacked: the default of one trial per process
    for result in results:  # (a pack's trials each have the pack's trial.log)
        assert result.output_dir and not (Path(result.output_dir) / "trial.log").exists(), result


@pytest.mark.parametrize("pack", [0, 65, "4", True, 2.0])
def test_a_pack_size_out_of_range_is_refused_before_anything_starts(tmp_path: Path, pack: Any) -> None:
    exp = Experiment(DigitsMLPSpace(), _evaluator(), Random(seed=0), path=tmp_path / "exp")
    with pytest.raises(ConfigError, match=re.escape(f"pack must be an integer from 1 to 64, got {pack!r}")):
        exp.run(max_trials=2, workers=1, pack=pack, live=False)
    assert not exp.path.exists()  # no experiment directory, no cluster (the autouse fixture: no children)
