"""retia.lightning as NNI's users write it: fit(), fit_kwargs, datamodule, detect_interrupt,
evaluators built without data, the public modules to subclass, export_onnx paths, train_*
metrics and the bare metric NNI reports. Real (small) training on digits and diabetes."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, cast

import pytest
import pytorch_lightning
import torch
import torchmetrics
from torch import nn

import retia
import retia.lightning as pl
from retia import FunctionalEvaluator
from retia.client.backend import Backend
from retia.datasets import DiabetesDataset, DigitsDataset
from retia.errors import ConfigError
from tests.integration import fits
from tests.integration.lightning_modules import DartsClassificationModule, RecordFit

pytestmark = pytest.mark.timeout(120)

Loader = torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]]
Split = Literal["train", "val", "all"]


def digits(split: Split, batch_size: int = 64) -> Loader:
    return pl.DataLoader(retia.trace(DigitsDataset)(split), batch_size=batch_size, shuffle=split == "train")


def diabetes(split: Split, batch_size: int = 32) -> Loader:
    return pl.DataLoader(retia.trace(DiabetesDataset)(split), batch_size=batch_size, shuffle=split == "train")


def mlp(hidden: int = 32, inputs: int = 64, outputs: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


def quiet_trainer(**kwargs: Any) -> pytorch_lightning.Trainer:
    """A user's Trainer with no logger of Lightning's choosing (its TensorBoard one warns)."""
    options: dict[str, Any] = {"logger": False, "enable_checkpointing": False, **kwargs}
    return pl.Trainer(**options)


def epochs_logged(out: Path) -> list[dict[str, str]]:
    """The rows of the CSV logger's metrics.csv in a trial's output directory."""
    path = next(out.glob("lightning_logs/version_0/metrics.csv"))
    with path.open() as f:
        return list(csv.DictReader(f))


# -- 1. fit(model): NNI's name, through retia's evaluate path --------------------------------------


def train_with_nnis_fit(model_cls: Callable[[], nn.Module], train: Loader, val: Loader) -> None:
    """NNI's pattern inside a trial function: build an evaluator and fit the model with it."""
    with pytest.warns(DeprecationWarning, match="fit"):
        evaluator = pl.Classification(
            learning_rate=3e-3, train_dataloaders=train, val_dataloaders=val, max_epochs=2
        )
        evaluator.fit(model_cls())


def test_fit_trains_in_this_process_and_reports_to_the_running_evaluation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fit() is evaluate() under NNI's name: alone it returns the result (its files in a fresh run
    directory); inside a running evaluation (a FunctionalEvaluator's trial function, as NNI users
    call it) the reports go to that evaluation, the files in its directory."""
    monkeypatch.setenv("RETIA_RUNS_DIR", str(tmp_path / "runs"))
    evaluator = pl.Classification(
        learning_rate=3e-3, train_dataloaders=digits("train"), val_dataloaders=digits("val"), max_epochs=2
    )
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=r"fit\(model\) is NNI's name: call evaluate"):
        alone = evaluator.fit(mlp())
    assert len(alone.intermediates) == 2 and alone.final == alone.intermediates[-1]
    assert cast(dict[str, float], alone.final)["val_acc"] > 0.5
    assert alone.output_dir.parent == tmp_path / "runs"
    assert list(alone.output_dir.glob("lightning_logs/version_0/metrics.csv"))

    outer = FunctionalEvaluator(train_with_nnis_fit, train=digits("train"), val=digits("val"))
    torch.manual_seed(0)
    nested = outer.evaluate(mlp, output_dir=tmp_path / "trial")
    assert len(nested.intermediates) == 2  # Lightning's reports reached the trial's reporter
    assert cast(dict[str, float], nested.final)["val_acc"] > 0.5
    assert list((tmp_path / "trial").glob("lightning_logs/version_0/metrics.csv"))
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [alone.output_dir.name]


# -- 2. fit_kwargs, datamodule, detect_interrupt -------------------------------------------------


class DigitsData(pytorch_lightning.LightningDataModule):
    """NNI's other way to give data: a LightningDataModule."""

    def train_dataloader(self) -> Loader:
        return torch.utils.data.DataLoader(DigitsDataset("train"), batch_size=64, shuffle=True)

    def val_dataloader(self) -> Loader:
        return torch.utils.data.DataLoader(DigitsDataset("val"), batch_size=256)


