"""Repeat: a block stacked a fixed or a searched number of times (the depth decision of NAS spaces).

As a supernet a ``Repeat`` holds its largest depth of blocks and runs the first ``active``
ones; under :func:`~retia.nn.fixed_arch` it is built with exactly the chosen number of blocks.
Both keep the blocks under ``blocks.<index>``, so a frozen model's state-dict keys are the
supernet's keys of its first blocks.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch import nn

from ..arch import MISSING, ChoiceSpec, current_fixed_arch, fixed_choice
from .choices import ValueChoice, _check_active
from .registry import register_choice

__all__ = ["Repeat", "UNBUILT_ATTR"]

_log = logging.getLogger(__name__)

# On a module of a frozen model: the sub-paths (".blocks.") under which the supernet has keys that
# this architecture dropped, so original_state_dict_hooks drops them on load.
UNBUILT_ATTR = "_retia_unbuilt_from"

Blocks = nn.Module | Sequence[nn.Module] | Sequence[Callable[[int], nn.Module]] | Callable[[int], nn.Module]
Depth = int | tuple[int, int]  # or a ValueChoice of ints (typed as an int)


@dataclass(frozen=True)
class _Depth:
    """A Repeat's depth resolved: its decision (None when fixed), the depth built and the one to run."""

    spec: ChoiceSpec | None
    built: int
    active: int


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _resolve_depth(depth: Any, label: str | None) -> _Depth:
    """Register the depth decision (a range) or take it from its ValueChoice; the chosen depth if frozen."""
    if isinstance(depth, ValueChoice):  # a supernet ValueChoice (frozen ones are plain ints)
        if label is not None and label != depth.label:
            _log.warning("Repeat: depth is ValueChoice %r, label=%r is ignored", depth.label, label)
        options = list(depth.spec.options)
        if not options or not all(_is_int(o) and o >= 0 for o in options) or max(options) < 1:
            raise ValueError(
                f"Repeat depth ValueChoice {depth.label!r} must choose among ints >= 0 (the largest >= 1), "
                f"got {options!r}"
            )
        return _Depth(depth.spec, max(options), int(depth.spec.default))
    if isinstance(depth, tuple):
        if (
            len(depth) != 2
            or not all(_is_int(d) for d in depth)
            or not 0 <= depth[0] <= depth[1]
            or depth[1] < 1
        ):
            raise ValueError(
                f"Repeat depth range must be (min, max) with 0 <= min <= max and max >= 1, got {depth!r}"
            )
        options = list(range(depth[0], depth[1] + 1))
        spec = register_choice("repeat", label, options, options[-1])
        chosen = fixed_choice(spec)
        if chosen is MISSING:
            return _Depth(spec, options[-1], options[-1])
        return _Depth(None, chosen, chosen)
    if _is_int(depth):
        if depth < 0:  # 0 is allowed: a frozen ValueChoice of depths can choose it
            raise ValueError(
                f"Repeat depth must be an int >= 0, a (min, max) range or a ValueChoice, got {depth!r}"
            )
        return _Depth(None, depth, depth)
    raise TypeError(
        f"Repeat depth must be an int, a (min, max) tuple or a ValueChoice of ints, "
        f"got {type(depth).__name__}"
    )


def _instantiate(blocks: Any, count: int) -> list[nn.Module]:
    """The first ``count`` blocks: copies of one module, a prefix of a list, or ``factory(index)`` each."""
    if isinstance(blocks, nn.ModuleList) or not isinstance(blocks, (list, tuple)):
        if isinstance(blocks, nn.Module):
            items: list[Any] = [blocks if i == 0 else copy.deepcopy(blocks) for i in range(count)]
        elif callable(blocks):
            items = [blocks] * count
        else:
            raise TypeError(
                "Repeat blocks must be a module, a list of modules, or a callable index -> module, "
                f"got {type(blocks).__name__}"
            )
    else:
        if len(blocks) < count:
            raise ValueError(f"Repeat needs {count} blocks (its largest depth), the list has {len(blocks)}")
        items = list(blocks[:count])
    built: list[nn.Module] = []
    for i, item in enumerate(items):
        module = item if isinstance(item, nn.Module) else item(i)
        if not isinstance(module, nn.Module):
            raise TypeError(
                f"Repeat block factory returned a {type(module).__name__} for index {i}, not an nn.Module"
            )
        built.append(module)
    return built


class Repeat(nn.Module):
    """``blocks`` applied ``depth`` times in sequence; ``depth`` an int, a ``(min, max)`` range or a choice.

    ``blocks`` is a module (deep-copied for each repetition, so choices inside it are one decision
    shared by all copies), a list of modules (a prefix of it is used), or a factory ``index -> module``
    (each block built anew, with its own choices). The depth decision's value is the number of blocks.
    Under ``fixed_arch`` only the chosen number of blocks is built.
    """

    label: str | None

    def __new__(cls, blocks: Any = MISSING, depth: Any = MISSING, *, label: str | None = None) -> Any:
        obj = super().__new__(cls)
        if blocks is not MISSING:  # unpickling and deepcopy call __new__ without arguments
            obj.__dict__["_retia_depth"] = _resolve_depth(depth, label)
        return obj

    def __init__(self, blocks: Blocks, depth: Depth, *, label: str | None = None) -> None:
        resolved: _Depth = self.__dict__.pop("_retia_depth")
        super().__init__()
        self.spec = resolved.spec
        self.label = resolved.spec.label if resolved.spec is not None else label
        self.max_depth = resolved.built
        self.blocks = nn.ModuleList(_instantiate(blocks, resolved.built))
        self.active = resolved.active
        if current_fixed_arch() is not None:  # the supernet may hold more blocks, from this index on
            self.__dict__[UNBUILT_ATTR] = resolved.built

    @property
    def options(self) -> list[int]:
        """The possible depths ([depth] when fixed)."""
        return [self.active] if self.spec is None else list(self.spec.options)

    def activate(self, value: int) -> None:
        """Make forward run the first ``value`` blocks (one of the possible depths)."""
        if self.spec is None:
            raise RuntimeError(
                f"this Repeat has a fixed depth of {self.active}; there is nothing to activate"
            )
        self.active = _check_active(self.spec, value)

    def forward(self, x: Any) -> Any:
        for block in self.blocks[: self.active]:
            x = block(x)
        return x

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        module: nn.Module = self.blocks[index]
        return module

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.blocks)

    def extra_repr(self) -> str:
        return f"label={self.label!r}, active={self.active!r}, options={self.options!r}"
