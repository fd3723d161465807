"""The old import path of :class:`retia.arch.FrozenModel`, kept until client/backend.py moves off it.

Delete this module once ``_model_recipe`` in client/backend.py reads
``from retia.arch import FrozenModel``.
"""

from __future__ import annotations

from .arch import FrozenModel

__all__ = ["FrozenModel"]
