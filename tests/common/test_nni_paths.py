"""``retia.nni``: NNI's import lines (2.x ``nni.retiarii``, 3.0 ``nni.nas``) give retia's objects, and
where NNI's semantics differ from retia's, NNI's: 3.0's FunctionalEvaluator passes the model itself,
single-metric Lightning evaluators report a bare number, 2.x exports ONNX by default, NNI's
``Lightning`` leaves reports to a user's module, ``NasExperiment``'s fourth argument is the config."""

from __future__ import annotations

import importlib
import pickle
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

import retia
import retia.lightning
import retia.nn
import retia.nn.hub
import retia.nni
import retia.oneshot
import retia.strategy
from retia.client.experiment import Experiment, RetiariiExperiment
from retia.client.experiment_config import ExperimentConfig, NasExperimentConfig, RetiariiExeConfig
from retia.datasets import DigitsDataset

trace_module = importlib.import_module("retia.trace")  # (retia.trace is the function)

pytestmark = pytest.mark.timeout(120)

# (module, name, what it is): every NNI import line of docs/coming-from-nni.md
SAME: list[tuple[str, str, object]] = [
    ("retia.nni", "is_traceable", trace_module.is_traceable),
    ("retia.nni", "is_wrapped_with_trace", trace_module.is_wrapped_with_trace),
    ("retia.nni", "dump", retia.dump),
    ("retia.nni", "load", retia.load),
    ("retia.nni", "report_intermediate_result", retia.report_intermediate_result),
    ("retia.nni", "report_final_result", retia.report_final_result),
    ("retia.nni.retiarii", "fixed_arch", retia.fixed_arch),
    ("retia.nni.retiarii.evaluator", "FunctionalEvaluator", retia.FunctionalEvaluator),
    ("retia.nni.retiarii.nn.pytorch", "LayerChoice", retia.nn.LayerChoice),
    ("retia.nni.retiarii.nn.pytorch", "InputChoice", retia.nn.InputChoice),
    ("retia.nni.retiarii.nn.pytorch", "ValueChoice", retia.nn.ValueChoice),
    ("retia.nni.retiarii.nn.pytorch", "Conv2d", torch.nn.Conv2d),
    ("retia.nni.retiarii.nn.pytorch", "Hardtanh", torch.nn.Hardtanh),
    ("retia.nni.retiarii.experiment.pytorch", "RetiariiExperiment", RetiariiExperiment),
    ("retia.nni.retiarii.experiment.pytorch", "RetiariiExeConfig", RetiariiExeConfig),
    ("retia.nni.retiarii.strategy", "Random", retia.strategy.Random),
    ("retia.nni.retiarii.strategy", "GridSearch", retia.strategy.GridSearch),
    ("retia.nni.retiarii.strategy", "RegularizedEvolution", retia.strategy.RegularizedEvolution),
    ("retia.nni.retiarii.strategy", "TPEStrategy", retia.strategy.TPE),
    ("retia.nni.retiarii.strategy", "BaseStrategy", retia.strategy.Strategy),
    ("retia.nni.retiarii.utils", "original_state_dict_hooks", retia.original_state_dict_hooks),
    ("retia.nni.retiarii.evaluator.pytorch.lightning", "DataLoader", retia.lightning.DataLoader),
    ("retia.nni.retiarii.evaluator.pytorch.lightning", "Trainer", retia.lightning.Trainer),
    ("retia.nni.retiarii.evaluator.pytorch.lightning", "LightningModule", retia.lightning.LightningModule),
    ("retia.nni.nas.evaluator", "Evaluator", retia.Evaluator),
    ("retia.nni.nas.evaluator", "MutableEvaluator", retia.Evaluator),
    ("retia.nni.nas.nn.pytorch", "LayerChoice", retia.nn.LayerChoice),
    ("retia.nni.nas.nn.pytorch", "MutableLinear", torch.nn.Linear),
    ("retia.nni.nas.nn.pytorch", "MutableDropout", torch.nn.Dropout),
    ("retia.nni.nas.nn.pytorch", "MutableConv2d", torch.nn.Conv2d),
    ("retia.nni.nas.nn.pytorch", "BatchNorm2d", torch.nn.BatchNorm2d),
    ("retia.nni.nas.experiment", "NasExperimentConfig", NasExperimentConfig),
    ("retia.nni.nas.experiment.config", "NasExperimentConfig", NasExperimentConfig),
    ("retia.nni.experiment.config", "ExperimentConfig", ExperimentConfig),
    ("retia.nni.nas.strategy", "Random", retia.strategy.Random),
    ("retia.nni.nas.strategy", "TPE", retia.strategy.TPE),
    ("retia.nni.nas.strategy", "Strategy", retia.strategy.Strategy),
    ("retia.nni.nas.space", "model_context", retia.fixed_arch),
    ("retia.nni.nas.strategy", "DARTS", retia.oneshot.DARTS),
    ("retia.nni.nas.strategy", "GumbelDARTS", retia.oneshot.GumbelDARTS),
    ("retia.nni.retiarii.strategy", "RandomOneShot", retia.oneshot.RandomOneShot),
    ("retia.nni.retiarii.strategy", "DARTS", retia.oneshot.DARTS),
    ("retia.nni.nas.strategy", "ENAS", retia.oneshot.ENAS),
    ("retia.nni.nas.strategy", "Proxyless", retia.oneshot.Proxyless),
    ("retia.nni.retiarii.strategy", "ENAS", retia.oneshot.ENAS),
    ("retia.nni.nas.nn.pytorch", "Cell", retia.nn.Cell),
    ("retia.nni.nas.nn.pytorch", "label_scope", retia.nn.label_scope),
    ("retia.nni.mutable", "label_scope", retia.nn.label_scope),
    ("retia.nni.nas.hub.pytorch", "DARTS", retia.nn.hub.DARTS),
    ("retia.nni.nas.hub.pytorch", "NasBench201", retia.nn.hub.NasBench201),
    ("retia.nni.nas.hub.pytorch", "ProxylessNAS", retia.nn.hub.ProxylessNAS),
    ("retia.nni.nas.hub.pytorch", "MobileNetV3Space", retia.nn.hub.MobileNetV3Space),
    ("retia.nni.retiarii.hub.pytorch", "DARTS", retia.nn.hub.DARTS),
    ("retia.nni.retiarii.hub.pytorch", "NasBench201", retia.nn.hub.NasBench201),
    ("retia.nni.nas.evaluator.pytorch", "ClassificationModule", retia.lightning.ClassificationModule),
]

