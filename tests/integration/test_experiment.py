"""Experiments end to end: strategies over a real cluster, early stopping, export, report, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from retia import Experiment, FunctionalEvaluator, RetiariiExperiment, trace
from retia.client.backend import Backend
from retia.client.summary import write_report
from retia.datasets import DigitsDataset
from retia.errors import ConfigError
from retia.nn import fixed_arch
from retia.seeding import trial_seed
from retia.strategy import TPE, GridSearch, MedianStop, Random, RegularizedEvolution

from ..clusters import processes
from ..common.spaces import DigitsMLPSpace
from . import fits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _digits_evaluator() -> FunctionalEvaluator:
    from torch.utils.data import DataLoader

    train = trace(DataLoader)(trace(DigitsDataset)("train"), batch_size=64, shuffle=True)
    val = trace(DataLoader)(trace(DigitsDataset)("val"), batch_size=512)
    return FunctionalEvaluator(fits.train_digits, train=train, val=val, epochs=1, seed=0)


@pytest.mark.parametrize(
    "strategy",
    [
        Random(seed=0),
        GridSearch(),
        RegularizedEvolution(population_size=3, sample_size=2, seed=0),
        TPE(seed=0, n_startup_trials=2),
    ],
    ids=["random", "grid", "evolution", "tpe"],
)
def test_each_strategy_searches_digits_and_exports_a_rebuildable_best(
    cluster: Backend, tmp_path: Path, strategy: object
) -> None:
    evaluator = _digits_evaluator()
    exp = Experiment(DigitsMLPSpace(), evaluator, strategy, path=tmp_path / "exp")
    results = exp.run(
        max_trials=5, concurrency=2, address=cluster.address, key_file=processes(cluster).key_file, live=False
    )
    assert len(results) == 5 and all(r.state == "SUCCEEDED" for r in results)
    assert len({r.trial_id for r in results}) == 5
    [best] = exp.export_top_models(top_k=1)
    best_result = max(results, key=lambda r: cast(float, r.score))  # all succeeded: all scored
    assert best == best_result.arch

    def build() -> DigitsMLPSpace:  # built inside fit, after its seed, as on the worker
        with fixed_arch(best):
            return DigitsMLPSpace()

    again = cast(dict[str, float], evaluator.evaluate(build).final)  # train_digits reports a dict
    model = build()
    assert best_result.score is not None and abs(again["default"] - best_result.score) <= 1 / 360
    assert Experiment.load(tmp_path / "exp").export_top_models(top_k=1) == [best]
    [instance] = Experiment.load(tmp_path / "exp").export_top_models(formatter="instance")
    assert sum(p.numel() for p in instance.parameters()) == sum(p.numel() for p in model.parameters())


def test_choices_in_the_evaluators_arguments_are_searched_beside_the_models(
    cluster: Backend, tmp_path: Path
) -> None:
    """NNI 3.0's mutable evaluators: ``lr`` is searched with the model's labels, each trial's fit gets
    its sampled value, a label both use (``width``) is one decision, and the export holds it all."""
    from retia.nn import ValueChoice

    evaluator = FunctionalEvaluator(
        fits.arch_and_arguments,
        lr=ValueChoice([0.0, 0.5], label="lr"),
        width=ValueChoice([16, 32, 64], label="width"),
    )
    exp = Experiment(DigitsMLPSpace(), evaluator, Random(seed=1), path=tmp_path / "exp")
    assert list(exp.search_space()) == ["width", "block0", "block1", "skip", "lr"]
    on: dict[str, Any] = {"address": cluster.address, "key_file": processes(cluster).key_file, "live": False}
    results = exp.run(max_trials=6, concurrency=2, **on)
    assert [r.state for r in results] == ["SUCCEEDED"] * 6, results[0].reason
    for r in results:
        final = cast(dict[str, Any], r.final)
        assert final["lr"] == r.arch["lr"] and final["width"] == r.arch["width"]
        model_arch = {k: v for k, v in r.arch.items() if k != "lr"}
        assert final["default"] == pytest.approx(fits.known_score(model_arch) + r.arch["lr"])
    assert {r.arch["lr"] for r in results} == {0.0, 0.5}  # both were sampled (seed 1)
    [best] = exp.export_top_models()
    assert set(best) == {"width", "block0", "block1", "skip", "lr"}
    model_arch = {k: v for k, v in best.items() if k != "lr"}  # a space takes its own labels only
    again = evaluator.freeze(best).evaluate(lambda: DigitsMLPSpace().freeze(model_arch)).final
    assert again == max((r.final for r in results), key=lambda f: cast(dict[str, float], f)["default"])
    [model] = exp.export_top_models(formatter="instance")
    assert model.frozen_arch == model_arch
    with pytest.raises(ConfigError, match="label 'width' is a choice of the model space"):
        Experiment(
            DigitsMLPSpace(),
            FunctionalEvaluator(fits.arch_and_arguments, lr=0.0, width=ValueChoice([1, 2], label="width")),
            Random(),
        )


def test_median_stop_cancels_losers_and_saves_epochs(cluster: Backend, tmp_path: Path) -> None:
    evaluator = FunctionalEvaluator(fits.arch_score, steps=8, delay=0.15)
    epochs = {}
    for name, early_stop in (("plain", None), ("median", MedianStop(warmup_steps=2, min_trials=2))):
        exp = Experiment(
            DigitsMLPSpace(), evaluator, Random(seed=3, early_stop=early_stop), path=tmp_path / name
        )
        results = exp.run(
            max_trials=10,
            concurrency=2,
            address=cluster.address,
            key_file=processes(cluster).key_file,
            live=False,
        )
        epochs[name] = sum(len(r.intermediates) for r in results)
        cancelled = [r for r in results if r.state == "CANCELLED"]
        if name == "median":
            assert cancelled and all("stopped early" in r.reason for r in cancelled)
            best = max(fits.known_score(r.arch) for r in results)
            assert all(fits.known_score(r.arch) < best for r in cancelled)
        else:
            assert not cancelled
    assert epochs["median"] < epochs["plain"]


def test_report_writes_a_png_and_a_summary(cluster: Backend, tmp_path: Path) -> None:
    exp = Experiment(
        DigitsMLPSpace(), FunctionalEvaluator(fits.arch_score, steps=3), Random(seed=1), path=tmp_path / "e"
    )
    results = exp.run(
        max_trials=4, concurrency=2, address=cluster.address, key_file=processes(cluster).key_file, live=False
    )
    out = subprocess.run(
        [sys.executable, "-m", "retia.cli", "report", str(tmp_path / "e")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "report.png" in out.stdout
    import matplotlib.image

    image = matplotlib.image.imread(tmp_path / "e" / "report.png")
    assert image.shape[0] > 300 and image.shape[1] > 600
    summary = (tmp_path / "e" / "summary.md").read_text()
    best = max(results, key=lambda r: cast(float, r.score))  # all succeeded: all scored
    assert f"| 1 | {best.key} | {best.score:.4f} | 3 | {trial_seed(best.trial_id)} |" in summary
    assert best.seed == trial_seed(best.trial_id)  # what it ran under, kept in trials.jsonl
    assert write_report(tmp_path / "e")[0].exists()


def test_bad_experiment_inputs_are_clear(tmp_path: Path) -> None:
    evaluator = FunctionalEvaluator(fits.arch_score)
    with pytest.raises(ConfigError, match=r"mutators are not supported \(1 given\): express each mutation"):
        Experiment(DigitsMLPSpace(), evaluator, Random(), mutators=[object()])
    with pytest.raises(ConfigError, match="a strategy is needed"):
        RetiariiExperiment(DigitsMLPSpace(), evaluator, [])
    with pytest.raises(ConfigError, match="ModelSpace"):
        Experiment(object(), evaluator, Random())
    with pytest.raises(ConfigError, match="not an experiment directory"):
        Experiment.load(tmp_path)


def test_nnis_argument_order_runs_and_resume_keeps_the_budget(cluster: Backend, tmp_path: Path) -> None:
    """NNI 2.x: ``RetiariiExperiment(base_model, evaluator, mutators, strategy)``, mutators None or [];
    before, the order was retia's and [] was refused. A resumed run keeps the budget it was started
    with: before, a 1-trial experiment resumed ran up to run()'s default of 20."""
    evaluator = FunctionalEvaluator(fits.arch_score, steps=2)
    on: dict[str, Any] = {"address": cluster.address, "key_file": processes(cluster).key_file, "live": False}
    for mutators, name in ((None, "none"), ([], "empty")):
        exp = RetiariiExperiment(DigitsMLPSpace(), evaluator, mutators, Random(seed=2), path=tmp_path / name)
        assert [r.state for r in exp.run(max_trials=1, **on)] == ["SUCCEEDED"]
    resumed = RetiariiExperiment.resume(tmp_path / "none", **on)  # finished: resumes to nothing
    assert [r.key for r in resumed.results] == [0]


