"""Plumbing for ``retia.lightning``: the reporting callback, trainer defaults, quieting, ONNX export.

Private: ``retia.lightning`` is the public face. Nothing here writes a training loop;
Lightning runs it, and the callback turns its logged validation metrics into reports.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

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


def check_trainer_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse keyword arguments that ``pytorch_lightning.Trainer`` does not take, all at once."""
    unknown = sorted(set(kwargs) - _TRAINER_PARAMS)
    if unknown:
        raise ConfigError(
            f"unknown Trainer option(s) {unknown}; see pytorch_lightning.Trainer for valid ones"
        )


def trainer_options(kwargs: dict[str, Any], out: Path, *, evaluator_defaults: bool) -> dict[str, Any]:
    """Fill in where Lightning writes (the trial's output directory) and how loud it is.

    ``evaluator_defaults`` adds the defaults of a trainer retia builds itself: a CSV logger,
    no checkpoints (a trial's model is rarely wanted; ask for it), one device.
    """
    tty = sys.stdout.isatty()
    options = dict(kwargs)
    options.setdefault("default_root_dir", str(out))
    options.setdefault("enable_progress_bar", tty)
    options.setdefault("enable_model_summary", tty)
    if evaluator_defaults:
        options.setdefault("logger", pl.loggers.CSVLogger(str(out), name="lightning_logs"))
        options.setdefault("enable_checkpointing", False)
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

    def __init__(self, default_metric: str | None) -> None:
        self.default_metric = default_metric
        self.last: dict[str, float] | None = None
        self.count = 0

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not on_validation_epoch_end: the module's own epoch-end hook runs
        # after the callbacks' and may log the metric (e.g. ``self.log('val_acc', acc.compute())``).
        if trainer.sanity_checking:
            return
        metrics = validation_metrics(trainer)
        if not metrics:
            return
        self.last = with_default(metrics, self.default_metric)
        if trainer.state.fn == TrainerFn.FITTING:
            self.count += 1
            report_intermediate_result(self.last)


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
    if callback.last is None:
        raise ConfigError(
            "no validation metric was logged, so there is nothing to report: give val_dataloaders "
            "(or a datamodule with val_dataloader) and log at least one metric in validation_step"
        )
    return callback.last


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> bool:
    """Write ``model`` as ONNX (dynamic batch dimension) to ``path``; False, with a warning, if it cannot."""
    was_training = model.training
    model.eval()
    try:
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
