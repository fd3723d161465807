"""Evaluators built on PyTorch-Lightning, as in NNI Retiarii's ``nni.retiarii.evaluator.pytorch``.

``Lightning(module, trainer, train_dataloaders, val_dataloaders)`` wraps the user's
:class:`LightningModule`; ``Classification`` and ``Regression`` are ready-made ones, built on
:class:`ClassificationModule` and :class:`RegressionModule` (NNI's, to subclass). Each
``evaluate`` copies the module, attaches the candidate as ``module.model``, builds a fresh
Trainer from its recipe on the spot and runs ``fit``; a callback reports the logged
validation metrics after each validation epoch, and the last of them as the final result.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, cast

import pytorch_lightning as pl
import torch
import torchmetrics
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader as _TorchDataLoader

from . import _lightning_support as support
from . import seeding
from .errors import ConfigError
from .evaluator import EvaluationResult, Evaluator
from .reporting import current_reporter, report_final_result
from .serializer import dump, load
from .trace import get_recipe, is_traced, trace

__all__ = [
    "LightningModule",
    "Lightning",
    "Classification",
    "Regression",
    "SupervisedLearningModule",
    "ClassificationModule",
    "RegressionModule",
    "DataLoader",
    "Trainer",
]

_log = logging.getLogger(__name__)

DataLoader = trace(_TorchDataLoader)
"""``torch.utils.data.DataLoader``, traced: it ships as a recipe and is rebuilt on the worker."""


class _Trainer(pl.Trainer):
    """``pytorch_lightning.Trainer`` adding its default callbacks to a copy of the ``callbacks`` list:
    Lightning appends them to the caller's list, which is the recipe's, so every Trainer rebuilt
    from it would start with them (and refuse a progress bar it was told to leave out)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if isinstance(kwargs.get("callbacks"), list):
            kwargs["callbacks"] = list(kwargs["callbacks"])
        super().__init__(*args, **kwargs)


Trainer = trace(_Trainer)
"""``pytorch_lightning.Trainer``, traced: the evaluator rebuilds a fresh one from it for every fit."""