def test_stop_mid_run_cancels_what_is_in_flight_and_returns(cluster: Backend, tmp_path: Path) -> None:
    """``stop()`` from another thread, once two trials run: no new trial, those in flight cancelled
    and recorded so, ``run`` returns. Before, there was no stop()."""
    evaluator = FunctionalEvaluator(fits.arch_score, steps=40, delay=0.1)
    exp = Experiment(DigitsMLPSpace(), evaluator, Random(seed=4), path=tmp_path / "e")
    done = threading.Event()

    def stop_when_two_run() -> None:
        while not done.is_set() and len(exp.record.results) < 2:
            time.sleep(0.05)
        time.sleep(1.0)  # they are under way
        exp.stop()

    stopper = threading.Thread(target=stop_when_two_run)
    stopper.start()
    try:
        results = exp.run(
            max_trials=10,
            concurrency=2,
            address=cluster.address,
            key_file=processes(cluster).key_file,
            live=False,
        )
    finally:
        done.set()
        stopper.join()
    assert len(results) == 2 and {r.state for r in results} == {"CANCELLED"}
    assert all("Experiment.stop()" in (r.reason or "") for r in results)
    assert [r.state for r in Experiment.load(tmp_path / "e").results] == ["CANCELLED", "CANCELLED"]


_RUNNER = """
import sys
sys.path.insert(0, {root!r})
from retia import Experiment, FunctionalEvaluator
from retia.strategy import Random
from tests.common.spaces import DigitsMLPSpace
from tests.integration import fits

if sys.argv[1] == "start":
    evaluator = FunctionalEvaluator(fits.arch_score, steps=3, delay=0.3)
    exp = Experiment(DigitsMLPSpace(), evaluator, Random(seed=7), path={path!r})
    exp.run(max_trials=8, concurrency=2, workers=2, live=False)
else:
    Experiment.resume({path!r}, max_trials=8, concurrency=2, workers=2, live=False)
"""


