"""NNI 3.0's ``nni.nas.space``: ``model_context(sample)`` builds the concrete model of a space, as
retia's ``fixed_arch``; ``BaseModelSpace`` is retia's ``ModelSpace``."""

from __future__ import annotations

from retia.arch import fixed_arch as model_context
from retia.nn.space import ModelSpace as BaseModelSpace

__all__ = ["BaseModelSpace", "model_context"]
