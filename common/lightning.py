"""Evaluators built on PyTorch-Lightning, as in NNI Retiarii's ``nni.retiarii.evaluator.pytorch``.

``Lightning(module, trainer, train_dataloaders, val_dataloaders)`` wraps the user's
:class:`LightningModule`; ``Classification`` and ``Regression`` are ready-made ones. Each
``evaluate`` copies the module, attaches the candidate as ``module.model``, builds a fresh
Trainer from its recipe on the spot and runs ``fit``; a callback reports the logged
validation metrics after each validation epoch, and the last of them as the final result.
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader as _TorchDataLoader

from . import _lightning_support as support
from .errors import ConfigError
from .evaluator import Evaluator
from .reporting import report_final_result
from .serializer import dump, load
from .trace import get_recipe, is_traced, trace

__all__ = ["LightningModule", "Lightning", "Classification", "Regression", "DataLoader", "Trainer"]

_log = logging.getLogger(__name__)

DataLoader = trace(_TorchDataLoader)
"""``torch.utils.data.DataLoader``, traced: it ships as a recipe and is rebuilt on the worker."""
Trainer = trace(pl.Trainer)
"""``pytorch_lightning.Trainer``, traced: the evaluator rebuilds a fresh one from it for every fit."""

Loaders = _TorchDataLoader[Any] | Sequence[_TorchDataLoader[Any]] | None


class LightningModule(pl.LightningModule):
    """A LightningModule whose candidate model the evaluator attaches as ``self.model``.

    ``default_metric`` names the validation metric reported as ``'default'``; None: the first logged.
    """

    model: nn.Module
    default_metric: str | None = None

    def set_model(self, model: nn.Module | Callable[[], nn.Module]) -> None:
        """Attach the candidate; a model class or zero-argument callable is instantiated first."""
        if not isinstance(model, nn.Module):
            model = model()
        if not isinstance(model, nn.Module):
            raise ConfigError(
                "set_model() needs a torch.nn.Module (or a callable returning one), "
                f"got {type(model).__name__}"
            )
        self.model = model


class Lightning(Evaluator):
    """Evaluate with a user's :class:`LightningModule`, a traced :data:`Trainer` and traced loaders.

    With no training data the model is only validated, and that validation is the final result.
    """

    _trainer_defaults: dict[str, Any] = {}

    def __init__(
        self,
        module: LightningModule,
        trainer: pl.Trainer | None = None,
        train_dataloaders: Loaders = None,
        val_dataloaders: Loaders = None,
        datamodule: pl.LightningDataModule | None = None,
        *,
        train_dataloader: Loaders = None,
        val_dataloader: Loaders = None,
    ) -> None:
        """``train_dataloader``/``val_dataloader``: NNI's deprecated names (a DeprecationWarning)."""
        train_dataloaders, val_dataloaders = _renamed(
            train_dataloaders,
            val_dataloaders,
            {"train_dataloader": train_dataloader, "val_dataloader": val_dataloader},
        )
        if trainer is not None and (not isinstance(trainer, pl.Trainer) or not is_traced(trainer)):
            raise ConfigError(
                "trainer must be built with retia.lightning.Trainer(...) "
                "(a traced pytorch_lightning.Trainer, rebuilt fresh for every fit), "
                f"got {type(trainer).__name__}"
            )
        self.trainer = trainer
        self._setup(module, train_dataloaders, val_dataloaders, datamodule, {})
        self._record(
            module,
            trainer=trainer,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
        )

    def _setup(
        self,
        module: LightningModule,
        train_dataloaders: Loaders,
        val_dataloaders: Loaders,
        datamodule: pl.LightningDataModule | None,
        trainer_kwargs: dict[str, Any],
    ) -> None:
        if not isinstance(module, LightningModule):
            hint = (
                " (subclass retia.lightning.LightningModule instead)"
                if isinstance(module, pl.LightningModule)
                else ""
            )
            raise ConfigError(
                "module must be a retia.lightning.LightningModule, whose set_model() receives the "
                f"candidate; got {type(module).__name__}{hint}"
            )
        if datamodule is not None:
            if not isinstance(datamodule, pl.LightningDataModule):
                raise ConfigError(
                    "datamodule must be a pytorch_lightning.LightningDataModule, "
                    f"got {type(datamodule).__name__}"
                )
            if train_dataloaders is not None or val_dataloaders is not None:
                raise ConfigError("give either a datamodule or train/val dataloaders, not both")
        _check_loaders("train_dataloaders", train_dataloaders)
        _check_loaders("val_dataloaders", val_dataloaders)
        support.check_trainer_kwargs(trainer_kwargs)
        source = datamodule if datamodule is not None else module
        if val_dataloaders is None and not is_overridden("val_dataloader", source):
            raise ConfigError(
                "no validation data: the evaluator reports a validation metric, so give val_dataloaders="
                "retia.lightning.DataLoader(...) (or a datamodule / module with val_dataloader())"
            )
        if not is_overridden("validation_step", module):
            raise ConfigError(
                f"{type(module).__name__} has no validation_step(), so it cannot log a validation metric"
            )
        self.module = module
        self.train_dataloaders = train_dataloaders
        self.val_dataloaders = val_dataloaders
        self.datamodule = datamodule
        self.trainer_kwargs = trainer_kwargs
        self.fit_enabled = train_dataloaders is not None or is_overridden("train_dataloader", source)

    def _run(self, model_factory: Callable[[], Any]) -> None:
        out = support.output_dir()
        module = copy.deepcopy(self.module)  # every evaluation starts from the module as given
        module.set_model(model_factory)
        callback = support.ReportingCallback(module.default_metric)
        with support.quiet():
            trainer = self._build_trainer(out, callback)
            if self.fit_enabled:
                trainer.fit(module, self.train_dataloaders, self.val_dataloaders, datamodule=self.datamodule)
                _log.debug("fit ended after %d validation epoch(s)", callback.count)
            else:
                trainer.validate(module, self.val_dataloaders, datamodule=self.datamodule, verbose=False)
        report_final_result(support.last_metric(callback))

    def _build_trainer(self, out: Path, callback: pl.Callback) -> pl.Trainer:
        """A fresh Trainer per fit (they are single-use), from a copy of the recipe: fresh callbacks too."""
        if self.trainer is not None:
            recipe = get_recipe(self.trainer)  # never None: __init__ accepts traced trainers only
            kwargs = load(dump(recipe.kwargs if recipe is not None else {}))
        else:
            kwargs = {**self._trainer_defaults, **load(dump(self.trainer_kwargs))}
        options = support.trainer_options(kwargs, out, evaluator_defaults=self.trainer is None)
        options["callbacks"] = [*_as_list(options.get("callbacks")), callback]
        return pl.Trainer(**options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.module).__name__})"


