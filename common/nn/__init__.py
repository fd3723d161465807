"""``retia.nn``: model spaces (ModelSpace, LayerChoice, InputChoice, ValueChoice) plus torch.nn's layers.

``import retia.nn as nn`` works as a drop-in for ``torch.nn`` in a model space definition:
the common layers are re-exported by name, and any other ``torch.nn`` attribute is found
on first use (PEP 562).
"""

from __future__ import annotations

from typing import Any

import torch.nn as _torch_nn
from torch.nn import (
    ELU,
    GELU,
    GRU,
    LSTM,
    RNN,
    SELU,
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    AvgPool1d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    BCEWithLogitsLoss,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose2d,
    CrossEntropyLoss,
    Dropout,
    Dropout2d,
    Embedding,
    Flatten,
    GroupNorm,
    Hardswish,
    Identity,
    L1Loss,
    LayerNorm,
    LeakyReLU,
    Linear,
    LogSoftmax,
    MaxPool1d,
    MaxPool2d,
    Mish,
    Module,
    ModuleDict,
    ModuleList,
    MSELoss,
    MultiheadAttention,
    NLLLoss,
    Parameter,
    ParameterDict,
    ParameterList,
    PReLU,
    ReLU,
    ReLU6,
    Sequential,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
    TransformerEncoder,
    TransformerEncoderLayer,
    Unflatten,
    Upsample,
    ZeroPad2d,
    functional,
    init,
)

from ..arch import Arch, fixed_arch, validate_arch
from .cell import Cell
from .choices import ChosenInputs, InputChoice, LayerChoice, ValueChoice
from .hypermodule import AutoActivation
from .nasbench import NasBench101Cell, NasBench201Cell
from .parameter_choice import ModelParameterChoice
from .registry import label_scope
from .repeat import Repeat
from .space import ModelSpace, model_wrapper, original_state_dict_hooks

__all__ = [
    # retia's own
    "Arch",
    "AutoActivation",
    "Cell",
    "ChosenInputs",
    "InputChoice",
    "LayerChoice",
    "ModelParameterChoice",
    "ModelSpace",
    "NasBench101Cell",
    "NasBench201Cell",
    "Repeat",
    "ValueChoice",
    "fixed_arch",
    "label_scope",
    "model_wrapper",
    "original_state_dict_hooks",
    "validate_arch",
    # torch.nn re-exports
    "AdaptiveAvgPool1d",
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "BCEWithLogitsLoss",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "ConvTranspose2d",
    "CrossEntropyLoss",
    "Dropout",
    "Dropout2d",
    "ELU",
    "Embedding",
    "Flatten",
    "GELU",
    "GRU",
    "GroupNorm",
    "Hardswish",
    "Identity",
    "L1Loss",
    "LSTM",
    "LayerNorm",
    "LeakyReLU",
    "Linear",
    "LogSoftmax",
    "MSELoss",
    "MaxPool1d",
    "MaxPool2d",
    "Mish",
    "Module",
    "ModuleDict",
    "ModuleList",
    "MultiheadAttention",
    "NLLLoss",
    "PReLU",
    "Parameter",
    "ParameterDict",
    "ParameterList",
    "RNN",
    "ReLU",
    "ReLU6",
    "SELU",
    "Sequential",
    "SiLU",
    "Sigmoid",
    "Softmax",
    "Tanh",
    "TransformerEncoder",
    "TransformerEncoderLayer",
    "Unflatten",
    "Upsample",
    "ZeroPad2d",
    "functional",
    "init",
]


def __getattr__(name: str) -> Any:
    """Any other ``torch.nn`` attribute (``nn.Hardtanh``, ``nn.utils``, ...)."""
    try:
        return getattr(_torch_nn, name)
    except AttributeError:
        raise AttributeError(f"module 'retia.nn' has no attribute {name!r} (nor has torch.nn)") from None
