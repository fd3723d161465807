"""ModelParameterChoice (NNI 2.x's): a choice that is a plain value wherever the model code uses it.

A ValueChoice in a supernet is a holder that layers understand; a ModelParameterChoice is the
value itself, evaluated when the space is built: its ``default`` in the supernet, the chosen
option under ``fixed_arch``. So it works in ``if``, ``range()``, ``torch.zeros(...)``, any
function. The price (as in NNI): the supernet holds one value of it, so ``activate()`` cannot
switch it; each of its values is built by ``fixed_arch`` / ``space.freeze(arch)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..arch import MISSING, fixed_choice, match_option
from .choices import _check_prior, _check_values
from .registry import register_choice

__all__ = ["ModelParameterChoice"]

T = TypeVar("T")


class ModelParameterChoice:
    """Choose one of ``candidates``; constructing one returns a plain value (never an instance).

    ``default`` is the supernet's value: one of the candidates, or a function of the candidate
    list (``ModelParameterChoice.FIRST``, the default, or ``.LAST``). ``prior`` is checked and,
    as in NNI, has no effect. The label defaults as a ValueChoice's does (``model_N`` under NNI
    2.x's ``model_wrapper``); it is a ``valuechoice`` decision of the space, so it shares a label
    with a ValueChoice of the same options.
    """

    def __new__(  # type: ignore[misc]
        cls,
        candidates: Sequence[T],
        *,
        prior: Sequence[float] | None = None,
        default: Callable[[list[T]], T] | T | None = None,
        label: str | None = None,
    ) -> T:
        options: list[T] = _check_values(candidates)
        _check_prior(prior, options)
        value = _default_of(options, cls.FIRST if default is None else default)
        spec = register_choice("valuechoice", label, options, value)
        chosen: T = fixed_choice(spec)
        return value if chosen is MISSING else chosen

    @staticmethod
    def FIRST(sequence: Sequence[T]) -> T:  # NNI's name
        """The first candidate: the default ``default``."""
        return sequence[0]

    @staticmethod
    def LAST(sequence: Sequence[T]) -> T:  # NNI's name
        """The last candidate."""
        return sequence[-1]


def _default_of(options: list[T], default: Any) -> T:
    """``default`` when it is a candidate, else ``default(options)``, which must be one."""
    found = match_option(options, default)
    if found is not MISSING:
        result: T = found
        return result
    if not callable(default):
        raise ValueError(
            f"ModelParameterChoice default {default!r} is not one of the candidates {options!r} "
            "and is not a function of them (such as ModelParameterChoice.FIRST or .LAST)"
        )
    picked = default(list(options))
    found = match_option(options, picked)
    if found is MISSING:
        raise ValueError(
            f"ModelParameterChoice default {default!r} picked {picked!r}, not one of {options!r}"
        )
    chosen: T = found
    return chosen
