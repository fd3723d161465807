"""A model space's :class:`~retia.searchspace.SpaceDescription`: its choices and which gate which.

A LayerChoice whose candidates hold choices, and a Repeat whose blocks do, are *gates*. For each
option of a gate, :func:`~retia.nn.space.locate_choices` tells which choices that option keeps on
the path (the other gates left open); a choice kept by only some options requires the gate to
take one of them. Nested gates give a choice one requirement per enclosing gate. These are
necessary conditions: a label shared by choices under two different gates may be told apart by
a strategy where the model does not use it (never the reverse).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from torch import nn

from ..arch import ChoiceSpec, canonical
from ..searchspace import Choice, Requirement, SpaceDescription
from .choices import LayerChoice
from .repeat import Repeat
from .space import ModelSpace, locate_choices

__all__ = ["describe_space"]

_log = logging.getLogger(__name__)


def describe_space(space: ModelSpace, specs: Mapping[str, ChoiceSpec] | None = None) -> SpaceDescription:
    """Every choice of the supernet ``space`` (or the ``specs`` given) with its requirements."""
    if specs is None:
        specs = space._retia_space.specs
    requires: dict[str, list[Requirement]] = {label: [] for label in specs}
    for gate in _gates(space):
        spec = specs.get(gate)
        if spec is None:
            continue
        options = [canonical(o) for o in spec.options]
        kept: dict[str, list[object]] = {}
        located: set[str] = set()
        for option in options:
            found, reached = locate_choices(space, {gate: option})
            located |= found
            for label in reached:
                kept.setdefault(label, []).append(option)
        for label in [label for label in specs if label in located and label != gate]:
            values = kept.get(label, [])
            if len(values) < len(options):
                requires[label].append(Requirement(gate, tuple(values)))
    choices = tuple(Choice.from_spec(spec, requires[label]) for label, spec in specs.items())
    _log.debug("described %d choices, %d with requirements", len(choices), sum(map(bool, requires.values())))
    return SpaceDescription(choices)


def _gates(root: nn.Module) -> list[str]:
    """Labels of the LayerChoices and searched Repeats under ``root`` whose branches hold choices."""
    gates: list[str] = []
    for module in root.modules():
        if isinstance(module, LayerChoice):
            branches: list[nn.Module] = list(module)
            label = module.label
        elif isinstance(module, Repeat) and module.spec is not None:
            branches, label = list(module.blocks), module.spec.label
        else:
            continue
        if label not in gates and any(locate_choices(b, {})[0] for b in branches):
            gates.append(label)
    return gates
