"""NNI 2.x's ``nni.retiarii.utils``: ``original_state_dict_hooks``."""

from __future__ import annotations

from retia.nn.space import original_state_dict_hooks

__all__ = ["original_state_dict_hooks"]
