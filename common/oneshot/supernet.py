"""What a one-shot strategy decides in a supernet, and the continuous relaxation DARTS trains.

:func:`decisions` lists every label of a supernet with the modules that use it.
:func:`relax` swaps the class of each LayerChoice, InputChoice, Repeat and Cell in place (as
:mod:`retia.nn.mixed` does, so parameters and state-dict keys stay as they are) for one whose
forward mixes its candidates by the weights set with :meth:`Relaxation.mix`; with no weights set
it runs its active candidate, as before. A choice inside a layer's arguments (a width, a kernel)
has no relaxation here: the differentiable strategies refuse it up front, saying which to use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import nn

from ..arch import Arch, ChoiceSpec, canonical
from ..errors import ConfigError
from ..nn.cell import Cell, _PerInputOps
from ..nn.choices import InputChoice, LayerChoice
from ..nn.repeat import Repeat
from ..nn.space import ModelSpace

__all__ = ["Decision", "Relaxation", "decisions", "relax"]

_WEIGHTS = "_retia_mix"  # instance attribute of a relaxed module: its mixing weights, or None


@dataclass
class Decision:
    """One label of a supernet: its spec and the modules that take their value from it."""

    label: str
    spec: ChoiceSpec
    modules: list[nn.Module] = field(default_factory=list)

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def options(self) -> list[Any]:
        return [canonical(o) for o in self.spec.options]


def decisions(supernet: nn.Module) -> dict[str, Decision]:
    """Every label of ``supernet`` (a ModelSpace built as a supernet), in construction order."""
    if not isinstance(supernet, ModelSpace):
        raise ConfigError(
            f"one-shot strategies train a retia.nn.ModelSpace supernet, got {type(supernet).__name__}"
        )
    if supernet._retia_space.frozen_arch is not None:
        raise ConfigError("one-shot strategies need the supernet: this space was built under fixed_arch")
    found = {label: Decision(label, spec) for label, spec in supernet.simplify().items()}
    for module in supernet.modules():
        if isinstance(module, (LayerChoice, InputChoice, Repeat)) and module.label in found:
            found[module.label].modules.append(module)
    return found


def _weights(module: nn.Module) -> torch.Tensor | None:
    weights: torch.Tensor | None = module.__dict__.get(_WEIGHTS)
    return weights


class _RelaxedLayerChoice(LayerChoice):
    """A LayerChoice whose output is the weighted sum of every candidate's (DARTS's mixed op)."""

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        weights = _weights(self)
        if weights is None:
            return super().forward(*args, **kwargs)
        total: Any = None
        for i, candidate in enumerate(self):
            out = weights[i] * candidate(*args, **kwargs)
            total = out if total is None else total + out
        return total


class _RelaxedInputChoice(InputChoice):
    """An InputChoice whose output is the weighted sum of its inputs (times ``n_chosen`` for 'sum')."""

    def forward(self, candidate_inputs: Sequence[torch.Tensor]) -> Any:
        weights = _weights(self)
        if weights is None:
            return super().forward(candidate_inputs)
        if len(candidate_inputs) != self.n_candidates:
            raise ValueError(
                f"InputChoice {self.label!r} expects {self.n_candidates} inputs, got {len(candidate_inputs)}"
            )
        total: Any = sum(w * x for w, x in zip(weights, candidate_inputs))
        return total * self.n_chosen if self.reduction == "sum" else total


class _RelaxedRepeat(Repeat):
    """A Repeat whose output is the weighted sum of its outputs at each possible depth."""

    def forward(self, x: Any) -> Any:
        weights = _weights(self)
        if weights is None:
            return super().forward(x)
        depths = self.options
        total: Any = weights[depths.index(0)] * x if 0 in depths else None
        for depth, block in enumerate(self.blocks, start=1):
            x = block(x)
            if depth in depths:
                out = weights[depths.index(depth)] * x
                total = out if total is None else total + out
            if depth >= max(depths):
                break
        return total


class _RelaxedCell(Cell):
    """A Cell whose every op slot is DARTS's mixed edge: the sum, over the earlier states, of the
    slot's mixed op on each state weighted by the slot's input weights (with per-input ops, that
    input's own)."""

    def _slot(self, op: nn.Module, inp: nn.Module, states: list[torch.Tensor]) -> torch.Tensor:
        weights = _weights(inp)
        if weights is None:
            return super()._slot(op, inp, states)
        total: Any = None
        for j, state in enumerate(states[: len(weights)]):
            edge = op[j] if isinstance(op, _PerInputOps) else op
            out = weights[j] * edge(state)
            total = out if total is None else total + out
        return cast(torch.Tensor, total)


_RELAXED: dict[type[nn.Module], type[nn.Module]] = {
    LayerChoice: _RelaxedLayerChoice,
    InputChoice: _RelaxedInputChoice,
    Repeat: _RelaxedRepeat,
}


def _relaxable(module: nn.Module) -> type[nn.Module] | None:
    for base, relaxed in _RELAXED.items():
        if type(module) in (base, relaxed):
            return relaxed
    return None


@dataclass
class Relaxation:
    """The relaxed decisions of a supernet: for each label, the number of weights it mixes."""

    decisions: dict[str, Decision]
    sizes: dict[str, int]

    def mix(self, weights: Mapping[str, torch.Tensor] | None) -> None:
        """Set each label's mixing weights (a 1-D tensor of ``sizes[label]``); None: run the active paths."""
        for label, decision in self.decisions.items():
            value = None if weights is None else weights[label]
            for module in decision.modules:
                module.__dict__[_WEIGHTS] = value

    def choose(self, label: str, scores: torch.Tensor) -> Any:
        """The architecture value the largest ``scores`` of ``label`` pick (the ``n_chosen`` largest
        inputs of an InputChoice choosing several, in order)."""
        decision = self.decisions[label]
        module = decision.modules[0]
        if isinstance(module, InputChoice) and module.n_chosen > 1:
            return sorted(int(i) for i in torch.topk(scores, module.n_chosen).indices)
        return decision.options[int(torch.argmax(scores))]

    def export(self, scores: Mapping[str, torch.Tensor]) -> Arch:
        return {label: self.choose(label, scores[label]) for label in self.decisions}


def relax(supernet: nn.Module, strategy: str) -> Relaxation:
    """Make every decision of ``supernet`` mixable (see the module docstring); a ConfigError naming
    the labels that cannot be (values inside layers, an InputChoice concatenating several)."""
    found = decisions(supernet)
    unrelaxable: list[str] = []
    sizes: dict[str, int] = {}
    for label, decision in found.items():
        relaxed = [_relaxable(m) for m in decision.modules]
        if not decision.modules or None in relaxed:
            unrelaxable.append(f"{label!r} (a value inside a layer or a Python computation)")
            continue
        first = decision.modules[0]
        if isinstance(first, InputChoice):
            if first.n_chosen > 1 and first.reduction not in ("sum", "mean"):
                unrelaxable.append(
                    f"{label!r} (an InputChoice of {first.n_chosen} inputs by {first.reduction!r})"
                )
                continue
            sizes[label] = first.n_candidates
        else:
            sizes[label] = len(decision.options)
    if unrelaxable:
        raise ConfigError(
            f"{strategy} mixes the candidates of LayerChoice, InputChoice and Repeat; it cannot relax "
            f"{', '.join(unrelaxable)}. Search such a space with RandomOneShot or ENAS, or write the "
            "choice as a LayerChoice of the layers it picks between"
        )
    cells = [m for m in supernet.modules() if type(m) in (Cell, _RelaxedCell)]
    loose = [cell.label for cell in cells if cell.merge_op != "all"]
    if loose:
        raise ConfigError(
            f"{strategy} mixes every node of a Cell, which merge_op='loose_end' cannot concatenate "
            f"(cells {loose}): build them with merge_op='all' (DARTS's), or search with RandomOneShot or ENAS"
        )
    for decision in found.values():
        for module in decision.modules:
            relaxed_cls = _relaxable(module)
            assert relaxed_cls is not None
            module.__class__ = relaxed_cls
            module.__dict__[_WEIGHTS] = None
    for cell in cells:
        cell.__class__ = _RelaxedCell
    return Relaxation(found, sizes)
