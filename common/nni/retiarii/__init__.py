"""NNI 2.x's ``nni.retiarii``: ``fixed_arch`` and ``model_wrapper``."""

from __future__ import annotations

from retia.arch import fixed_arch
from retia.nn.space import model_wrapper

__all__ = ["fixed_arch", "model_wrapper"]
