"""NNI 2.x's ``nni.retiarii.nn.pytorch`` (``import nni.retiarii.nn.pytorch as nn``): retia.nn, the
choices and torch.nn's layers (which take choices as arguments)."""

from __future__ import annotations

from typing import Any

import retia.nn as _nn
from retia.nn import *  # noqa: F403
from retia.nn import __all__ as __all__
from retia.nni.retiarii.serializer import basic_unit as basic_unit  # reachable here, as in NNI 2.x


def __getattr__(name: str) -> Any:
    """Any other ``torch.nn`` attribute."""
    return getattr(_nn, name)
