"""One-shot strategies on the user's own evaluator: DARTS, second-order DARTS, GumbelDARTS and
RandomOneShot train a real supernet on digits, in this process and as a trial on workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from oneshot_spaces import (
    USEFUL,
    EncoderChoices,
    MyModule,
    UselessOpRegressionSpace,
    UselessOpSpace,
    diabetes,
    digits,
)

import retia
import retia.lightning as pl
import retia.nn as nn
from retia.client.backend import Backend
from retia.errors import ConfigError
from retia.oneshot import (
    ARCHITECTURE_FILE,
    DARTS,
    ENAS,
    GumbelDARTS,
    OneShotEvaluator,
    OneShotStrategy,
    Proxyless,
    RandomOneShot,
    arch_from_metric,
    supernet_of,
)
from retia.optimizers import split_optimizers
from tests.clusters import on_cluster

pytestmark = pytest.mark.timeout(120)


def classification(epochs: int = 6) -> pl.Classification:
    return pl.Classification(
        learning_rate=0.01,
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
        max_epochs=epochs,
    )


def run(strategy: OneShotStrategy, evaluator: pl.Lightning, tmp_path: Path) -> retia.EvaluationResult:
    torch.manual_seed(0)
    evaluation: retia.EvaluationResult = OneShotEvaluator(evaluator, strategy).evaluate(
        supernet_of(UselessOpSpace()), output_dir=tmp_path
    )
    return evaluation


STRATEGIES = {  # each with the epochs it takes
    "darts": (DARTS(arc_learning_rate=3e-3, seed=1), 6),
    "darts-second-order": (DARTS(arc_learning_rate=3e-3, unrolled=True, seed=2), 6),
    "gumbel": (GumbelDARTS(arc_learning_rate=3e-3, use_temp_anneal=True, seed=3), 6),
    # the controller must first find the one all-trainable path among 16 (any zero op scores chance)
    "enas": (
        ENAS(ctrl_learning_rate=1e-2, ctrl_steps=4, ctrl_steps_aggregate=4, baseline_decay=0.9, seed=0),
        12,
    ),
    "proxyless": (Proxyless(arc_learning_rate=3e-2, seed=0), 6),
}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_one_shot_strategies_avoid_every_useless_op(name: str, tmp_path: Path) -> None:
    strategy, epochs = STRATEGIES[name]
    result = run(strategy, classification(epochs), tmp_path)
    final = cast(dict[str, float], result.final)
    arch = arch_from_metric(final, UselessOpSpace().search_space())
    assert arch == USEFUL, final
    assert json.loads((tmp_path / ARCHITECTURE_FILE).read_text()) == USEFUL
    assert final["default"] == final["val_acc"] > 0.3  # the chosen architecture's validation (chance: 0.1)
    assert len(result.intermediates) == epochs and all(
        "arch/b0" in cast(dict[str, float], m) for m in result.intermediates
    )


@pytest.mark.parametrize("name", [name for name in STRATEGIES if name != "darts-second-order"])
def test_the_users_own_module_steps_its_schedule_and_sets_its_reports_aside(
    name: str, tmp_path: Path
) -> None:
    strategy, epochs = STRATEGIES[name]
    evaluator = pl.Lightning(
        MyModule(),
        pl.Trainer(max_epochs=epochs, logger=False, enable_checkpointing=False),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
    )
    result = run(strategy, evaluator, tmp_path)
    final = cast(dict[str, float], result.final)
    assert arch_from_metric(final, UselessOpSpace().search_space()) == USEFUL, final
    assert final["default"] == final["val_accuracy"] > 0.3 and "val_ce" in final
    assert all(isinstance(m, dict) for m in result.intermediates)  # the module's own -1.0 set aside
    lr, epochs_started = (tmp_path / "my_module.txt").read_text().split()
    assert float(lr) == pytest.approx(0.01 * 0.8**epochs) and int(epochs_started) == epochs


def test_darts_with_regression_avoids_the_useless_ops(tmp_path: Path) -> None:
    evaluator = pl.Regression(
        learning_rate=0.01,
        train_dataloaders=diabetes("train"),
        val_dataloaders=diabetes("val", 128),
        max_epochs=8,
    )
    torch.manual_seed(0)
    result = OneShotEvaluator(evaluator, DARTS(arc_learning_rate=1e-2, seed=0)).evaluate(
        supernet_of(UselessOpRegressionSpace()), output_dir=tmp_path
    )
    final = cast(dict[str, float], result.final)
    assert arch_from_metric(final, UselessOpRegressionSpace().search_space()) == {"r0": "lin", "r1": "lin"}, (
        final
    )
    # the chosen path's own error, as the supernet's weights give it (DARTS trained them mixed at
    # about half strength, so a regression's scale is off until retrained: the discretization gap)
    assert final["default"] == final["val_mse"] and len(result.intermediates) == 8


def test_the_seed_pages_autoencoder_runs_under_darts(tmp_path: Path) -> None:
    """The page's LightningModule (``self.model`` its encoder, its own nni.report_* calls) under
    DARTS: the reconstruction loss trains the architecture, which keeps the input."""
    import nni_seed as seed

    import retia.nni.retiarii.evaluator.pytorch.lightning as nni_pl

    torch.manual_seed(0)
    lightning = nni_pl.Lightning(
        seed.AutoEncoder(),
        nni_pl.Trainer(max_epochs=4, logger=False, enable_progress_bar=False, enable_checkpointing=False),
        train_dataloaders=nni_pl.DataLoader(
            retia.trace(seed.DigitsAsMNIST)(train=True, limit=512), batch_size=64
        ),
        val_dataloaders=nni_pl.DataLoader(
            retia.trace(seed.DigitsAsMNIST)(train=False, limit=256), batch_size=128
        ),
    )
    result = OneShotEvaluator(lightning, DARTS(arc_learning_rate=1e-2, seed=0)).evaluate(
        supernet_of(EncoderChoices()), output_dir=tmp_path
    )
    final = cast(dict[str, float], result.final)
    assert arch_from_metric(final, EncoderChoices().search_space()) != {"encoder": "forget"}, final
    # every report is the trial's (the val_loss the module logs, with the architecture); the
    # module's own nni.report_* floats are set aside
    assert len(result.intermediates) == 4
    assert all(
        isinstance(m, dict) and "arch/encoder" in m and m["default"] == m["val_loss"]
        for m in result.intermediates
    )


def test_random_one_shot_trains_every_path_and_validates_a_sampled_one(tmp_path: Path) -> None:
    result = run(RandomOneShot(seed=0), classification(epochs=4), tmp_path)
    final = cast(dict[str, float], result.final)
    arch = arch_from_metric(final, UselessOpSpace().search_space())
    assert arch is not None and set(arch) == set(USEFUL)
    archs = [arch_from_metric(m, UselessOpSpace().search_space()) for m in result.intermediates]
    assert len({json.dumps(a, sort_keys=True) for a in archs}) > 1  # a new path each validation


def test_a_one_shot_strategy_asks_for_trial_zero_only() -> None:
    strategy = DARTS()
    strategy.attach(UselessOpSpace().search_space())
    assert strategy.ask(1) is None  # a resumed experiment: trial 0 is in flight, re-attached
    assert strategy.ask(0) == {} and strategy.ask(0) is None and strategy.exhausted


def test_split_optimizers_takes_every_lightning_return_shape() -> None:
    p = [torch.nn.Parameter(torch.zeros(1))]
    a, b = torch.optim.SGD(p, lr=1.0), torch.optim.Adam(p)
    sched = torch.optim.lr_scheduler.StepLR(a, 1)
    assert split_optimizers(a) == ([a], [])
    assert split_optimizers([a, b]) == ([a, b], [])
    opts, scheds = split_optimizers(([a], [sched]))
    assert opts == [a] and [s.scheduler for s in scheds] == [sched] and scheds[0].interval == "epoch"
    opts, scheds = split_optimizers(
        [{"optimizer": a, "lr_scheduler": {"scheduler": sched, "interval": "step"}}, {"optimizer": b}]
    )
    assert opts == [a, b] and scheds[0].interval == "step"
    assert split_optimizers(None) == ([], [])
    with pytest.raises(ConfigError, match="without 'optimizer'"):
        split_optimizers({"lr_scheduler": sched})
    with pytest.raises(ConfigError, match="must return an optimizer"):
        split_optimizers("adam")


class WidthSpace(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, nn.ValueChoice([16, 32], label="width"))
        self.out = nn.Linear(self.fc.out_features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.fc(x))
        return out


def test_what_a_one_shot_run_cannot_do_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="arc_learning_rate must be a number > 0, got 0"):
        DARTS(arc_learning_rate=0)
    with pytest.raises(ConfigError, match="ctrl_steps must be an int >= 1, got 0"):
        ENAS(ctrl_steps=0)
    with pytest.raises(ConfigError, match="warmup_epochs must be an int >= 0, got -1"):
        Proxyless(warmup_epochs=-1)
    with pytest.raises(ConfigError, match="FunctionalEvaluator's fit cannot be driven"):
        retia.Experiment(UselessOpSpace(), retia.FunctionalEvaluator(lambda m: None), DARTS())
    no_val = pl.Classification(train_dataloaders=digits("train"))
    with pytest.raises(ConfigError, match="pass val_dataloaders="):
        retia.Experiment(UselessOpSpace(), no_val, DARTS())
    clipped = pl.Classification(
        train_dataloaders=digits("train"), val_dataloaders=digits("val"), gradient_clip_val=5.0
    )
    with pytest.raises(ConfigError, match="gradient_clip_val=5.0 does not apply"):
        retia.Experiment(UselessOpSpace(), clipped, DARTS())
    with pytest.raises(ConfigError, match="cannot relax 'width'.*RandomOneShot"):
        run_width = OneShotEvaluator(classification(1), DARTS())
        run_width.evaluate(supernet_of(WidthSpace()), output_dir=tmp_path)
    # the sampling strategy runs any width, as a slice of the largest
    result = OneShotEvaluator(classification(1), RandomOneShot(seed=0)).evaluate(
        supernet_of(WidthSpace()), output_dir=tmp_path / "random"
    )
    assert result.final is not None


def test_an_experiment_trains_the_supernet_as_one_trial_on_a_worker(cluster: Backend, tmp_path: Path) -> None:
    experiment = retia.Experiment(  # (seeded: the supernet trains as the in-process tests' do, every run)
        UselessOpSpace(), classification(), DARTS(arc_learning_rate=3e-3, seed=1), path=tmp_path / "e", seed=0
    )
    results = experiment.run(max_trials=5, **on_cluster(cluster))
    assert [r.state for r in results] == ["SUCCEEDED"], [r.reason for r in results]
    assert results[0].arch == USEFUL and len(results[0].intermediates) == 6
    assert experiment.export_top_models() == [USEFUL]
    assert json.loads((Path(results[0].output_dir) / ARCHITECTURE_FILE).read_text()) == USEFUL
    [model] = experiment.export_top_models(formatter="instance")
    assert isinstance(model(torch.zeros(2, 64)), torch.Tensor)
    loaded = retia.Experiment.load(tmp_path / "e")  # after the fact, from the directory
    assert loaded.export_top_models() == [USEFUL]


class TwoScores(pl.LightningModule):
    """A module whose validation logs two metrics, neither the default one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("acc", (logits.argmax(1) == y).float().mean())
        self.log("ce", torch.nn.functional.cross_entropy(logits, y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_enas_takes_its_reward_from_the_metric_named_and_else_says_which_it_saw(tmp_path: Path) -> None:
    def evaluator() -> pl.Lightning:
        return pl.Lightning(
            TwoScores(),
            pl.Trainer(max_epochs=1, limit_train_batches=3, logger=False, enable_checkpointing=False),
            train_dataloaders=digits("train"),
            val_dataloaders=digits("val", 256),
        )

    with pytest.raises(ConfigError, match=r"logged \['acc', 'ce'\].*reward_metric_name"):
        run(ENAS(seed=0), evaluator(), tmp_path / "none")
    with pytest.raises(ConfigError, match=r"logged \['acc', 'ce'\], not reward_metric_name='f1'"):
        run(ENAS(reward_metric_name="f1", seed=0), evaluator(), tmp_path / "f1")
    result = run(ENAS(reward_metric_name="acc", seed=0), evaluator(), tmp_path / "acc")
    assert arch_from_metric(cast(dict[str, float], result.final), UselessOpSpace().search_space()) is not None


def test_enas_searches_a_width_inside_a_layer(tmp_path: Path) -> None:
    result = OneShotEvaluator(classification(2), ENAS(ctrl_steps_aggregate=2, seed=0)).evaluate(
        supernet_of(WidthSpace()), output_dir=tmp_path
    )
    final = cast(dict[str, float], result.final)
    assert arch_from_metric(final, WidthSpace().search_space()) in ({"width": 16}, {"width": 32})
    assert final["default"] == final["val_acc"] > 0.1
