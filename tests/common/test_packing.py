"""retia.packing: candidates trained together give what each gives alone with its seed; one that
diverges, raises or is stopped leaves the pack, and the others train on undisturbed."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy
import pytest
import pytorch_lightning
import torch
import torch.nn.functional as F
from torch import nn

import retia
import retia.lightning as pl
from retia.datasets import DiabetesDataset, DigitsDataset, Split
from retia.errors import ConfigError
from retia.evaluator import EvaluationResult
from retia.packing import NonFiniteLoss, PackedOutcome, unpackable
from tests.integration.pack_models import BackwardRaises, Diverges, Raises

pytestmark = pytest.mark.timeout(180)


def digits(split: Split, batch_size: int = 64) -> Any:
    return pl.DataLoader(retia.trace(DigitsDataset)(split), batch_size=batch_size, shuffle=split == "train")


def classification(**kwargs: Any) -> pl.Classification:
    return pl.Classification(train_dataloaders=digits("train"), val_dataloaders=digits("val", 256), **kwargs)


def small() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.Dropout(0.2), nn.ReLU(), nn.Linear(32, 10))


def wide() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 96), nn.Dropout(0.2), nn.ReLU(), nn.Linear(96, 10))


def solo_and_packed(
    evaluator: pl.Lightning, models: Sequence[Any], seeds: Sequence[int], tmp_path: Path, **kwargs: Any
) -> tuple[list[EvaluationResult], list[tuple[EvaluationResult, PackedOutcome]]]:
    solo = [
        evaluator.evaluate(model, seed=seed, output_dir=tmp_path / f"solo-{i}")
        for i, (model, seed) in enumerate(zip(models, seeds))
    ]
    dirs = [tmp_path / f"packed-{i}" for i in range(len(models))]
    return solo, evaluator.evaluate_packed(models, seeds=seeds, output_dirs=dirs, **kwargs)


def assert_same(alone: EvaluationResult, packed: EvaluationResult) -> None:
    assert packed.final is not None and alone.final is not None
    assert packed.final == pytest.approx(alone.final, abs=1e-6)
    assert len(packed.intermediates) == len(alone.intermediates) > 0
    for a, b in zip(alone.intermediates, packed.intermediates):
        assert b == pytest.approx(a, abs=1e-6)


def test_classification_packed_equals_each_alone(tmp_path: Path) -> None:
    solo, packed = solo_and_packed(classification(max_epochs=3), [small, wide, small], [1, 2, 3], tmp_path)
    for alone, (result, outcome) in zip(solo, packed):
        assert outcome.error is None and not outcome.stopped
        assert_same(alone, result)
    assert solo[0].final != solo[2].final  # the seed decides (same model, other seed)
    for i in range(3):  # each candidate's own metrics file, as alone
        csv = "lightning_logs/version_0/metrics.csv"
        assert (tmp_path / f"packed-{i}" / csv).read_text() == (tmp_path / f"solo-{i}" / csv).read_text()


def test_regression_packed_equals_each_alone(tmp_path: Path) -> None:
    evaluator = pl.Regression(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(retia.trace(DiabetesDataset)("train"), batch_size=32, shuffle=True),
        val_dataloaders=pl.DataLoader(retia.trace(DiabetesDataset)("val"), batch_size=128),
        max_epochs=4,
    )

    def regressor() -> nn.Module:
        return nn.Sequential(nn.Linear(10, 16), nn.Dropout(0.1), nn.ReLU(), nn.Linear(16, 1))

    solo, packed = solo_and_packed(evaluator, [regressor, regressor], [4, 5], tmp_path)
    for alone, (result, outcome) in zip(solo, packed):
        assert outcome.error is None
        assert_same(alone, result)


class Custom(pl.LightningModule):
    """A user's module: its own optimizer and per-step scheduler, dropout in the model, a metric
    logged every step and one at epoch end, and a file of its own written when fit ends."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss: torch.Tensor = F.cross_entropy(self.model(x), y)
        self.steps += 1
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_acc", (self.model(x).argmax(-1) == y).float().mean())

    def on_validation_epoch_end(self) -> None:
        self.log("steps", float(self.steps))

    def configure_optimizers(self) -> Any:
        optimizer = torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=20, gamma=0.5)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_fit_end(self) -> None:
        with open(os.path.join(os.environ["RETIA_OUTPUT_DIR"], "weights.txt"), "w") as f:
            f.write(str(float(sum(p.detach().sum() for p in self.model.parameters()))))