@pytest.mark.filterwarnings("ignore:The dirpath has changed")  # Lightning's: another trial's directory
def test_fit_kwargs_resume_from_a_checkpoint_with_a_datamodule(tmp_path: Path) -> None:
    """``fit_kwargs={'ckpt_path': ...}`` reaches trainer.fit: the second run resumes after the first's
    two epochs and trains (and reports) only the third, on a datamodule's data."""
    first = pl.Classification(
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val"),
        max_epochs=2,
        enable_checkpointing=True,
    )
    torch.manual_seed(0)
    before = first.evaluate(mlp, output_dir=tmp_path / "first")
    (ckpt,) = (tmp_path / "first").rglob("*.ckpt")

    resumed = pl.Lightning(
        pl.ClassificationModule(),
        quiet_trainer(max_epochs=3, enable_checkpointing=True),  # the checkpoint was written with one
        datamodule=DigitsData(),
        fit_kwargs={"ckpt_path": str(ckpt)},
    )
    resumed = retia.load(retia.dump(resumed))
    after = resumed.evaluate(mlp, output_dir=tmp_path / "second")
    assert len(after.intermediates) == 1  # epoch 3 only: epochs 1 and 2 came from the checkpoint
    acc_before = cast(dict[str, float], before.final)["val_acc"]
    assert cast(dict[str, float], after.final)["val_acc"] > max(0.5, acc_before - 0.1)  # trained weights

    with pytest.raises(ConfigError, match=r"fit_kwargs \['datamodule', 'max_epochs'\]"):
        pl.Lightning(pl.ClassificationModule(), fit_kwargs={"max_epochs": 3, "datamodule": DigitsData()})


class InterruptAfterFirstEpoch(pytorch_lightning.Callback):
    """Ctrl+C after the first epoch, as a real SIGINT to this process."""

    def on_train_epoch_end(self, trainer: pytorch_lightning.Trainer, pl_module: Any) -> None:
        os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("detect", [True, False])
def test_detect_interrupt(tmp_path: Path, detect: bool) -> None:
    """Lightning answers Ctrl+C in fit with a graceful shutdown, SIGINT ignored for good and
    sys.exit(1). With detect_interrupt (NNI's default) the KeyboardInterrupt reaches the caller;
    without, the training just ends, with no final result. Ctrl+C works again after, either way.
    (Python's own handler first: a shell starts background jobs with SIGINT ignored.)"""
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_once(tmp_path, detect)
    finally:
        signal.signal(signal.SIGINT, inherited)


def _interrupt_once(tmp_path: Path, detect: bool) -> None:
    handler = signal.getsignal(signal.SIGINT)
    evaluator = pl.Lightning(
        pl.ClassificationModule(),
        quiet_trainer(max_epochs=5, callbacks=[InterruptAfterFirstEpoch()]),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val"),
        detect_interrupt=detect,
    )
    if detect:
        with pytest.raises(KeyboardInterrupt, match="detect_interrupt=True"):
            evaluator.evaluate(mlp, output_dir=tmp_path / "run")
    else:
        result = evaluator.evaluate(mlp, output_dir=tmp_path / "run")
        assert result.final is None and len(result.intermediates) == 1
    assert signal.getsignal(signal.SIGINT) is handler


# -- 3. evaluators built without data ------------------------------------------------------------


def test_built_without_data_and_run_so_is_a_clear_error(tmp_path: Path) -> None:
    """NNI builds evaluators without data (one-shot strategies give it later); running one without
    validation data is refused before any training, saying what to pass."""
    built = [
        pl.Lightning(pl.ClassificationModule(), quiet_trainer(max_epochs=1)),
        pl.Classification(max_epochs=1),
        pl.Regression(train_dataloaders=diabetes("train"), max_epochs=1),
    ]
    for evaluator in built:
        evaluator = retia.load(retia.dump(evaluator))
        with pytest.raises(ConfigError, match=r"no validation data.*pass val_dataloaders=retia\.lightning"):
            evaluator.evaluate(mlp, output_dir=tmp_path / "run")
    assert not list((tmp_path / "run").rglob("*.csv"))  # nothing trained
    late = pl.Classification(max_epochs=1, num_classes=10)
    late.val_dataloaders = digits("val")  # given later, as a one-shot strategy would
    assert cast(dict[str, float], late.evaluate(mlp, output_dir=tmp_path / "late").final)["val_acc"] >= 0.0


