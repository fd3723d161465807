"""NNI 3.0's ``nni.nas.nn.pytorch``: ``ModelSpace`` and the choices, and torch.nn's layers by their
own names and as ``MutableLinear``, ``MutableConv2d``, ... (in retia every layer takes choices as
arguments: the ``Mutable`` names are the layers themselves)."""

from __future__ import annotations

from typing import Any

import retia.nn as _nn
from retia.nn import ChosenInputs, InputChoice, LayerChoice, ModelSpace, Repeat, ValueChoice

__all__ = ["ChosenInputs", "InputChoice", "LayerChoice", "ModelSpace", "Repeat", "ValueChoice"]


def __getattr__(name: str) -> Any:
    """``MutableX`` and ``X``: torch.nn's ``X``."""
    if name.startswith("Mutable") and name != "Mutable":
        try:
            return getattr(_nn, name[len("Mutable") :])
        except AttributeError:
            pass
    return getattr(_nn, name)