class _SupervisedModule(LightningModule):
    """A (x, y) supervised module: criterion, optimizer, one torchmetrics metric, optional ONNX export."""

    metric_name = ""
    default_metric: str  # always set: f"val_{metric_name}"

    def __init__(
        self,
        criterion: Callable[..., nn.Module],
        learning_rate: float,
        weight_decay: float,
        optimizer: Callable[..., torch.optim.Optimizer],
        export_onnx: bool,
    ) -> None:
        super().__init__()
        self.criterion = criterion()
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.optimizer_class = optimizer
        self.export_onnx = export_onnx
        self.val_metric: torchmetrics.Metric | None = None
        self.default_metric = f"val_{self.metric_name}"
        self._example: torch.Tensor | None = None
        self._train_loss: list[Any] = [0.0, 0]  # loss sum, sample count of this epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        if self.export_onnx and self._example is None:
            self._example = x[:2].detach()
        loss: torch.Tensor = self.criterion(self(x), y)
        # Summed in place (nn.Module.__setattr__ is slow) and logged once per epoch: a per-step
        # self.log costs about a millisecond on CPU, a small model's whole step (docs/benchmarks.md).
        self._train_loss[0] += loss.detach() * len(y)
        self._train_loss[1] += len(y)
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_loss[:] = [0.0, 0]

    def on_train_epoch_end(self) -> None:
        total, count = self._train_loss
        if count:
            self.log("train_loss", total / count, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        y_hat = self(x)
        if self.val_metric is None:
            self.val_metric = self._make_metric(y_hat).to(y_hat.device)
        self.val_metric(y_hat, y)
        self.log("val_loss", self.criterion(y_hat, y), prog_bar=True, batch_size=len(y))
        self.log(self.default_metric, self.val_metric, prog_bar=True, batch_size=len(y))

    def _make_metric(self, y_hat: torch.Tensor) -> torchmetrics.Metric:
        raise NotImplementedError

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.optimizer_class(self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay)

    def on_fit_end(self) -> None:
        if self.export_onnx and self._example is not None:
            support.export_onnx(self.model, self._example, support.output_dir(self.trainer) / "model.onnx")


class _ClassificationModule(_SupervisedModule):
    metric_name = "acc"

    def __init__(self, *args: Any, num_classes: int | None = None) -> None:
        super().__init__(*args)
        self.num_classes = num_classes

    def _make_metric(self, y_hat: torch.Tensor) -> torchmetrics.Metric:
        num_classes = self.num_classes if self.num_classes is not None else y_hat.shape[-1]
        if y_hat.dim() != 2 or num_classes < 2:
            raise ConfigError(
                f"Classification needs (batch, num_classes) logits with num_classes >= 2; the model returned "
                f"shape {tuple(y_hat.shape)}"
            )
        return torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, average="micro")


