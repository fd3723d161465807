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
import torch.nn.functional as F
from torch import nn

from ..arch import Arch, ChoiceSpec, canonical
from ..errors import ConfigError
from ..nn.cell import Cell, _chosen_index, _PerInputOps
from ..nn.choices import InputChoice, LayerChoice
from ..nn.repeat import Repeat
from ..nn.space import ModelSpace

__all__ = ["Decision", "Relaxation", "decisions", "relax"]

_WEIGHTS = "_retia_mix"  # instance attribute of a relaxed module: its mixing weights, or None
_EDGES = "_retia_edges"  # of a Cell relaxed by edges: {(node, input): weights}, or None


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
    """A relaxed Cell, by slots (each op slot a mixed edge over every earlier state, weighted by
    the slot's input weights) or, once :func:`relax` gives it edge weights, by edges as the DARTS
    paper does: one mixed op per (node, earlier state), slot 0's candidates, every edge summed."""

    def _node(self, node: int, states: list[torch.Tensor]) -> torch.Tensor:
        if _EDGES not in self.__dict__:
            return super()._node(node, states)  # by slots: see _slot
        edges: dict[tuple[int, int], torch.Tensor] | None = self.__dict__[_EDGES]
        total: Any = None
        if edges is None:  # the chosen architecture, on the candidates the edges trained
            ops = self.slot_ops(node)
            for k, inp in enumerate(self.slot_inputs(node)):
                j = _chosen_index(inp)
                name = _edge_op(ops[k], j).active
                out = _edge_op(ops[0], j)[name](states[j])
                total = out if total is None else total + out
            return cast(torch.Tensor, total)
        for j, state in enumerate(states):
            mixed = _edge_op(self.slot_ops(node)[0], j)
            mixed.__dict__[_WEIGHTS] = edges[node, j]
            out = mixed(state)
            total = out if total is None else total + out
        return cast(torch.Tensor, total)

    def _slot(self, op: nn.Module, inp: nn.Module, states: list[torch.Tensor]) -> torch.Tensor:
        weights = _weights(inp)
        if weights is None:
            return super()._slot(op, inp, states)
        total: Any = None
        for j, state in enumerate(states[: len(weights)]):
            out = weights[j] * _edge_op(op, j)(state)
            total = out if total is None else total + out
        return cast(torch.Tensor, total)


def _edge_op(op: nn.Module, j: int) -> LayerChoice:
    """The op a slot applies to earlier state ``j`` (its own for that input, with op factories)."""
    return cast(LayerChoice, op[j] if isinstance(op, _PerInputOps) else op)


@dataclass
class _CellEdges:
    """Cells sharing one label, relaxed by edges: the weights of edge (node, input) are ``keys``'s."""

    cells: list[Cell]
    keys: dict[tuple[int, int], str]
    names: list[Any]  # the op candidates' architecture values

    def mix(self, weights: Mapping[str, torch.Tensor] | None) -> None:
        edges = None if weights is None else {edge: weights[key] for edge, key in self.keys.items()}
        for cell in self.cells:
            cell.__dict__[_EDGES] = edges

    def export(self, scores: Mapping[str, torch.Tensor]) -> Arch:
        """Each node's ``num_ops_per_node`` strongest edges (by their best op other than ``none``),
        strongest first, as the slots' inputs and ops (the DARTS paper's discrete cell)."""
        cell = self.cells[0]
        usable = [i for i, name in enumerate(self.names) if name != "none"] or list(range(len(self.names)))
        arch: Arch = {}
        for node in range(cell.num_nodes):
            inputs = cell.num_predecessors + node
            best = {j: F.softmax(scores[self.keys[node, j]], dim=-1)[usable] for j in range(inputs)}
            ranked = sorted(range(inputs), key=lambda j: -float(best[j].max()))
            ops = cell.slot_ops(node)
            for k, inp in enumerate(cell.slot_inputs(node)):
                j = ranked[k % inputs]
                arch[inp.label] = j
                arch[_edge_op(ops[k], j).label] = self.names[usable[int(torch.argmax(best[j]))]]
        return arch


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
    """The relaxed decisions of a supernet: the number of weights each key mixes (a label's, or an
    edge's of a Cell relaxed by edges), and how they make an architecture."""

    decisions: dict[str, Decision]  # the labels mixed as they are
    sizes: dict[str, int]
    cells: list[_CellEdges] = field(default_factory=list)

    def mix(self, weights: Mapping[str, torch.Tensor] | None) -> None:
        """Set each key's mixing weights (a 1-D tensor of ``sizes[key]``); None: run the active paths."""
        for label, decision in self.decisions.items():
            value = None if weights is None else weights[label]
            for module in decision.modules:
                module.__dict__[_WEIGHTS] = value
        for group in self.cells:
            group.mix(weights)

    def choose(self, label: str, scores: torch.Tensor) -> Any:
        """The architecture value the largest ``scores`` of ``label`` pick (the ``n_chosen`` largest
        inputs of an InputChoice choosing several, in order)."""
        decision = self.decisions[label]
        module = decision.modules[0]
        if isinstance(module, InputChoice) and module.n_chosen > 1:
            return sorted(int(i) for i in torch.topk(scores, module.n_chosen).indices)
        return decision.options[int(torch.argmax(scores))]

    def export(self, scores: Mapping[str, torch.Tensor]) -> Arch:
        arch = {label: self.choose(label, scores[label]) for label in self.decisions}
        for group in self.cells:
            arch.update(group.export(scores))
        return arch


def relax(supernet: nn.Module, strategy: str, *, cell_edges: bool = False) -> Relaxation:
    """Make every decision of ``supernet`` mixable (see the module docstring); a ConfigError naming
    the labels that cannot be (values inside layers, an InputChoice concatenating several).
    ``cell_edges``: relax each Cell as the DARTS paper does (one mixed op per edge, the strongest
    edges exported), not slot by slot."""
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
    cells = [m for m in supernet.modules() if isinstance(m, Cell) and type(m) in (Cell, _RelaxedCell)]
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
    groups: list[_CellEdges] = []
    for cell in cells:
        cell.__class__ = _RelaxedCell
    if cell_edges:
        by_label: dict[str, list[Cell]] = {}
        for cell in cells:
            by_label.setdefault(cell.label, []).append(cell)
        for label, same in by_label.items():
            groups.append(_edge_group(label, same, sizes))
        owned = {label for group in groups for cell in group.cells for label in _slot_labels(cell)}
        found = {label: d for label, d in found.items() if label not in owned}
        for label in owned:
            sizes.pop(label, None)
    return Relaxation(found, sizes, groups)


def _slot_labels(cell: Cell) -> set[str]:
    """The labels of a Cell's own op and input choices (not of choices inside its candidates)."""
    labels: set[str] = set()
    for node in range(cell.num_nodes):
        labels.update(inp.label for inp in cell.slot_inputs(node))
        labels.update(_edge_op(op, 0).label for op in cell.slot_ops(node))
    return labels


def _edge_group(label: str, cells: list[Cell], sizes: dict[str, int]) -> _CellEdges:
    """The edge keys of the cells labelled ``label`` (added to ``sizes``), and their relaxation."""
    first = cells[0]
    names = list(_edge_op(first.slot_ops(0)[0], 0).names)
    keys: dict[tuple[int, int], str] = {}
    for node in range(first.num_nodes):
        for j in range(first.num_predecessors + node):
            keys[node, j] = f"{label}/edge_{first.num_predecessors + node}_{j}"
            sizes[keys[node, j]] = len(names)
    for cell in cells:
        cell.__dict__[_EDGES] = None
    return _CellEdges(cells, keys, names)