# -- 4. the public modules, subclassed as NNI's DARTS tutorial does ------------------------------


def darts_evaluator(epochs: int = 3) -> pl.Lightning:
    return pl.Lightning(
        DartsClassificationModule(0.1, 3e-4, 0.0, max_epochs=epochs),
        quiet_trainer(max_epochs=epochs, callbacks=[RecordFit()]),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
    )


def test_nnis_darts_module_pattern_trains_after_a_round_trip(tmp_path: Path) -> None:
    evaluator = retia.load(retia.dump(darts_evaluator()))  # the module travels by value
    torch.manual_seed(0)
    result = evaluator.evaluate(mlp, output_dir=tmp_path / "run")
    final = cast(dict[str, float], result.final)
    assert len(result.intermediates) == 3 and final["default"] == final["val_acc"] > 0.8
    record = json.loads((tmp_path / "run" / "fit.json").read_text())
    assert record["optimizer"] == "SGD" and record["schedulers"] == 1
    assert record["lr"] < 0.1  # the cosine schedule stepped
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(record["metrics"])


def test_nnis_darts_module_pattern_runs_on_a_worker(cluster: Backend) -> None:
    trial = cluster.submit(fits.DigitsMLP, darts_evaluator(epochs=2))
    final = trial.result(timeout=100)
    assert isinstance(final, dict) and final["default"] == final["val_acc"] > 0.6
    assert len(trial.intermediates) == 2
    assert trial.output_dir is not None and (trial.output_dir / "fit.json").is_file()


def test_supervised_learning_module_takes_metric_classes_or_instances(tmp_path: Path) -> None:
    """NNI 2.x passed metric classes, NNI 3 instances; the first is the default, each is logged
    as val_<name> and train_<name>."""
    module = pl.SupervisedLearningModule(
        nn.MSELoss,
        {"mae": torchmetrics.MeanAbsoluteError, "mse": torchmetrics.MeanSquaredError()},
        learning_rate=1e-2,
    )
    evaluator = pl.Lightning(
        module,
        quiet_trainer(max_epochs=2),
        train_dataloaders=diabetes("train"),
        val_dataloaders=diabetes("val"),
    )
    final = cast(
        dict[str, float], evaluator.evaluate(lambda: mlp(16, 10, 1), output_dir=tmp_path / "run").final
    )
    assert set(final) == {"default", "val_loss", "val_mae", "val_mse"}
    assert final["default"] == final["val_mae"] and abs(final["val_mse"] - final["val_loss"]) < 1e-5
    with pytest.raises(ConfigError, match="torchmetrics metrics"):
        pl.SupervisedLearningModule(nn.MSELoss, {"mae": nn.L1Loss()})  # type: ignore[dict-item]  # on purpose


# -- 5. export_onnx: a path, validation only, a failed export -----------------------------------


def test_export_onnx_to_a_path_after_validation_only_and_a_failed_export_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = mlp(16, 10, 1)
    evaluator = pl.Regression(
        train_dataloaders=diabetes("train"),
        val_dataloaders=diabetes("val"),
        max_epochs=1,
        export_onnx="nested/net.onnx",
    )
    evaluator.evaluate(model, output_dir=tmp_path / "run")
    path = tmp_path / "run" / "nested" / "net.onnx"  # a relative path is inside the output directory
    x = DiabetesDataset("val").x[:5]
    (got,) = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        assert abs(got - model.eval()(x).numpy()).max() < 1e-4

    validate_only = pl.Classification(val_dataloaders=digits("val"), export_onnx=True)
    validate_only.evaluate(mlp, output_dir=tmp_path / "val")
    assert (tmp_path / "val" / "model.onnx").is_file()

    (tmp_path / "a-file").write_text("")
    broken = pl.Classification(val_dataloaders=digits("val"), export_onnx=tmp_path / "a-file" / "m.onnx")
    with caplog.at_level(logging.WARNING, logger="retia._lightning_support"):
        result = broken.evaluate(mlp, output_dir=tmp_path / "broken")
    assert result.final is not None  # the trial keeps its metric
    assert "ONNX export of Sequential" in caplog.text and "a-file" in caplog.text


