"""NNI 3.0's ``nni.nas.evaluator.pytorch``: its ``lightning`` module's names."""

from __future__ import annotations

from .lightning import *  # noqa: F403
from .lightning import __all__ as __all__
