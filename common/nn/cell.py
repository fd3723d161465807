"""Cell: the DARTS / NASNet / ENAS cell, a small DAG whose ops and inputs are searched (NNI's ``Cell``).

A cell has ``num_predecessors`` inputs and ``num_nodes`` nodes; node ``i`` (numbered after the
predecessors) is the sum of ``num_ops_per_node`` ops, each a :class:`LayerChoice` over
``op_candidates`` applied to one earlier tensor picked by an :class:`InputChoice`. Labels follow
NNI: ``<label>/op_<i>_<k>`` and ``<label>/input_<i>_<k>``. As a supernet every candidate is
present and ``activate`` picks the path; under ``fixed_arch`` only the chosen ops are built, at the
same module paths (``ops.<node>.<k>``), so ``original_state_dict_hooks`` maps the two layouts.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, cast

import torch
from torch import nn

from .choices import CHOSEN_ATTR, ChosenInputs, InputChoice, LayerChoice
from .registry import composite_scope

__all__ = ["Cell", "CellOpFactory"]

_log = logging.getLogger(__name__)

# op factory: (node index, op index in the node, input index) -> module
CellOpFactory = Callable[[int, int, int], nn.Module]
OpCandidates = (
    Sequence[nn.Module]
    | Sequence[CellOpFactory]
    | Mapping[str, nn.Module]
    | Mapping[str, CellOpFactory]
    | Callable[[], Sequence[nn.Module] | Mapping[str, nn.Module]]
)
MERGE_OPS = ("all", "loose_end")


def _check_count(name: str, value: Any, least: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"Cell {name} must be an int >= {least}, got {value!r}")
    return value


def _candidate_table(op_candidates: Any) -> tuple[list[tuple[str, Any]], bool]:
    """The candidates as ``[(key, module or factory)]``, and whether it is a list (keys '0', '1', ...)."""
    if isinstance(op_candidates, (Mapping, nn.ModuleDict)):
        items = [(k, v) for k, v in op_candidates.items()]
        as_list = False
    elif isinstance(op_candidates, (Sequence, nn.ModuleList)) and not isinstance(op_candidates, (str, bytes)):
        items = [(str(i), v) for i, v in enumerate(op_candidates)]
        as_list = True
    else:
        raise TypeError(
            "Cell op_candidates must be a list or a dict of modules or of factories "
            f"(node_index, op_index, input_index) -> module, or a callable returning one; "
            f"got {op_candidates!r}"
        )
    if not items:
        raise ValueError("Cell op_candidates is empty: give at least one candidate op")
    for key, op in items:
        if not isinstance(op, nn.Module) and not callable(op):
            raise TypeError(f"Cell op candidate {key!r} is a {type(op).__name__}, not a module or a factory")
    return items, as_list


class Cell(nn.Module):
    """A cell of ``num_nodes`` searched nodes over ``num_predecessors`` inputs, merged by concatenation.

    ``op_candidates``: a list or dict of modules (deep-copied for each op) or of factories
    ``(node_index, op_index, input_index) -> module`` (a reduction cell's ops take stride 2 on a
    predecessor), or a callable returning such a list or dict of modules, called once per op.
    With factories the supernet holds one set of candidates per possible input of each op (DARTS's
    per-edge ops, so a factory can depend on the input index); the frozen model holds the chosen
    input's chosen op. ``preprocessor`` maps the list of predecessors to a list of as many tensors
    (e.g. 1x1 convs aligning two previous cells' channels); ``postprocessor(output, predecessors)``
    gives the cell's return value. ``merge_op='loose_end'`` concatenates only the nodes that no op
    takes as input (those of the active architecture in a supernet, the chosen one when frozen).
    """

    def __init__(
        self,
        op_candidates: OpCandidates,
        num_nodes: int,
        num_ops_per_node: int = 1,
        num_predecessors: int = 1,
        merge_op: Literal["all", "loose_end"] = "all",
        preprocessor: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
        postprocessor: Callable[[torch.Tensor, list[torch.Tensor]], Any] | None = None,
        concat_dim: int = 1,
        *,
        label: str | None = None,
    ) -> None:
        super().__init__()
        self.num_nodes = _check_count("num_nodes", num_nodes, 1)
        self.num_ops_per_node = _check_count("num_ops_per_node", num_ops_per_node, 1)
        self.num_predecessors = _check_count("num_predecessors", num_predecessors, 1)
        if merge_op not in MERGE_OPS:
            raise ValueError(f"Cell merge_op must be one of {MERGE_OPS}, got {merge_op!r}")
        self.merge_op = merge_op
        self.concat_dim = concat_dim
        for name, fn in (("preprocessor", preprocessor), ("postprocessor", postprocessor)):
            if fn is not None and not callable(fn):
                raise TypeError(f"Cell {name} must be a module or a callable, got {type(fn).__name__}")
        self.preprocessor = preprocessor  # a module is registered as the child 'preprocessor'
        self.ops = nn.ModuleList()
        self.inputs = nn.ModuleList()
        self.postprocessor = postprocessor
        with composite_scope("cell", label) as (full_label, child):
            self.label = full_label
            self._build(op_candidates, child)

    def _build(self, op_candidates: Any, child: Callable[[str], str]) -> None:
        call_per_op = not isinstance(op_candidates, (Mapping, Sequence, nn.Module)) and callable(
            op_candidates
        )
        for node in range(self.num_predecessors, self.num_predecessors + self.num_nodes):
            node_ops = nn.ModuleList()
            node_inputs = nn.ModuleList()
            for k in range(self.num_ops_per_node):
                inp = InputChoice(node, 1, label=child(f"input_{node}_{k}"))
                chosen = inp.chosen if isinstance(inp, ChosenInputs) else None
                assert chosen is None or isinstance(chosen, int)
                op_label = child(f"op_{node}_{k}")
                if call_per_op:
                    items, _ = _candidate_table(op_candidates())
                    if not all(isinstance(m, nn.Module) for _, m in items):
                        raise TypeError("a Cell's op_candidates() must return modules, not factories")
                    node_ops.append(LayerChoice(dict(items), label=op_label))
                else:
                    node_ops.append(self._make_op(op_candidates, node, k, chosen, op_label))
                node_inputs.append(inp)
            self.ops.append(node_ops)
            self.inputs.append(node_inputs)

    @staticmethod
    def _layer_choice(op_candidates: Any, node: int, k: int, input_index: int, label: str) -> nn.Module:
        items, as_list = _candidate_table(op_candidates)
        built: list[tuple[str, nn.Module]] = []
        for key, op in items:
            module = copy.deepcopy(op) if isinstance(op, nn.Module) else op(node, k, input_index)
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"Cell op factory {key!r} returned a {type(module).__name__} for "
                    f"(node {node}, op {k}, input {input_index}), not an nn.Module"
                )
            built.append((key, module))
        modules: Any = [m for _, m in built] if as_list else dict(built)
        chosen: nn.Module = LayerChoice(modules, label=label)
        return chosen

    def _make_op(self, op_candidates: Any, node: int, k: int, chosen: int | None, label: str) -> nn.Module:
        """One op slot: a LayerChoice (or, with factories in a supernet, one per possible input)."""
        items, _ = _candidate_table(op_candidates)
        has_factory = any(not isinstance(op, nn.Module) for _, op in items)
        if not has_factory:
            return self._layer_choice(op_candidates, node, k, 0, label)
        if chosen is not None:
            module = self._layer_choice(op_candidates, node, k, chosen, label)
            # In the supernet this op sits under ops.<node>.<k>.<input>: record that level too
            # (outermost last), so original_state_dict_hooks maps the keys and drops the others.
            keys = tuple(str(i) for i in range(node))
            module.__dict__.setdefault(CHOSEN_ATTR, []).append((label, str(chosen), keys))
            return module
        return _PerInputOps([self._layer_choice(op_candidates, node, k, i, label) for i in range(node)])

    def slot_ops(self, node: int) -> list[Any]:
        """The op slots of node ``node`` (from 0 after the predecessors): LayerChoices (or, with op
        factories in a supernet, one LayerChoice per possible input)."""
        return list(cast(nn.ModuleList, self.ops[node]))

    def slot_inputs(self, node: int) -> list[Any]:
        """The InputChoices (or, frozen, ChosenInputs) of node ``node``'s op slots."""
        return list(cast(nn.ModuleList, self.inputs[node]))

    def _node(self, node: int, states: list[torch.Tensor]) -> torch.Tensor:
        """Node ``node`` (counted from 0 after the predecessors): the sum of its ops' outputs."""
        total: torch.Tensor | None = None
        for op, inp in zip(self.slot_ops(node), self.slot_inputs(node)):
            out = self._slot(op, inp, states)
            total = out if total is None else total + out
        assert total is not None
        return total

    def _slot(self, op: nn.Module, inp: nn.Module, states: list[torch.Tensor]) -> torch.Tensor:
        """One op of a node on the input its InputChoice picks (the one-shot relaxation mixes them)."""
        if isinstance(op, _PerInputOps):
            op = op[_chosen_index(inp)]
        out: torch.Tensor = op(inp(states))
        return out

    @property
    def output_node_indices(self) -> list[int]:
        """The nodes concatenated into the output: all of them, or with ``loose_end`` those that no op
        of the current architecture (the active one in a supernet) takes as input."""
        nodes = list(range(self.num_predecessors, self.num_predecessors + self.num_nodes))
        if self.merge_op == "all":
            return nodes
        all_inputs: Any = self.inputs
        used = {_chosen_index(inp) for node_inputs in all_inputs for inp in node_inputs}
        return [n for n in nodes if n not in used]

    def forward(self, *inputs: torch.Tensor | list[torch.Tensor]) -> Any:
        """The merged output of the cell for its predecessors (a list, or the tensors as arguments)."""
        given: list[Any] = (
            list(inputs[0]) if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)) else list(inputs)
        )
        if len(given) != self.num_predecessors:
            raise ValueError(
                f"Cell {self.label!r} takes {self.num_predecessors} predecessor tensor(s), got {len(given)}"
            )
        states = list(self.preprocessor(list(given))) if self.preprocessor is not None else list(given)
        if len(states) != self.num_predecessors:
            raise ValueError(
                f"Cell {self.label!r}: the preprocessor returned {len(states)} tensors for "
                f"{self.num_predecessors} predecessors; it must return one per predecessor"
            )
        for node in range(self.num_nodes):
            states.append(self._node(node, states))
        merged = torch.cat([states[i] for i in self.output_node_indices], self.concat_dim)
        if self.postprocessor is not None:
            return self.postprocessor(merged, given)
        return merged

    def extra_repr(self) -> str:
        return (
            f"label={self.label!r}, num_nodes={self.num_nodes}, num_ops_per_node={self.num_ops_per_node}, "
            f"num_predecessors={self.num_predecessors}, merge_op={self.merge_op!r}"
        )


class _PerInputOps(nn.ModuleList):
    """A supernet op slot built by factories: one LayerChoice (sharing its label) per possible input."""


def _chosen_index(inp: nn.Module) -> int:
    """The input index an InputChoice picks now (its active one) or a frozen one picked."""
    value = inp.active if isinstance(inp, InputChoice) else getattr(inp, "chosen", None)
    if isinstance(value, list):
        (value,) = value
    assert isinstance(value, int)
    return value
