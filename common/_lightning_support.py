"""Plumbing for ``retia.lightning``: the reporting callback, trainer defaults, quieting, ONNX export.

Private: ``retia.lightning`` is the public face. Nothing here writes a training loop;
Lightning runs it, and the callback turns its logged validation metrics into reports.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from .devices import trainer_devices
from .errors import ConfigError
from .reporting import Metric, report_intermediate_result

_log = logging.getLogger(__name__)

# Warnings Lightning raises for every small CPU run; none of them is actionable for a trial.
_NOISY_WARNINGS = (
    r".*does not have many workers.*",
    r".*The number of training batches \(\d+\) is smaller than the logging interval.*",
    r".*GPU available but not used.*",
    r".*`tensorboardX` has been removed as a dependency.*",
    r".*`isinstance\(treespec, LeafSpec\)` is deprecated.*",
)
# Loggers that print a few lines per Trainer ("GPU available: False, used: False", ...) or per
# ONNX export ("torchvision is not installed"), and the level that keeps only what matters.
_CHATTY_LOGGERS = {
    "pytorch_lightning.utilities.rank_zero": logging.WARNING,
    "lightning_fabric.utilities.rank_zero": logging.WARNING,
    "pytorch_lightning.accelerators.cuda": logging.WARNING,
    "torch.onnx._internal.exporter._registration": logging.ERROR,
}
_TRAINER_PARAMS = frozenset(inspect.signature(pl.Trainer.__init__).parameters) - {"self"}
# trainer.fit's arguments the evaluator does not set itself (ckpt_path, weights_only), and those
# trainer.validate takes too: NNI passes fit_kwargs to validate when there is no training data
_FIT_PARAMS = frozenset(inspect.signature(pl.Trainer.fit).parameters) - {
    "self",
    "model",
    "train_dataloaders",
    "val_dataloaders",
    "datamodule",
}
_VALIDATE_PARAMS = frozenset(inspect.signature(pl.Trainer.validate).parameters)


def check_trainer_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments that ``pytorch_lightning.Trainer`` does not take, all at once."""
    unknown = sorted(set(kwargs) - _TRAINER_PARAMS)
    if unknown:
        raise ConfigError(
            f"unknown Trainer option(s) {unknown}; see pytorch_lightning.Trainer for valid ones"
        )


def check_fit_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse ``fit_kwargs`` that ``trainer.fit`` does not take, or that the evaluator sets itself."""
    unknown = sorted(set(kwargs) - _FIT_PARAMS)
    if unknown:
        raise ConfigError(
            f"fit_kwargs {unknown} are not trainer.fit() options the evaluator leaves to you; "
            f"those are {sorted(_FIT_PARAMS)} (the model and data are the evaluator's own arguments)"
        )


def validate_kwargs(fit_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``fit_kwargs`` that ``trainer.validate`` takes too, for a run without training data."""
    return {name: value for name, value in fit_kwargs.items() if name in _VALIDATE_PARAMS}


def trainer_options(kwargs: dict[str, Any], out: Path, *, evaluator_defaults: bool) -> dict[str, Any]:
    """Fill in where Lightning writes (the trial's output directory) and how loud it is.

    ``evaluator_defaults`` adds the defaults of a trainer retia builds itself: a CSV logger,
    no checkpoints (a trial's model is rarely wanted; ask for it), and the trial's devices
    (:func:`retia.devices.trainer_devices`: its GPUs, else the CPU without a CUDA probe).
    """
    tty = sys.stdout.isatty()
    options = dict(kwargs)
    options.setdefault("default_root_dir", str(out))
    options.setdefault("enable_progress_bar", tty)
    options.setdefault("enable_model_summary", tty)
    if evaluator_defaults:
        options.setdefault("logger", pl.loggers.CSVLogger(str(out), name="lightning_logs"))
        options.setdefault("enable_checkpointing", False)
        if "accelerator" not in options and "devices" not in options:
            given = trainer_devices()
            options.update(accelerator=given.accelerator, devices=given.devices)
            if given.strategy is not None:
                options.setdefault("strategy", given.strategy)
        options.setdefault("accelerator", "auto")
        options.setdefault("devices", 1)
    return options


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence Lightning's known-noisy warnings and per-Trainer INFO lines, for this block only.

    A logger whose level the user set explicitly is left alone.
    """
    loggers = {logging.getLogger(name): level for name, level in _CHATTY_LOGGERS.items()}
    quieted = {lg: level for lg, level in loggers.items() if lg.level == logging.NOTSET}
    with warnings.catch_warnings():
        for pattern in _NOISY_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
        for lg, level in quieted.items():
            lg.setLevel(level)
        try:
            yield
        finally:
            for lg in quieted:
                lg.setLevel(logging.NOTSET)


class ReportingCallback(pl.Callback):
    """Reports the logged validation metrics after each validation epoch (none in the sanity check).

    ``default_metric`` names the metric reported as ``'default'``; None means the first one logged.
    The final report is left to the evaluator, after ``fit`` returns, from :attr:`last`.
    """

    def __init__(self, default_metric: str | None, *, bare: bool = False, report: bool = True) -> None:
        self.default_metric = default_metric
        self.bare = bare  # report the 'default' value alone, as NNI's modules do
        self.report = report  # False: only count and remember; the module reports for itself
        self.last: dict[str, float] | None = None
        self.count = 0
        self.interrupted = False  # a KeyboardInterrupt ended the run (Lightning's graceful shutdown)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True

    def value(self) -> Metric:
        """What to report for :attr:`last`: the dict, or its 'default' alone when ``bare``."""
        if self.last is None:
            raise ConfigError(
                "no validation metric was logged, so there is nothing to report: give val_dataloaders "
                "(or a datamodule with val_dataloader) and log at least one metric in validation_step"
            )
        return self.last["default"] if self.bare else self.last

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: the module's own epoch-end hook runs
        # after the callbacks' and may log the metric (e.g. ``self.log('val_acc', acc.compute())``).
        if trainer.sanity_checking or not trainer.is_global_zero:  # (under DDP, rank 0 reports)
            return
        fitting = trainer.state.fn == TrainerFn.FITTING
        if not self.report:  # the module reports for itself: only count the validations
            self.count += fitting
            return
        metrics = validation_metrics(trainer)
        if not metrics:
            return
        self.last = with_default(metrics, self.default_metric)
        if fitting:
            self.count += 1
            report_intermediate_result(self.value())

    def recover(self, trainer: pl.Trainer) -> None:
        """After a fit whose ranks ran in forked processes (DDP in a trial, ``ddp_fork``), this
        callback saw none of it: the last metrics are those rank 0 sent back to this process."""
        if self.last is None and trainer.world_size > 1:
            metrics = validation_metrics(trainer)
            if metrics:
                self.last = with_default(metrics, self.default_metric)


def validation_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The metrics logged in the validation loop that just ended, as floats, in logging order."""
    metrics = trainer.callback_metrics
    names = _validation_names(trainer)
    if names is None:  # Lightning's internals moved: fall back to the naming convention
        names = [key for key in metrics if key.startswith("val")]
    out: dict[str, float] = {}
    for name in names:
        for key in (name, f"{name}_epoch"):
            value = metrics.get(key)
            if value is not None and getattr(value, "numel", lambda: 1)() == 1:
                out[name] = float(value)
                break
        else:  # several validation dataloaders: one value per dataloader
            out.update({k: float(v) for k, v in metrics.items() if k.startswith(f"{name}/dataloader_idx_")})
    return out


