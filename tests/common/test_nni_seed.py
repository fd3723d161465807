"""The "Model Evaluator" page's examples run under ``retia.nni`` with only their import lines changed
(nni_seed.py): in this process, and searched by a RetiariiExperiment on a real cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import nni_seed as seed
import onnx
import pytest
import torch
from torch.utils.data import DataLoader

import retia.nni as nni
import retia.nni.retiarii.evaluator.pytorch.lightning as pl
import retia.nni.retiarii.strategy as strategy
from retia.client.backend import Backend
from retia.nni.retiarii import fixed_arch
from retia.nni.retiarii.evaluator import FunctionalEvaluator
from retia.nni.retiarii.experiment.pytorch import RetiariiExeConfig, RetiariiExperiment
from tests.clusters import on_cluster

pytestmark = pytest.mark.timeout(240)


def _config(trials: int) -> RetiariiExeConfig:
    config = RetiariiExeConfig("local")
    config.max_trial_number = trials
    config.trial_concurrency = 2
    return config


def test_a_fit_function_with_a_traced_dataloader_is_searched(cluster: Backend, tmp_path: Path) -> None:
    dataloader = nni.trace(DataLoader)(nni.trace(seed.DigitsAsMNIST)(train=True, limit=256), batch_size=64)
    evaluator = FunctionalEvaluator(seed.fit, dataloader=dataloader)
    experiment = RetiariiExperiment(seed.ModelSpace(), evaluator, [], strategy.Random(), path=tmp_path / "e")
    results = experiment.run(_config(2), 8081, **on_cluster(cluster))
    assert [r.state for r in results] == ["SUCCEEDED"] * 2, [r.reason for r in results]
    assert all(isinstance(r.final, float) and r.final > 30 and len(r.intermediates) == 2 for r in results)
    [exported] = experiment.export_top_models()
    with fixed_arch(exported):  # the page: instantiate the exported model, then evaluate it
        model = seed.ModelSpace()
    assert FunctionalEvaluator(seed.fit, dataloader=dataloader).evaluate(model).final is not None


@pytest.mark.filterwarnings("ignore:Exporting a model while it is in training mode")  # the page's code
@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # raised inside torch's dynamo exporter
def test_a_fit_exports_onnx_into_nni_output_dir(tmp_path: Path) -> None:
    result = FunctionalEvaluator(seed.fit_exporting_onnx).evaluate(seed.SingleModel, output_dir=tmp_path)
    onnx.checker.check_model(onnx.load(str(tmp_path / "model.onnx")))
    assert result.final == (tmp_path / "model.onnx").stat().st_size


@pytest.mark.parametrize("form", ["class", "callable", "instance"])
def test_evaluate_trains_one_concrete_model(form: str) -> None:
    dataloader = nni.trace(DataLoader)(nni.trace(seed.DigitsAsMNIST)(train=False, limit=128), batch_size=64)
    evaluator = FunctionalEvaluator(seed.fit, dataloader=dataloader)
    model: Any = {
        "class": seed.SingleModel,
        "callable": lambda: seed.SingleModel(),
        "instance": seed.SingleModel(),
    }
    assert isinstance(evaluator.evaluate(model[form]).final, float)


def test_the_built_in_classification_with_traced_datasets(tmp_path: Path) -> None:
    train_dataset = nni.trace(seed.DigitsAsMNIST)(train=True, limit=512)
    test_dataset = nni.trace(seed.DigitsAsMNIST)(train=False, limit=256)
    evaluator = pl.Classification(
        train_dataloaders=pl.DataLoader(train_dataset, batch_size=100),
        val_dataloaders=pl.DataLoader(test_dataset, batch_size=100),
        max_epochs=2,
    )
    result = nni.load(nni.dump(evaluator)).evaluate(seed.SingleModel, output_dir=tmp_path)
    assert isinstance(result.final, float) and result.final > 0.3  # NNI's bare accuracy
    assert (tmp_path / "model.onnx").exists()  # 2.x's export_onnx=True


def test_the_autoencoder_reports_for_itself_in_an_experiment(cluster: Backend, tmp_path: Path) -> None:
    """The page's LightningModule calls ``nni.report_*`` itself (on_validation_epoch_end, teardown):
    each trial's results are exactly those, none of the evaluator's own."""
    train_dataset = nni.trace(seed.DigitsAsMNIST)(train=True, limit=256)
    test_dataset = nni.trace(seed.DigitsAsMNIST)(train=False, limit=128)
    lightning = pl.Lightning(
        seed.AutoEncoder(),
        pl.Trainer(max_epochs=2, logger=False, enable_progress_bar=False, enable_checkpointing=False),
        train_dataloaders=pl.DataLoader(train_dataset, batch_size=100),
        val_dataloaders=pl.DataLoader(test_dataset, batch_size=100),
    )
    experiment = RetiariiExperiment(seed.Encoder(), lightning, [], strategy.Random(), path=tmp_path / "e")
    results = experiment.run(_config(2), **on_cluster(cluster))
    assert [r.state for r in results] == ["SUCCEEDED"] * 2, [r.reason for r in results]
    for r in results:
        losses = cast(list[float], r.intermediates)
        assert isinstance(r.final, float) and len(losses) == 3  # a sanity check, then 2 epochs
        assert r.final == losses[-1] and r.final < losses[0]  # the loss fell
    assert {r.arch["model_1"] for r in results} == {16, 64}  # NNI 2.x's auto label
    space: Any = seed.Encoder()  # (mypy does not apply class decorators: it sees an nn.Module)
    assert torch.is_tensor(space.freeze(results[0].arch)(torch.zeros(1, 784)))
