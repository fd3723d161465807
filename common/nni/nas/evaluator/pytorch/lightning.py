"""NNI 3.0's ``nni.nas.evaluator.pytorch.lightning``: retia.lightning's classes, reporting as NNI's
do. ``Classification`` and ``Regression`` report the bare validation metric (a float, where retia
reports a dict); ``Lightning`` reports for a supervised module and leaves a module of the user's to
report for itself with ``nni.report_*`` (NNI's ``SupervisedLearningModule`` reports; its
``Lightning`` does not); a ``SupervisedLearningModule`` exports ONNX unless told not to."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from retia import lightning as _pl
from retia.lightning import (
    ClassificationModule,
    DataLoader,
    LightningModule,
    MetricSpec,
    OnnxTarget,
    RegressionModule,
    Trainer,
)

__all__ = [
    "Classification",
    "ClassificationModule",
    "DataLoader",
    "Lightning",
    "LightningModule",
    "Regression",
    "RegressionModule",
    "SupervisedLearningModule",
    "Trainer",
]


class SupervisedLearningModule(_pl.SupervisedLearningModule):
    """NNI 3.0's default ``export_onnx=None`` exports (``model.onnx`` in the trial's directory)."""

    def __init__(
        self,
        criterion: Callable[[], nn.Module],
        metrics: Mapping[str, MetricSpec],
        learning_rate: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] = torch.optim.Adam,
        export_onnx: OnnxTarget = None,
    ) -> None:
        super().__init__(criterion, metrics, learning_rate, weight_decay, optimizer, export_onnx)


class Lightning(_pl.Lightning):
    bare_metric = True

    def _auto_report(self) -> bool:
        return isinstance(self.module, _pl.SupervisedLearningModule)


class Classification(_pl.Classification):
    bare_metric = True


class Regression(_pl.Regression):
    bare_metric = True