def _validation_names(trainer: pl.Trainer) -> list[str] | None:
    """Names logged in the evaluation loop, read from Lightning's result collection (private API)."""
    try:
        results = trainer._results
        if results is None:
            return None
        return list(dict.fromkeys(result.meta.name for result in results.values()))
    except AttributeError:
        return None


def with_default(metrics: dict[str, float], default_metric: str | None) -> dict[str, float]:
    """``{'default': metrics[default_metric], **metrics}``; None picks the first metric logged."""
    name = default_metric if default_metric is not None else next(iter(metrics))
    if name not in metrics:
        raise ConfigError(
            f"the default metric {name!r} was not logged in validation; logged: {sorted(metrics)}. "
            "Log it in validation_step or set default_metric on the module."
        )
    return {"default": metrics[name], **metrics}


def last_metric(callback: ReportingCallback) -> Metric:
    """The final result: the last validation metrics, or a clear error when validation never ran."""
    return callback.value()


@contextlib.contextmanager
def interrupts(callback: ReportingCallback, *, detect: bool) -> Iterator[None]:
    """NNI's ``detect_interrupt`` on today's Lightning, which answers a KeyboardInterrupt in fit
    with a graceful shutdown, then ignores SIGINT for good and calls ``sys.exit(1)``.

    The SIGINT handler is put back; the exit becomes a KeyboardInterrupt (``detect``) or a plain
    return with ``callback.interrupted`` set. Any other exit is left alone.
    """
    handler = signal.getsignal(signal.SIGINT)
    try:
        yield
    except SystemExit:
        if not callback.interrupted:
            raise
        if detect:
            raise KeyboardInterrupt("training was interrupted (detect_interrupt=True)") from None
    finally:
        if (
            handler is not None
            and signal.getsignal(signal.SIGINT) is not handler
            and threading.current_thread() is threading.main_thread()
        ):
            signal.signal(signal.SIGINT, handler)


def onnx_path(target: bool | str | os.PathLike[str] | None, out: Path) -> Path:
    """Where ``export_onnx`` writes: True/None ``out/model.onnx``; a relative path under ``out``."""
    if target is True or target is None:
        return out / "model.onnx"
    if target is False:
        raise ValueError("export_onnx is False: nothing to write")
    return out / Path(target)  # an absolute path stays itself


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> bool:
    """Write ``model`` as ONNX (dynamic batch dimension) to ``path``; False, with a warning, if it cannot."""
    was_training = model.training
    model.eval()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with quiet(), torch.no_grad():
            batch = torch.export.Dim("batch")
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=True,
                verbose=False,
                external_data=False,
                input_names=["input"],
                output_names=["output"],
                dynamic_shapes=({0: batch},),
            )
    except Exception as exc:  # an unexportable candidate must not lose its metric
        _log.warning(
            "ONNX export of %s to %s failed: %s: %s", type(model).__name__, path, type(exc).__name__, exc
        )
        return False
    finally:
        model.train(was_training)
    _log.info("exported %s to %s", type(model).__name__, path)
    return True


def output_dir(trainer: pl.Trainer | None = None) -> Path:
    """The trial's output directory (``RETIA_OUTPUT_DIR``), else the trainer's root directory."""
    env = os.environ.get("RETIA_OUTPUT_DIR")
    if env:
        return Path(env)
    return Path(trainer.default_root_dir if trainer is not None else ".")