# NNI's names whose semantics differ: adapters, subclasses of retia's
ADAPTED: list[tuple[str, str, type]] = [
    ("retia.nni.nas.evaluator", "FunctionalEvaluator", retia.FunctionalEvaluator),
    ("retia.nni.nas.nn.pytorch", "ModelSpace", retia.nn.ModelSpace),  # NNI 3.0's labels
    ("retia.nni.nas.experiment", "NasExperiment", Experiment),
    ("retia.nni.nas.evaluator.pytorch", "Lightning", retia.lightning.Lightning),
    ("retia.nni.nas.evaluator.pytorch", "Classification", retia.lightning.Classification),
    ("retia.nni.nas.evaluator.pytorch", "Regression", retia.lightning.Regression),
    ("retia.nni.nas.evaluator.pytorch", "SupervisedLearningModule", retia.lightning.SupervisedLearningModule),
    ("retia.nni.nas.evaluator", "Classification", retia.lightning.Classification),  # NNI's shortcut
    ("retia.nni.retiarii.evaluator.pytorch.lightning", "Classification", retia.lightning.Classification),
    ("retia.nni.retiarii.evaluator.pytorch.lightning", "Regression", retia.lightning.Regression),
    ("retia.nni.retiarii.evaluator.pytorch.lightning", "Lightning", retia.lightning.Lightning),
    ("retia.nni.retiarii.evaluator.pytorch", "ClassificationModule", retia.lightning.ClassificationModule),
    ("retia.nni.retiarii.evaluator", "Regression", retia.lightning.Regression),  # NNI's shortcut
]