class _RegressionModule(_SupervisedModule):
    metric_name = "mse"

    def _make_metric(self, y_hat: torch.Tensor) -> torchmetrics.Metric:
        return torchmetrics.MeanSquaredError()


class _Supervised(Lightning):
    # retia's own modules need no sanity check (it costs one extra validation per trial)
    _trainer_defaults: dict[str, Any] = {"num_sanity_val_steps": 0}


class Classification(_Supervised):
    """Train with ``criterion`` and ``optimizer``; report validation accuracy (``val_acc``) as ``'default'``.

    ``num_classes`` is read from the model's output when None; ``trainer_kwargs`` go to the Trainer.
    """

    def __init__(
        self,
        criterion: Callable[..., nn.Module] = nn.CrossEntropyLoss,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        train_dataloaders: Loaders = None,
        val_dataloaders: Loaders = None,
        datamodule: pl.LightningDataModule | None = None,
        export_onnx: bool = False,
        num_classes: int | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        train_dataloaders, val_dataloaders = _renamed(train_dataloaders, val_dataloaders, trainer_kwargs)
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        module = _ClassificationModule(
            criterion, learning_rate, weight_decay, optimizer, export_onnx, num_classes=num_classes
        )
        self.trainer = None
        self._setup(module, train_dataloaders, val_dataloaders, datamodule, trainer_kwargs)
        self._record(
            criterion=criterion,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            optimizer=optimizer,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            export_onnx=export_onnx,
            num_classes=num_classes,
            **trainer_kwargs,
        )


class Regression(_Supervised):
    """Train with ``criterion`` (MSE) and ``optimizer``; report validation MSE (``val_mse``) as 'default'."""

    direction = "minimize"  # strategies then prefer a lower validation MSE

    def __init__(
        self,
        criterion: Callable[..., nn.Module] = nn.MSELoss,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        train_dataloaders: Loaders = None,
        val_dataloaders: Loaders = None,
        datamodule: pl.LightningDataModule | None = None,
        export_onnx: bool = False,
        **trainer_kwargs: Any,
    ) -> None:
        train_dataloaders, val_dataloaders = _renamed(train_dataloaders, val_dataloaders, trainer_kwargs)
        module = _RegressionModule(criterion, learning_rate, weight_decay, optimizer, export_onnx)
        self.trainer = None
        self._setup(module, train_dataloaders, val_dataloaders, datamodule, trainer_kwargs)
        self._record(
            criterion=criterion,
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            optimizer=optimizer,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            export_onnx=export_onnx,
            **trainer_kwargs,
        )


def _renamed(train: Loaders, val: Loaders, old: dict[str, Any]) -> tuple[Loaders, Loaders]:
    """The loaders, taking NNI's deprecated ``train_dataloader``/``val_dataloader`` out of ``old`` (a
    DeprecationWarning each; the evaluator is recorded, and rebuilt on workers, with the new names)."""
    loaders = {"train_dataloaders": train, "val_dataloaders": val}
    for name in ("train_dataloader", "val_dataloader"):
        value = old.pop(name, None)
        if value is None:
            continue
        new = name + "s"
        if loaders[new] is not None:
            raise ConfigError(f"give {new} or {name} (its deprecated name), not both")
        warnings.warn(f"{name} is NNI's deprecated name: pass {new}", DeprecationWarning, stacklevel=3)
        loaders[new] = value
    return loaders["train_dataloaders"], loaders["val_dataloaders"]


def _check_loaders(name: str, loaders: Loaders) -> None:
    """Each loader must be a traced DataLoader, so it ships as a recipe instead of a pickled dataset."""
    for loader in _as_list(loaders):
        if not isinstance(loader, _TorchDataLoader) or not is_traced(loader):
            raise ConfigError(
                f"{name} must be built with retia.lightning.DataLoader(...) (a traced torch DataLoader, "
                "so the evaluator ships its recipe and the worker rebuilds it), "
                f"got an untraced {type(loader).__name__}"
            )
        if not is_traced(loader.dataset):
            _log.warning(
                "the dataset of %s (a %s) is not traced and will be pickled into the evaluator; "
                "build it with retia.trace(%s)(...) so the worker re-creates it",
                name,
                type(loader.dataset).__name__,
                type(loader.dataset).__name__,
            )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]
