"""retia.lightning: real (small) training on scikit-learn's digits and diabetes, no mocks."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Literal, cast

import pytest
import pytorch_lightning
import torch
import torch.nn.functional as F
from torch import nn

import retia
import retia.lightning as pl
from retia.datasets import DiabetesDataset, DigitsDataset
from retia.errors import ConfigError

pytestmark = pytest.mark.timeout(120)


def digits(
    split: Literal["train", "val", "all"], batch_size: int = 32
) -> torch.utils.data.DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    return pl.DataLoader(retia.trace(DigitsDataset)(split), batch_size=batch_size, shuffle=split == "train")


def mlp(hidden: int = 64, inputs: int = 64, outputs: int = 10) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, outputs))


class Encoder(nn.Module):
    """The searched part of the seed's AutoEncoder example: 64 pixels down to 3 numbers."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class AutoEncoder(pl.LightningModule):
    """The seed's example: ``self.model`` is the searched encoder, the decoder is fixed; no report calls."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, _ = batch
        loss = F.mse_loss(self.decoder(self.model(x)), x)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, _ = batch
        self.log("val_loss", F.mse_loss(self.decoder(self.model(x)), x))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def test_public_names_and_import_retia_stays_light() -> None:
    assert set(pl.__all__) == {
        "LightningModule",
        "Lightning",
        "Classification",
        "Regression",
        "SupervisedLearningModule",
        "ClassificationModule",
        "RegressionModule",
        "DataLoader",
        "Trainer",
    }
    code = "import sys, retia; assert 'torch' not in sys.modules and 'pytorch_lightning' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_set_model_instantiates_a_class() -> None:
    module = AutoEncoder()
    module.set_model(Encoder)
    assert isinstance(module.model, Encoder)
    with pytest.raises(ConfigError, match="torch.nn.Module"):
        module.set_model(lambda: "not a model")  # type: ignore[arg-type, return-value]  # on purpose


@pytest.mark.filterwarnings("ignore:.*tensorboardX.*")  # the user's own Trainer(), built by the test
def test_autoencoder_example_reports_val_loss(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    evaluator = pl.Lightning(
        AutoEncoder(),
        pl.Trainer(max_epochs=3),
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
    )
    evaluator = retia.load(retia.dump(evaluator))  # the module travels by value, the loaders as recipes
    capfd.readouterr()  # building the user's Trainer (twice, with the load) may print: the user's call
    result = evaluator.evaluate(Encoder, output_dir=tmp_path / "run")

    assert len(result.intermediates) == 3  # one per validation epoch, none for the sanity check
    assert result.final == result.intermediates[-1]
    assert set(result.final) == {"default", "val_loss"}
    assert result.final["default"] == result.final["val_loss"] < result.intermediates[0]["val_loss"]
    assert list((tmp_path / "run").glob("lightning_logs/version_0/*")), (
        "Lightning's logs belong in the trial dir"
    )
    out, err = capfd.readouterr()
    assert "GPU available" not in out + err and "%|" not in out + err  # no info lines, no progress bar


def test_classification_digits_accuracy_and_one_report_per_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluator = pl.Classification(
        train_dataloaders=digits("train"), val_dataloaders=digits("val", 256), max_epochs=10
    )
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    torch.manual_seed(0)
    result = evaluator.evaluate(mlp, output_dir=tmp_path / "run")
    assert not list((tmp_path / "cwd").iterdir()), "nothing may land outside the trial's output directory"

    assert len(result.intermediates) == 10
    assert result.final == result.intermediates[-1]
    final = cast(dict[str, float], result.final)  # the logged metrics
    assert set(final) == {"default", "val_loss", "val_acc"}
    assert final["default"] == final["val_acc"] >= 0.93
    header = next((tmp_path / "run").glob("lightning_logs/version_0/metrics.csv")).read_text().splitlines()[0]
    assert {"train_loss", "val_loss", "val_acc"} <= set(header.split(","))
    assert not list((tmp_path / "run").rglob("*.ckpt"))  # no checkpoints unless asked for


def test_regression_diabetes_beats_the_mean_and_counts_sparse_validation(tmp_path: Path) -> None:
    train_set, val_set = retia.trace(DiabetesDataset)("train"), retia.trace(DiabetesDataset)("val")
    evaluator = pl.Regression(
        learning_rate=1e-2,
        train_dataloaders=pl.DataLoader(train_set, batch_size=32, shuffle=True),
        val_dataloaders=pl.DataLoader(val_set, batch_size=128),
        max_epochs=20,
        check_val_every_n_epoch=5,
    )
    torch.manual_seed(0)
    result = evaluator.evaluate(lambda: mlp(16, inputs=10, outputs=1), output_dir=tmp_path / "run")

    baseline = F.mse_loss(torch.full_like(val_set.y, float(train_set.y.mean())), val_set.y).item()
    assert len(result.intermediates) == 4  # validated after epochs 5, 10, 15, 20
    assert result.final == result.intermediates[-1]
    final = cast(dict[str, float], result.final)  # the logged metrics
    assert set(final) == {"default", "val_loss", "val_mse"}
    assert final["default"] == final["val_mse"] < 0.8 * baseline


def test_dumped_classification_is_small_and_trains_the_same(tmp_path: Path) -> None:
    evaluator = pl.Classification(
        learning_rate=3e-3,
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
        max_epochs=2,
    )
    data = retia.dump(evaluator)
    assert len(data) < 8 * 1024  # recipes, no dataset
    loaded = retia.load(data)
    assert isinstance(loaded, pl.Classification) and loaded is not evaluator

    finals = []
    for n, ev in enumerate([evaluator, loaded, evaluator]):  # the original twice: trainers are rebuilt
        torch.manual_seed(0)
        finals.append(ev.evaluate(mlp, output_dir=tmp_path / f"run{n}").final)
    assert finals[0] == finals[1] == finals[2]
    assert cast(dict[str, float], finals[0])["default"] > 0.8  # the logged metrics


def test_nnis_deprecated_loader_names_still_work_and_say_so(tmp_path: Path) -> None:
    """``train_dataloader=`` and ``val_dataloader=`` (NNI's deprecated names, in every NNI Lightning
    example): before, refused as unknown Trainer options. The evaluator is recorded, and rebuilt on
    workers, with the current names."""
    with pytest.warns(DeprecationWarning, match="train_dataloader is NNI's deprecated name"):
        old = pl.Classification(
            train_dataloader=digits("train"), val_dataloaders=digits("val", 256), max_epochs=1
        )
    assert retia.load(retia.dump(old)).train_dataloaders is not None  # no warning: the new names
    torch.manual_seed(0)
    named = cast(dict[str, float], old.evaluate(mlp, output_dir=tmp_path / "c").final)
    assert named["default"] > 0.5  # it trained on the loader given under the old name
    module = pl.Classification(max_epochs=1, val_dataloaders=digits("val")).module
    trainer = pl.Trainer(max_epochs=1)  # (built outside: Lightning warns of its own loggers once)
    with pytest.warns(DeprecationWarning, match="val_dataloader is NNI's deprecated name"):
        lightning = pl.Lightning(
            module, trainer, train_dataloaders=digits("train"), val_dataloader=digits("val")
        )
    assert lightning.val_dataloaders is not None
    with pytest.raises(ConfigError, match="give train_dataloaders or train_dataloader"):
        pl.Regression(train_dataloaders=digits("train"), train_dataloader=digits("train"))


def test_without_training_data_validates_only(tmp_path: Path) -> None:
    evaluator = pl.Classification(val_dataloaders=digits("val", 256), num_classes=10)
    torch.manual_seed(0)
    result = evaluator.evaluate(mlp, output_dir=tmp_path / "run")
    assert result.intermediates == []
    final = cast(dict[str, float], result.final)  # the logged metrics
    assert set(final) == {"default", "val_loss", "val_acc"}
    assert 0.0 <= final["default"] < 0.5  # an untrained model


def test_export_onnx_writes_a_model_that_onnxruntime_agrees_with(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    evaluator = pl.Classification(
        train_dataloaders=digits("train"), val_dataloaders=digits("val", 256), max_epochs=1, export_onnx=True
    )
    model = mlp()
    evaluator.evaluate(model, output_dir=tmp_path / "run")

    path = tmp_path / "run" / "model.onnx"
    assert path.is_file()
    x = DigitsDataset("val").x[:7]  # another batch size than the export example's
    (got,) = ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    assert got.shape == expected.shape == (7, 10)
    assert abs(got - expected).max() < 1e-4


class PlainModule(pytorch_lightning.LightningModule):
    def validation_step(self, batch: object, batch_idx: int) -> None: ...


class NoValidation(pl.LightningModule):
    def training_step(self, batch: object, batch_idx: int) -> None: ...


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: pl.Lightning(PlainModule(), val_dataloaders=digits("val")),  # type: ignore[arg-type]  # on purpose
            "retia.lightning.LightningModule",
        ),
        (
            lambda: pl.Lightning(nn.Linear(2, 2), val_dataloaders=digits("val")),  # type: ignore[arg-type]  # on purpose
            "retia.lightning.LightningModule",
        ),
        (
            lambda: pl.Classification(val_dataloaders=torch.utils.data.DataLoader(DigitsDataset("val"))),
            "retia.lightning.DataLoader",
        ),
        (
            lambda: pl.Classification(
                train_dataloaders=digits("train"),
                val_dataloaders=[digits("val"), [1, 2]],  # type: ignore[list-item]  # on purpose
            ),
            "retia.lightning.DataLoader",
        ),
        (lambda: pl.Lightning(NoValidation(), val_dataloaders=digits("val")), "validation_step"),
        (
            lambda: pl.Lightning(AutoEncoder(), pytorch_lightning.Trainer(), val_dataloaders=digits("val")),
            "retia.lightning.Trainer",
        ),
        (
            lambda: pl.Classification(val_dataloaders=digits("val"), max_epoch=3),
            r"unknown Trainer option.*max_epoch",
        ),
        (lambda: pl.Classification(val_dataloaders=digits("val"), num_classes=1), "num_classes"),
        (
            lambda: pl.Classification(
                val_dataloaders=digits("val"), datamodule=pytorch_lightning.LightningDataModule()
            ),
            "either a datamodule",
        ),
    ],
    ids=[
        "plain-lightning-module",
        "not-a-module",
        "untraced-loader",
        "untraced-loader-in-list",
        "no-validation-step",
        "untraced-trainer",
        "unknown-trainer-option",
        "one-class",
        "datamodule-and-loaders",
    ],
)
def test_clear_errors(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()


def test_no_validation_metric_logged_is_a_clear_error(tmp_path: Path) -> None:
    class SilentAutoEncoder(AutoEncoder):
        def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
            pass  # validates, but logs nothing

    evaluator = pl.Lightning(
        SilentAutoEncoder(), pl.Trainer(max_epochs=1), val_dataloaders=digits("val", 256)
    )
    with pytest.raises(ConfigError, match="no validation metric was logged"):
        evaluator.evaluate(Encoder, output_dir=tmp_path / "run")