@pytest.mark.parametrize(("module", "name", "target"), SAME, ids=lambda v: v if isinstance(v, str) else "")
def test_an_nni_import_line_gives_retias_object(module: str, name: str, target: object) -> None:
    assert getattr(importlib.import_module(module), name) is target


@pytest.mark.parametrize(("module", "name", "base"), ADAPTED, ids=lambda v: v if isinstance(v, str) else "")
def test_an_nni_name_with_other_semantics_is_a_subclass_of_retias(module: str, name: str, base: type) -> None:
    adapter = getattr(importlib.import_module(module), name)
    assert isinstance(adapter, type) and issubclass(adapter, base) and adapter is not base


@retia.nni.trace(kw_only=False, inheritable=True)
class _Traced:
    def __init__(self, x: int, y: int = 0) -> None:
        self.x, self.y = x, y


def test_nni_trace_takes_nnis_arguments() -> None:
    """``nni.trace(cls, kw_only=..., inheritable=...)``: retia traces subclasses always."""
    traced: Any = _Traced(1, y=2)  # (mypy does not apply class decorators)
    assert traced.trace_args == [1] and traced.trace_kwargs == {"y": 2} and isinstance(traced, _Traced)
    assert retia.nni.trace(_Traced, kw_only=False, inheritable=False) is _Traced  # traced already
    assert retia.load(retia.dump(traced)).x == 1


def test_nni_retiarii_and_nni_nas_are_attributes_of_the_package() -> None:
    import retia.nni as nni
    import retia.nni.nas.strategy  # as NNI code imports it

    assert nni.retiarii.fixed_arch is retia.fixed_arch and nni.nas.strategy.Random is retia.strategy.Random
    with pytest.raises(AttributeError, match="no attribute 'tuner'"):
        nni.tuner  # noqa: B018


def _fit_receives(model: Any) -> None:
    retia.report_final_result(1.0 if isinstance(model, torch.nn.Module) else 0.0)


def test_fit_gets_a_class_in_2x_and_the_model_itself_in_3x() -> None:
    from retia.nni.nas.evaluator import FunctionalEvaluator as V3
    from retia.nni.retiarii.evaluator import FunctionalEvaluator as V2

    linear = retia.trace(torch.nn.Linear)
    assert V2(_fit_receives).evaluate(lambda: linear(2, 2)).final == 0.0  # a factory, to call
    for evaluator in (V3(_fit_receives), retia.load(retia.dump(V3(_fit_receives)))):
        assert evaluator.evaluate(lambda: linear(2, 2)).final == 1.0  # the model


def test_nni_choice_is_a_value_choice_with_its_label_first() -> None:
    import retia.nni as nni

    class Space(retia.nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(4, nni.choice("width", [2, 8]))

    assert Space().search_space() == {"width": [2, 8]}
    frozen: Any = Space().freeze({"width": 2})
    assert frozen.fc.out_features == 2


@retia.nn.model_wrapper
class _Wrapped(torch.nn.Module):
    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3, retia.nn.ValueChoice([width, 2 * width]))


def test_model_wrapper_makes_an_nn_module_class_a_model_space_under_its_name() -> None:
    space = _Wrapped(width=2)
    assert isinstance(space, retia.nn.ModelSpace) and _Wrapped.__qualname__ == "_Wrapped"
    assert space.search_space() == {"valuechoice_1": [2, 4]}  # an auto label, as in a ModelSpace
    frozen = pickle.loads(pickle.dumps(space.freeze({"valuechoice_1": 2})))
    assert type(frozen) is _Wrapped and frozen.fc.out_features == 2
    assert retia.nn.model_wrapper(_Wrapped) is _Wrapped
    with pytest.raises(TypeError, match="decorates an nn.Module class"):
        retia.nn.model_wrapper(object)  # type: ignore[arg-type]


