"""NNI 2.x's ``nni.retiarii.evaluator.pytorch.lightning``: as 3.0's (``retia.nni.nas``: the bare
metric, self-reporting modules), with 2.x's default ``export_onnx=True`` (``model.onnx`` in the
trial's directory), and 2.x's private names of the modules."""

from __future__ import annotations

import inspect
from typing import Any

from retia.nni.nas.evaluator.pytorch import lightning as _v3
from retia.nni.nas.evaluator.pytorch.lightning import (
    DataLoader,
    Lightning,
    LightningModule,
    SupervisedLearningModule,
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


def _onnx_by_default(cls: type, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """``kwargs`` with 2.x's ``export_onnx=True`` unless the call gives it (by name, or by position in
    ``cls``'s signature)."""
    position = list(inspect.signature(cls).parameters).index("export_onnx")
    return kwargs if len(args) > position else {"export_onnx": True, **kwargs}


class ClassificationModule(_v3.ClassificationModule):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_onnx_by_default(_v3.ClassificationModule, args, kwargs))


class RegressionModule(_v3.RegressionModule):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_onnx_by_default(_v3.RegressionModule, args, kwargs))


class Classification(_v3.Classification):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_onnx_by_default(_v3.Classification, args, kwargs))


class Regression(_v3.Regression):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **_onnx_by_default(_v3.Regression, args, kwargs))


_SupervisedLearningModule = SupervisedLearningModule  # 2.x's names
_ClassificationModule = ClassificationModule
_RegressionModule = RegressionModule