Loaders = _TorchDataLoader[Any] | Sequence[_TorchDataLoader[Any]] | None
OnnxTarget = bool | str | os.PathLike[str] | None
"""``export_onnx``: False, True (``model.onnx`` in the trial's output directory) or a path."""
MetricSpec = torchmetrics.Metric | type[torchmetrics.Metric]
"""A torchmetrics metric, or its class (NNI 2.x passed classes); one copy per stage is used."""


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
    Built without data (as NNI allows, for data given later), it refuses to run, saying what to pass.
    """

    _trainer_defaults: dict[str, Any] = {}
    #: Report the bare 'default' metric (a float), as NNI's Classification/Regression do, instead
    #: of the dict of every logged validation metric. retia's own evaluators keep the dict.
    bare_metric: ClassVar[bool] = False

    def __init__(
        self,
        module: LightningModule,
        trainer: pl.Trainer | None = None,
        train_dataloaders: Loaders = None,
        val_dataloaders: Loaders = None,
        datamodule: pl.LightningDataModule | None = None,
        fit_kwargs: dict[str, Any] | None = None,
        detect_interrupt: bool = True,
        *,
        train_dataloader: Loaders = None,
        val_dataloader: Loaders = None,
    ) -> None:
        """``fit_kwargs`` go to ``trainer.fit`` (``ckpt_path``, say; to ``trainer.validate`` what it takes
        when there is no training data). ``detect_interrupt``: a KeyboardInterrupt during training
        reaches the caller (True) or only ends the training, with no final result (False).
        ``train_dataloader``/``val_dataloader``: NNI's deprecated names (a DeprecationWarning)."""
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
        fit_kwargs = dict(fit_kwargs or {})
        support.check_fit_kwargs(fit_kwargs)
        self.trainer = trainer
        self._setup(module, train_dataloaders, val_dataloaders, datamodule, {}, fit_kwargs, detect_interrupt)
        self._record(
            module,
            trainer=trainer,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
            datamodule=datamodule,
            fit_kwargs=fit_kwargs,
            detect_interrupt=detect_interrupt,
        )

    def _setup(
        self,
        module: LightningModule,
        train_dataloaders: Loaders,
        val_dataloaders: Loaders,
        datamodule: pl.LightningDataModule | None,
        trainer_kwargs: dict[str, Any],
        fit_kwargs: dict[str, Any] | None = None,
        detect_interrupt: bool = True,
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
        if not is_overridden("validation_step", module):
            raise ConfigError(
                f"{type(module).__name__} has no validation_step(), so it cannot log a validation metric"
            )
        self.module = module
        self.train_dataloaders = train_dataloaders
        self.val_dataloaders = val_dataloaders
        self.datamodule = datamodule
        self.trainer_kwargs = trainer_kwargs
        self.fit_kwargs = fit_kwargs or {}
        self.detect_interrupt = detect_interrupt

    @property
    def fit_enabled(self) -> bool:
        """Whether there is training data (else the model is only validated)."""
        source = self.datamodule if self.datamodule is not None else self.module
        return self.train_dataloaders is not None or is_overridden("train_dataloader", source)

    def fit(self, model: Any, *, output_dir: str | os.PathLike[str] | None = None) -> EvaluationResult:
        """NNI's name for :meth:`evaluate` (a DeprecationWarning, as in NNI 3). Inside a running
        evaluation (a trial's function, say) the reports go to that evaluation, in its directory."""
        warnings.warn("fit(model) is NNI's name: call evaluate(model)", DeprecationWarning, stacklevel=2)
        reporter = current_reporter()
        if output_dir is None and reporter is not None:
            output_dir = os.environ.get("RETIA_OUTPUT_DIR")
        return self.evaluate(model, output_dir=output_dir, reporter=reporter)

    def evaluate_packed(
        self,
        models: Sequence[Any],
        *,
        seeds: Sequence[int],
        output_dirs: Sequence[str | os.PathLike[str]] | None = None,
    ) -> list[tuple[EvaluationResult, Any]]:
        """Train ``models`` together in this process, on the same batches, each under its seed: what
        each reported (as ``evaluate(model, seed=...)`` would) and how it ended (a
        :class:`retia.packing.PackedOutcome`). See :mod:`retia.packing`."""
        from .packing import evaluate_packed

        return evaluate_packed(self, models, seeds=seeds, output_dirs=output_dirs)

    def unpackable(self) -> str:
        from .packing import unpackable

        return unpackable(self)

    def _auto_report(self) -> bool:
        """Whether this evaluator reports the logged validation metrics (retia's way), or nothing,
        leaving every report to the module's own ``report_*`` calls (NNI's Lightning evaluator with
        a user's module: ``retia.nni``'s overrides this)."""
        return True

    def _run(self, model_factory: Callable[[], Any]) -> None:
        module = copy.deepcopy(self.module)  # every evaluation starts from the module as given
        module.set_model(model_factory)
        self._fit_module(module)

    def _fit_module(
        self,
        module: pl.LightningModule,
        *,
        train_dataloaders: Any = None,
        report: bool | None = None,
        validate_only: bool = False,
        ckpt_path: str | None = None,
    ) -> None:
        """Fit ``module`` (or only validate it, without training data) on this evaluator's data and
        trainer, reporting each validation and the last as the final result (the metric named by
        the module's ``default_metric`` as 'default'). The one-shot strategies fit their module
        around the user's through here, with the training data they need (``train_dataloaders``)
        and every metric reported (``report=True``, never the bare number); ``validate_only`` scores
        a model whose weights are given (a subnet inheriting a supernet's); ``ckpt_path`` resumes
        the fit from a Lightning checkpoint (a previous attempt's)."""
        auto_report = self._auto_report() if report is None else report
        if auto_report:
            self._check_data()
        out = support.output_dir()
        bare = self.bare_metric and report is None
        callback = support.ReportingCallback(
            getattr(module, "default_metric", None), bare=bare, report=auto_report
        )
        train = self.train_dataloaders if train_dataloaders is None else train_dataloaders
        loaders = seeding.drawing_from(
            seeding.data_stream(), [train, self.val_dataloaders], [module, self.datamodule]
        )
        with support.quiet(), support.interrupts(callback, detect=self.detect_interrupt), loaders:
            trainer = self._build_trainer(out, callback)
            if not validate_only and (self.fit_enabled or train_dataloaders is not None):
                resume = {} if ckpt_path is None else {"ckpt_path": ckpt_path}
                trainer.fit(
                    module,
                    train,
                    self.val_dataloaders,
                    datamodule=self.datamodule,
                    **{**self.fit_kwargs, **resume},
                )
                callback.recover(trainer)
                _log.debug("fit ended after %d validation epoch(s)", callback.count)
            else:
                trainer.validate(
                    module,
                    self.val_dataloaders,
                    datamodule=self.datamodule,
                    **{"verbose": False, **support.validate_kwargs(self.fit_kwargs)},
                )
        if callback.interrupted:  # detect_interrupt=False: the training ended, the trial did not finish
            _log.warning(
                "training was interrupted after %d validation epoch(s): no final result "
                "(detect_interrupt=False)",
                callback.count,
            )
            return
        if auto_report:
            report_final_result(support.last_metric(callback))

    def _check_data(self) -> None:
        """Refuse to run without validation data: there would be no metric to report."""
        source = self.datamodule if self.datamodule is not None else self.module
        if self.val_dataloaders is None and not is_overridden("val_dataloader", source):
            raise ConfigError(
                f"{type(self).__name__} has no validation data, so it has no metric to report: pass "
                "val_dataloaders=retia.lightning.DataLoader(...) (and train_dataloaders= to train), "
                "or a datamodule=, or define val_dataloader() on the module"
            )

    def _build_trainer(self, out: Path, callback: pl.Callback, logger: Any = None) -> pl.Trainer:
        """A fresh Trainer per fit (they are single-use), from a copy of the recipe: fresh callbacks too.
        ``logger`` replaces the CSV logger of a trainer retia builds itself (a pack's, say)."""
        kwargs = load(dump(self._trainer_arguments()))  # a copy: fresh callbacks, loggers
        if self.trainer is None and logger is not None:
            kwargs.setdefault("logger", logger)
        options = support.trainer_options(kwargs, out, evaluator_defaults=self.trainer is None)
        options["callbacks"] = [*_as_list(options.get("callbacks")), callback]
        return pl.Trainer(**options)

    def _trainer_arguments(self) -> dict[str, Any]:
        """The Trainer's keyword arguments as given: its recipe's, or a built-in evaluator's
        defaults and trainer keywords (not copied: see ``_build_trainer``)."""
        if self.trainer is not None:
            recipe = get_recipe(self.trainer)  # never None: __init__ accepts traced trainers only
            return dict(recipe.kwargs) if recipe is not None else {}
        return {**self._trainer_defaults, **self.trainer_kwargs}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.module).__name__})"