def test_killed_experiment_resumes_without_losing_or_rerunning(tmp_path: Path) -> None:
    path = tmp_path / "exp"
    script = tmp_path / "run.py"
    script.write_text(_RUNNER.format(root=str(Path(__file__).parents[2]), path=str(path)))
    proc = subprocess.Popen(
        [sys.executable, str(script), "start"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 180
    results_file = path / "trials.jsonl"
    while not (results_file.exists() and results_file.read_text().count('"event": "result"') >= 3):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the experiment made no progress"
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    before = Experiment.load(path).results
    finished_before = {r.key: r for r in before if r.state == "SUCCEEDED"}
    assert len(finished_before) >= 3

    subprocess.run([sys.executable, str(script), "resume"], check=True, timeout=240, capture_output=True)
    after = Experiment.load(path).results
    assert [r.key for r in after] == list(range(8))
    assert len({r.trial_id for r in after}) == 8
    assert all(r.state == "SUCCEEDED" and r.final == fits.known_score(r.arch) for r in after)
    for key, result in finished_before.items():
        assert after[key].attempt == result.attempt == 1  # finished trials were not run again
        assert after[key].arch == result.arch
    lines = (path / "trials.jsonl").read_text().splitlines()
    assert sum('"event": "submit"' in line for line in lines) == 8  # each trial submitted once
