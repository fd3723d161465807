"""NNI 3.0's ``nni.nas.nn.pytorch``: ``ModelSpace`` and the choices, and torch.nn's layers by their
own names and as ``MutableLinear``, ``MutableConv2d``, ... (in retia every layer takes choices as
arguments: the ``Mutable`` names are the layers themselves)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

import retia.nn as _nn
from retia.nn import (
    AutoActivation,
    Cell,
    ChosenInputs,
    InputChoice,
    LayerChoice,
    NasBench101Cell,
    NasBench201Cell,
    Repeat,
    ValueChoice,
    label_scope,
)
from retia.nn.registry import LabelStyle
from retia.nni.mutable import Categorical

__all__ = [  # NNI 3.0's names here; torch.nn's layers come through __getattr__
    "AutoActivation",
    "Cell",
    "ChosenInputs",
    "InputChoice",
    "LayerChoice",
    "ModelSpace",
    "NasBench101Cell",
    "NasBench201Cell",
    "Repeat",
    "ValueChoice",
    "label_scope",
]


class ModelSpace(_nn.ModelSpace):
    """NNI 3.0's ``ModelSpace``: retia's, labelling as NNI 3.0 does, so NNI's samples load as they are.

    ``class Net(ModelSpace, label_prefix='model')`` puts every choice built in its ``__init__``
    under ``model/``: ``model/1``, ``model/2``, ... for those without a label, ``model/width``
    for ``label='width'`` (a nested space with a prefix adds its own: ``model/sub/1``). Without a
    prefix (each subclass declares its own, as in NNI) every choice needs an explicit label.
    """

    _retia_label_style: ClassVar[LabelStyle] = LabelStyle.NNI3
    _retia_label_prefix: ClassVar[str | None] = None

    def __init_subclass__(
        cls, disable_init_wrapper: bool = False, label_prefix: str | None = None, **kwargs: Any
    ) -> None:
        super().__init_subclass__(**kwargs)
        if label_prefix is not None and (
            not isinstance(label_prefix, str) or not label_prefix or "/" in label_prefix
        ):
            raise ValueError(f"label_prefix must be a non-empty string without '/', got {label_prefix!r}")
        cls._retia_label_prefix = label_prefix

    def freeze(self, sample: Any, *, inherit_weights: bool = True) -> torch.nn.Module:
        """NNI 3.0's ``freeze``: the concrete model of ``sample`` with this supernet's weights (its
        chosen candidates', sliced where a width or kernel is chosen smaller)."""
        return super().freeze(sample, inherit_weights=inherit_weights)

    def simplify(self) -> dict[str, Categorical]:  # type: ignore[override]
        """NNI 3.0's ``simplify()``: ``{label: Categorical}``, every decision once (a shared label
        once), in construction order (retia's own ``ModelSpace.simplify`` gives ChoiceSpecs)."""
        return {label: Categorical.from_spec(spec) for label, spec in super().simplify().items()}


def __getattr__(name: str) -> Any:
    """``MutableX`` and ``X``: torch.nn's ``X``."""
    if name.startswith("Mutable") and name != "Mutable":
        try:
            return getattr(_nn, name[len("Mutable") :])
        except AttributeError:
            pass
    return getattr(_nn, name)