class SupervisedLearningModule(LightningModule):
    """NNI's module for (x, y) batches: a criterion, an optimizer and named torchmetrics metrics.

    Logs ``train_loss`` and ``train_<name>`` once per training epoch, ``val_loss`` and ``val_<name>``
    per validation; the first metric's ``val_<name>`` is the default (``val_loss`` with none).
    Subclass it and override ``configure_optimizers`` or the steps, as NNI's DARTS tutorial does.
    """

    def __init__(
        self,
        criterion: Callable[[], nn.Module],
        metrics: Mapping[str, MetricSpec],
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        export_onnx: OnnxTarget = False,
    ) -> None:
        """``export_onnx``: True (or None, as NNI) writes ``model.onnx`` in the trial's output
        directory after training; a path, there (a relative one inside the output directory)."""
        super().__init__()
        # NNI saves the criterion and optimizer classes too: a checkpoint holding classes no longer
        # loads with torch.load's default weights_only=True, so only the numbers are hyperparameters
        self.save_hyperparameters("learning_rate", "weight_decay")
        self.criterion = criterion()
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.export_onnx = export_onnx
        # NNI's attribute, for subclasses' own steps; retia's steps use one fresh copy per stage
        self.metrics = nn.ModuleDict({name: _metric(spec) for name, spec in metrics.items()})
        self.train_metrics = copy.deepcopy(self.metrics)
        self.val_metrics = copy.deepcopy(self.metrics)
        # the same metric objects as plain lists: for the hot loop (a ModuleDict is slow to walk)
        self._train_pairs = _pairs(self.train_metrics)
        self._val_pairs = _pairs(self.val_metrics)
        self.default_metric = f"val_{next(iter(self.metrics))}" if self.metrics else "val_loss"
        self._example: torch.Tensor | None = None
        self._train_loss: list[Any] = [0.0, 0]  # loss sum, sample count of this epoch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        self._remember_example(x)
        y_hat = self(x)
        loss: torch.Tensor = self.criterion(y_hat, y)
        # Summed in place (nn.Module.__setattr__ is slow) and logged once per epoch: a per-step
        # self.log costs about a millisecond on CPU, a small model's whole step (docs/benchmarks.md).
        self._train_loss[0] += loss.detach() * len(y)
        self._train_loss[1] += len(y)
        detached = y_hat.detach()
        for _, metric in self._train_pairs:
            metric.update(detached, y)
        return loss

    def on_train_epoch_start(self) -> None:
        self._train_loss[:] = [0.0, 0]
        for _, metric in self._train_pairs:
            metric.reset()

    def on_train_epoch_end(self) -> None:
        total, count = self._train_loss
        if not count:  # a subclass's own training_step logs for itself
            return
        # (sync_dist: under DDP, the mean over the ranks; nothing to sync in one process)
        self.log("train_loss", total / count, prog_bar=True, sync_dist=True)
        for name, metric in self._train_pairs:
            self.log(f"train_{name}", metric.compute(), prog_bar=True, sync_dist=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self._remember_example(x)
        y_hat = self(x)
        self.log("val_loss", self.criterion(y_hat, y), prog_bar=True, batch_size=len(y), sync_dist=True)
        for name, metric in self._val_pairs:
            metric.update(y_hat, y)
            self.log(f"val_{name}", metric, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> Any:
        return self.optimizer(
            self.parameters(), lr=self.hparams["learning_rate"], weight_decay=self.hparams["weight_decay"]
        )

    def _remember_example(self, x: torch.Tensor) -> None:
        if self.export_onnx is not False and self._example is None:
            self._example = x[:2].detach()

    def on_fit_end(self) -> None:
        self._export()

    def on_validation_end(self) -> None:
        if self.trainer.state.fn == TrainerFn.VALIDATING:  # validation only: no fit to end
            self._export()

    def _export(self) -> None:
        if self.export_onnx is not False and self._example is not None:
            path = support.onnx_path(self.export_onnx, support.output_dir(self.trainer))
            support.export_onnx(self.model, self._example, path)


class _TopOneAccuracy(torchmetrics.Metric):
    """Top-1 accuracy of (batch, classes) logits, the class count read from them (torchmetrics'
    Accuracy needs it up front: ``Classification(num_classes=...)`` uses that one)."""

    full_state_update = False
    correct: torch.Tensor
    total: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.add_state("correct", torch.tensor(0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        if preds.dim() != 2 or preds.shape[-1] < 2:
            raise ConfigError(
                "Classification needs (batch, num_classes) logits with num_classes >= 2; the model "
                f"returned shape {tuple(preds.shape)}"
            )
        self.correct += (preds.argmax(dim=-1) == target).sum()
        self.total += target.numel()

    def compute(self) -> torch.Tensor:
        return self.correct.float() / self.total


class ClassificationModule(SupervisedLearningModule):
    """NNI's module behind :class:`Classification`: cross-entropy, Adam, accuracy (``acc``)."""

    def __init__(
        self,
        criterion: Callable[[], nn.Module] = nn.CrossEntropyLoss,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        export_onnx: OnnxTarget = False,
        num_classes: int | None = None,
    ) -> None:
        """``num_classes`` None: read from the model's output (NNI 3 requires it)."""
        if num_classes is not None and num_classes < 2:
            raise ConfigError(f"num_classes must be at least 2, got {num_classes}")
        accuracy = (
            _TopOneAccuracy()
            if num_classes is None
            else torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, average="micro")
        )
        super().__init__(criterion, {"acc": accuracy}, learning_rate, weight_decay, optimizer, export_onnx)
        self.num_classes = num_classes


class RegressionModule(SupervisedLearningModule):
    """NNI's module behind :class:`Regression`: MSE loss, Adam, mean squared error (``mse``)."""

    def __init__(
        self,
        criterion: Callable[[], nn.Module] = nn.MSELoss,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        export_onnx: OnnxTarget = False,
    ) -> None:
        metrics = {"mse": torchmetrics.MeanSquaredError()}
        super().__init__(criterion, metrics, learning_rate, weight_decay, optimizer, export_onnx)


class _Supervised(Lightning):
    # retia's own modules need no sanity check (it costs one extra validation per trial)
    _trainer_defaults: dict[str, Any] = {"num_sanity_val_steps": 0}


class Classification(_Supervised):
    """Train with ``criterion`` and ``optimizer``; report validation accuracy (``val_acc``) as ``'default'``.

    ``num_classes`` is read from the model's output when None; ``trainer_kwargs`` go to the Trainer.
    """

    def __init__(
        self,
        criterion: Callable[[], nn.Module] = nn.CrossEntropyLoss,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        train_dataloaders: Loaders = None,
        val_dataloaders: Loaders = None,
        datamodule: pl.LightningDataModule | None = None,
        export_onnx: OnnxTarget = False,
        num_classes: int | None = None,
        **trainer_kwargs: Any,
    ) -> None:
        train_dataloaders, val_dataloaders = _renamed(train_dataloaders, val_dataloaders, trainer_kwargs)
        module = ClassificationModule(
            criterion, learning_rate, weight_decay, optimizer, export_onnx, num_classes
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
        criterion: Callable[[], nn.Module] = nn.MSELoss,
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        train_dataloaders: Loaders = None,
        val_dataloaders: Loaders = None,
        datamodule: pl.LightningDataModule | None = None,
        export_onnx: OnnxTarget = False,
        **trainer_kwargs: Any,
    ) -> None:
        train_dataloaders, val_dataloaders = _renamed(train_dataloaders, val_dataloaders, trainer_kwargs)
        module = RegressionModule(criterion, learning_rate, weight_decay, optimizer, export_onnx)
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


def _pairs(metrics: nn.ModuleDict) -> list[tuple[str, torchmetrics.Metric]]:
    return [(name, cast(torchmetrics.Metric, metric)) for name, metric in metrics.items()]


def _metric(spec: MetricSpec) -> torchmetrics.Metric:
    """A metric instance from an instance or a class (NNI 2.x took classes, NNI 3 instances)."""
    metric = spec() if isinstance(spec, type) else spec
    if not isinstance(metric, torchmetrics.Metric):
        raise ConfigError(
            f"metrics must map names to torchmetrics metrics (or their classes), got {type(metric).__name__}"
        )
    return metric


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