# -- 6. train_* metrics --------------------------------------------------------------------------


def test_train_loss_and_the_training_metric_are_logged_once_per_epoch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    pl.Classification(
        train_dataloaders=digits("train"), val_dataloaders=digits("val"), max_epochs=3
    ).evaluate(mlp, output_dir=tmp_path / "c")
    train_rows = [row for row in epochs_logged(tmp_path / "c") if row["train_acc"]]
    assert [row["epoch"] for row in train_rows] == ["0", "1", "2"]
    accs = [float(row["train_acc"]) for row in train_rows]
    assert 0.0 < accs[0] < accs[-1] <= 1.0 and all(row["train_loss"] for row in train_rows)

    pl.Regression(
        train_dataloaders=diabetes("train"), val_dataloaders=diabetes("val"), max_epochs=2
    ).evaluate(lambda: mlp(16, 10, 1), output_dir=tmp_path / "r")
    rows = [row for row in epochs_logged(tmp_path / "r") if row["train_mse"]]
    assert len(rows) == 2 and all(abs(float(r["train_mse"]) - float(r["train_loss"])) < 1e-4 for r in rows)


# -- 7. the bare metric NNI reports --------------------------------------------------------------


class BareClassification(pl.Classification):
    """What retia.nni's Classification does: report val_acc alone, as NNI's does."""

    bare_metric = True


def test_bare_metric_reports_the_default_value_alone(tmp_path: Path) -> None:
    evaluator = retia.load(
        retia.dump(
            BareClassification(
                learning_rate=3e-3,
                train_dataloaders=digits("train"),
                val_dataloaders=digits("val"),
                max_epochs=2,
            )
        )
    )
    assert type(evaluator) is BareClassification
    torch.manual_seed(0)
    result = evaluator.evaluate(mlp, output_dir=tmp_path / "run")
    assert all(isinstance(value, float) for value in [*result.intermediates, result.final])
    assert len(result.intermediates) == 2 and result.final == result.intermediates[-1]
    assert 0.5 < cast(float, result.final) <= 1.0


class NnisSelfReportingModule(pl.ClassificationModule):
    """An NNI-style module that reports for itself (NNI's Lightning evaluator reports nothing)."""

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            retia.report_intermediate_result(float(self.trainer.callback_metrics["val_loss"]))

    def on_fit_end(self) -> None:
        retia.report_final_result(float(self.trainer.callback_metrics["val_loss"]))


class ModuleReports(pl.Lightning):
    """What retia.nni's Lightning does with a module of the user's: no reports of its own."""

    def _auto_report(self) -> bool:
        return False


def test_with_auto_report_off_every_report_is_the_modules(tmp_path: Path) -> None:
    """Without it, the module's reports and the evaluator's would both be sent: a second final
    result, refused. Train-only data is then allowed too (the module decides what to report)."""
    evaluator = ModuleReports(
        NnisSelfReportingModule(),
        quiet_trainer(max_epochs=2),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val"),
    )
    result = retia.load(retia.dump(evaluator)).evaluate(mlp, output_dir=tmp_path / "run")
    assert len(result.intermediates) == 2 and all(isinstance(v, float) for v in result.intermediates)
    assert isinstance(result.final, float) and result.final < result.intermediates[0]  # val_loss fell
    train_only = ModuleReports(pl.ClassificationModule(), quiet_trainer(max_epochs=1), digits("train"))
    with pytest.warns(UserWarning, match="no `val_dataloader`"):  # Lightning's, on train-only data
        assert train_only.evaluate(mlp, output_dir=tmp_path / "train-only").final is None