def custom(**trainer: Any) -> pl.Lightning:
    options = {"max_epochs": 2, "logger": False, "enable_checkpointing": False, **trainer}
    return pl.Lightning(Custom(), pl.Trainer(**options), digits("train"), digits("val", 256))


def test_a_users_own_module_packed_equals_each_alone(tmp_path: Path) -> None:
    solo, packed = solo_and_packed(custom(), [small, wide, small], [7, 8, 9], tmp_path)
    for i, (alone, (result, outcome)) in enumerate(zip(solo, packed)):
        assert outcome.error is None
        assert_same(alone, result)
        assert isinstance(result.final, dict) and result.final["steps"] == 2 * 23  # 1,437 / 64 per epoch
        written = (tmp_path / f"packed-{i}" / "weights.txt").read_text()
        assert float(written) == pytest.approx(float((tmp_path / f"solo-{i}" / "weights.txt").read_text()))


def test_max_steps_counts_batches_not_candidates(tmp_path: Path) -> None:
    solo, packed = solo_and_packed(
        custom(max_steps=10, val_check_interval=5), [small, wide], [1, 2], tmp_path
    )
    for alone, (result, _) in zip(solo, packed):
        assert isinstance(result.final, dict) and result.final["steps"] == 10
        assert_same(alone, result)


class Drawing(pl.LightningModule):
    """A user's module whose steps draw from NumPy's and Python's global generators and whose
    optimizer is the candidate's own choice."""

    def __init__(self) -> None:
        super().__init__()
        self.drawn = 0.0

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        x, y = batch
        scale = 1 + 0.01 * float(numpy.random.rand()) + 0.01 * random.random()
        if batch_idx % 5 == 0:  # an odd count of Gaussians, now and then: NumPy keeps one aside
            scale += 0.01 * float(numpy.random.normal(size=3).sum())
        self.drawn += scale
        if getattr(self.model, "skips", False) and batch_idx % 4 == 0:
            return None  # skips the batch: no step
        loss: torch.Tensor = F.cross_entropy(self.model(x) * scale, y)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self.model(x)
        self.log("val_acc", (logits.argmax(-1) == y).float().mean())
        self.log("val_loss", F.cross_entropy(logits, y))
        self.log("drawn", self.drawn)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        make = getattr(self.model, "optimizer", lambda p: torch.optim.Adam(p, lr=3e-3))
        optimizer: torch.optim.Optimizer = make(self.parameters())
        return optimizer


def with_optimizer(
    make: Callable[[Any], torch.optim.Optimizer], skips: bool = False
) -> Callable[[], nn.Module]:
    def model() -> nn.Module:
        built = small()
        built.__dict__.update(optimizer=make, skips=skips)  # (read by Drawing)
        return built

    return model