def test_nas_experiments_fourth_argument_is_its_config(tmp_path: Path) -> None:
    from retia.nni.nas.experiment import NasExperiment, NasExperimentConfig

    config = NasExperimentConfig("local")
    config.max_trial_number = 3
    exp = NasExperiment(_Wrapped(), retia.FunctionalEvaluator(_fit_receives), retia.strategy.Random(), config)
    assert exp.config is config


def _loaders() -> tuple[Any, Any]:
    train = retia.lightning.DataLoader(retia.trace(DigitsDataset)("train"), batch_size=128)
    val = retia.lightning.DataLoader(retia.trace(DigitsDataset)("val"), batch_size=512)
    return train, val


class _Linear(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


def test_nni_classification_reports_a_bare_number_and_2x_exports_onnx(tmp_path: Path) -> None:
    """NNI code compares ``final > 0.7``: a bare float; retia's own reports the dict. 2.x exported
    ``model.onnx`` by default, 3.0 does not."""
    from retia.nni.nas.evaluator.pytorch import Classification as V3
    from retia.nni.retiarii.evaluator.pytorch.lightning import Classification as V2

    train, val = _loaders()
    options: dict[str, Any] = {"train_dataloaders": train, "val_dataloaders": val, "max_epochs": 2}
    v3 = retia.load(retia.dump(V3(**options))).evaluate(_Linear, output_dir=tmp_path / "v3")
    assert isinstance(v3.final, float) and all(isinstance(v, float) for v in v3.intermediates)
    assert not (tmp_path / "v3" / "model.onnx").exists()
    v2 = V2(**options).evaluate(_Linear, output_dir=tmp_path / "v2")
    assert isinstance(v2.final, float) and (tmp_path / "v2" / "model.onnx").stat().st_size > 0
    V2(export_onnx=False, **options).evaluate(_Linear, output_dir=tmp_path / "v2-off")
    assert not (tmp_path / "v2-off" / "model.onnx").exists()
    native = retia.lightning.Classification(**options).evaluate(_Linear, output_dir=tmp_path / "native")
    assert isinstance(native.final, dict) and native.final["default"] == native.final["val_acc"]


class _ReportsItself(retia.lightning.LightningModule):
    """A user's module in NNI's style: it reports through ``nni.report_*`` itself."""

    def __init__(self) -> None:
        super().__init__()
        self.loss = torch.nn.CrossEntropyLoss()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out: torch.Tensor = self.loss(self.model(x), y)
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", self.loss(self.model(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)

    def on_fit_end(self) -> None:
        import retia.nni as nni

        nni.report_final_result(float(self.trainer.callback_metrics["val_loss"]))


def test_nni_lightning_leaves_reports_to_a_users_module_and_reports_for_a_supervised_one(
    tmp_path: Path,
) -> None:
    from retia.nni.nas.evaluator.pytorch import ClassificationModule, Lightning, Trainer

    train, val = _loaders()
    trainer = Trainer(max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    own = Lightning(_ReportsItself(), trainer, train, val).evaluate(_Linear, output_dir=tmp_path / "own")
    assert isinstance(own.final, float) and own.intermediates == []  # the module's one report alone
    supervised = Lightning(ClassificationModule(), trainer, train, val)
    result = supervised.evaluate(_Linear, output_dir=tmp_path / "supervised")
    assert isinstance(result.final, float) and len(result.intermediates) == 1
    with pytest.raises(retia.errors.ReportError, match="twice"):  # retia's own would report too
        retia.lightning.Lightning(_ReportsItself(), trainer, train, val).evaluate(
            _Linear, output_dir=tmp_path / "x"
        )


def test_nni_dataloader_is_torchs_traced() -> None:
    from retia.nni.nas.evaluator.pytorch import DataLoader as NniDataLoader

    loader = NniDataLoader(retia.trace(DigitsDataset)("val"), batch_size=7)
    assert isinstance(loader, DataLoader) and retia.get_recipe(loader) is not None