class SparseBias(nn.Module):
    """A model with a sparse embedding, whose gradient Adam refuses: its trial fails, alone or packed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = small()
        self.bias = nn.Embedding(1, 10, sparse=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x) + self.bias(torch.zeros(len(x), dtype=torch.long))
        return out


@pytest.mark.filterwarnings("ignore:`training_step` returned `None`")  # (alone: the skipped batches)
def test_candidates_drawing_from_numpy_and_random_with_their_own_optimizers_equal_each_alone(
    tmp_path: Path,
) -> None:
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False)
    evaluator = pl.Lightning(Drawing(), trainer, digits("train"), digits("val", 256))
    models = [
        small,
        with_optimizer(lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1)),
        with_optimizer(lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), skips=True),
        with_optimizer(lambda p: torch.optim.RMSprop(p, lr=1e-3)),  # steps on its own in the pack
        SparseBias,
        wide,
    ]
    seeds = [11, 12, 13, 14, 15, 16]
    dirs = [tmp_path / f"p{i}" for i in range(len(models))]
    packed = evaluator.evaluate_packed(models, seeds=seeds, output_dirs=dirs)
    for i, (model, seed) in enumerate(zip(models, seeds)):
        result, outcome = packed[i]
        if model is SparseBias:
            assert isinstance(outcome.error, RuntimeError) and "sparse" in str(outcome.error)
            with pytest.raises(RuntimeError, match="sparse"):  # as alone
                evaluator.evaluate(model, seed=seed, output_dir=tmp_path / f"s{i}")
            continue
        assert outcome.error is None
        assert_same(evaluator.evaluate(model, seed=seed, output_dir=tmp_path / f"s{i}"), result)


def test_a_diverging_and_a_raising_candidate_fail_alone_forward_or_backward(tmp_path: Path) -> None:
    evaluator = classification(max_epochs=2)
    models: list[Callable[[], nn.Module]] = [small, Diverges, Raises, BackwardRaises, wide]
    packed = evaluator.evaluate_packed(
        models, seeds=[1, 2, 3, 4, 5], output_dirs=[tmp_path / f"p{i}" for i in range(5)]
    )
    (_, diverged), (_, raised), (_, in_backward) = packed[1], packed[2], packed[3]
    assert isinstance(diverged.error, NonFiniteLoss) and "nan" in str(diverged.error)
    assert isinstance(raised.error, RuntimeError) and "7th batch" in str(raised.error)
    assert "in forward" in raised.traceback
    assert isinstance(in_backward.error, RuntimeError) and "inplace operation" in str(in_backward.error)
    assert all(packed[i][0].final is None for i in (1, 2, 3))
    for i, model, seed in ((0, small, 1), (4, wide, 5)):
        assert packed[i][1].error is None
        assert_same(evaluator.evaluate(model, seed=seed, output_dir=tmp_path / f"s{i}"), packed[i][0])


def test_a_stopped_candidate_leaves_and_the_rest_finish(tmp_path: Path) -> None:
    evaluator = classification(max_epochs=2)
    asked = [0]

    def stop_after_10() -> str:
        asked[0] += 1
        return "pruned by the median rule" if asked[0] > 10 else ""

    from retia.packing import PackMember, fit_pack
    from retia.reporting import CollectingReporter

    reporters = [CollectingReporter() for _ in range(3)]
    members = [
        PackMember(small, 1, tmp_path / "a", reporters[0]),
        PackMember(wide, 2, tmp_path / "b", reporters[1], stop=stop_after_10),
        PackMember(small, 3, tmp_path / "c", reporters[2]),
    ]
    outcomes = fit_pack(evaluator, members)
    assert outcomes[1].stopped == "pruned by the median rule" and outcomes[1].error is None
    assert reporters[1].final_value is None and len(reporters[1].intermediates) == 0  # stopped in epoch 1
    for i, model, seed in ((0, small, 1), (2, small, 3)):
        alone = evaluator.evaluate(model, seed=seed, output_dir=tmp_path / f"s{i}")
        assert reporters[i].final_value == pytest.approx(alone.final, abs=1e-6)


def test_what_cannot_be_packed_says_why(tmp_path: Path) -> None:
    def fit(model: Any) -> None:
        retia.report_final_result(1.0)

    assert "user's own training loop" in unpackable(retia.FunctionalEvaluator(fit))
    assert "gradient_clip_val" in unpackable(classification(gradient_clip_val=1.0))
    assert "callbacks" in unpackable(custom(callbacks=[pytorch_lightning.callbacks.EarlyStopping("val_acc")]))

    class Manual(Custom):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    manual = pl.Lightning(Manual(), pl.Trainer(max_epochs=1, logger=False), digits("train"), digits("val"))
    assert "optimizes manually" in unpackable(manual)
    assert unpackable(classification()) == unpackable(custom()) == ""
    with pytest.raises(ConfigError, match="cannot be packed: .*optimizes manually"):
        manual.evaluate_packed([small], seeds=[1], output_dirs=[tmp_path / "m"])
    with pytest.raises(ConfigError, match="one seed per model"):
        classification().evaluate_packed(
            [small, wide], seeds=[1], output_dirs=[tmp_path / "x", tmp_path / "y"]
        )
