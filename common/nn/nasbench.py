"""The cells of NAS-Bench-201 and NAS-Bench-101 (NNI's ``NasBench201Cell``, ``NasBench101Cell``).

* :class:`NasBench201Cell`: a dense DAG of ``num_tensors`` tensors, every edge ``j -> t`` a
  LayerChoice labelled ``<label>/<j>_<t>`` (values: the candidates' keys, ``'0'``... for a list).
* :class:`NasBench101Cell`: a DAG of at most ``max_num_nodes`` vertices (IN and OUT included) and
  ``max_num_edges`` edges: ``<label>/num_nodes`` (a ValueChoice), ``<label>/op<i>`` per interior
  vertex and ``<label>/input<i>`` (any subset of the earlier vertices) per vertex. A graph with
  too many edges, or whose input does not reach its output, is refused when validated or frozen.
  NNI 3.0 exports also ``<label>/final``, its record of the pruned graph (:func:`nasbench101_final`):
  it loads when it agrees with the choices, and is refused when it does not.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..arch import (
    MISSING,
    ChoiceSpec,
    canonical,
    coerce_choice,
    current_fixed_arch,
    fixed_choice,
    fixed_derived,
)
from ..errors import InvalidArchitectureError
from .choices import LayerChoice, ValueChoice, _check_active
from .registry import composite_scope, register_choice
from .space import ArchHooks

__all__ = ["NasBench101Cell", "NasBench201Cell", "NasBench101Graph"]

_log = logging.getLogger(__name__)


def _as_table(op_candidates: Any, what: str) -> dict[str, Callable[..., nn.Module]]:
    """``op_candidates`` (a list or a dict of factories) as a dict by key (``'0'``, ``'1'``... for a list)."""
    if isinstance(op_candidates, Mapping):
        table = {str(k): v for k, v in op_candidates.items()}
    elif isinstance(op_candidates, Sequence) and not isinstance(op_candidates, (str, bytes)):
        table = {str(i): v for i, v in enumerate(op_candidates)}
    else:
        raise TypeError(f"{what} op_candidates must be a list or a dict of factories, got {op_candidates!r}")
    if not table:
        raise ValueError(f"{what} op_candidates is empty")
    bad = [k for k, v in table.items() if not callable(v) or isinstance(v, nn.Module)]
    if bad:
        raise TypeError(
            f"{what} op_candidates must be factories (callables returning a module); {bad!r} are not"
        )
    return table


def _built(factory: Callable[..., Any], *args: int) -> nn.Module:
    module = factory(*args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"op factory {factory!r}{args} returned a {type(module).__name__}, not an nn.Module")
    return module


# ---------------------------------------------------------------------------- NAS-Bench-201


class NasBench201Cell(nn.Module):
    """NAS-Bench-201's cell: tensor ``t`` is the sum over ``j < t`` of edge ops applied to tensor ``j``.

    Each candidate is a factory ``(in_features, out_features) -> module`` (the edges from the input
    take ``in_features``, the others ``out_features``); the output is the last tensor.
    """

    def __init__(
        self,
        op_candidates: Sequence[Callable[[int, int], nn.Module]]
        | Mapping[str, Callable[[int, int], nn.Module]],
        in_features: int,
        out_features: int,
        num_tensors: int = 4,
        label: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_tensors, int) or isinstance(num_tensors, bool) or num_tensors < 2:
            raise ValueError(f"NasBench201Cell num_tensors must be an int >= 2, got {num_tensors!r}")
        table = _as_table(op_candidates, "NasBench201Cell")
        self.in_features = in_features
        self.out_features = out_features
        self.num_tensors = num_tensors
        self.layers = nn.ModuleList()
        with composite_scope("nasbench201cell", label) as (full_label, child):
            self.label = full_label
            for t in range(1, num_tensors):
                edges = nn.ModuleList()
                for j in range(t):
                    width = in_features if j == 0 else out_features
                    ops = {key: _built(make, width, out_features) for key, make in table.items()}
                    edges.append(LayerChoice(ops, label=child(f"{j}_{t}")))
                self.layers.append(edges)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tensors = [x]
        layers: Any = self.layers
        for edges in layers:
            total: torch.Tensor | None = None
            for j, edge in enumerate(edges):
                out = edge(tensors[j])
                total = out if total is None else total + out
            assert total is not None
            tensors.append(total)
        return tensors[-1]

    def extra_repr(self) -> str:
        return f"label={self.label!r}, in_features={self.in_features}, out_features={self.out_features}"


# ---------------------------------------------------------------------------- NAS-Bench-101


@dataclass(frozen=True)
class NasBench101Graph:
    """A NAS-Bench-101 cell after pruning: vertices kept (their indices in the unpruned graph, IN
    first, OUT last), each kept vertex's kept inputs (pruned indices), and the interior ops' keys."""

    vertices: tuple[int, ...]
    inputs: tuple[tuple[int, ...], ...]  # inputs[t] for pruned vertex t (inputs[0] == ())
    ops: tuple[str, ...]  # ops[t - 1] for interior pruned vertex t

    def channels(self, in_features: int, out_features: int) -> list[int]:
        """Each vertex's width, as NAS-Bench-101 computes it: OUT's width is split among the vertices
        feeding it (the first ones taking the remainder), other vertices take their widest successor."""
        n = len(self.vertices)
        widths = [0] * n
        widths[0], widths[-1] = in_features, out_features
        if n == 2:
            return widths
        feeding = [v for v in self.inputs[-1] if v != 0]
        share, extra = divmod(out_features, len(feeding))
        if share == 0:
            raise InvalidArchitectureError(
                f"NAS-Bench-101 cell: out_features={out_features} cannot be split among the "
                f"{len(feeding)} vertices feeding the output; use a wider cell"
            )
        for rank, v in enumerate(sorted(feeding)):
            widths[v] = share + (1 if rank < extra else 0)
        for v in range(n - 2, 0, -1):
            if v not in feeding:
                widths[v] = max(widths[d] for d in range(v + 1, n - 1) if v in self.inputs[d])
        return widths


def nasbench101_graph(
    num_nodes: int, inputs: Sequence[Sequence[int]], ops: Sequence[str], max_num_edges: int, label: str
) -> NasBench101Graph:
    """The pruned graph of an architecture (``inputs[i - 1]`` for vertex ``i``); InvalidArchitectureError
    if it has more than ``max_num_edges`` edges or its input does not reach its output."""
    edges = sum(len(e) for e in inputs)
    if edges > max_num_edges:
        raise InvalidArchitectureError(
            f"invalid architecture: NAS-Bench-101 cell {label!r} allows at most {max_num_edges} edges, "
            f"this one has {edges} (inputs per vertex 1..{num_nodes - 1}: {[list(e) for e in inputs]}); "
            "choose fewer inputs"
        )
    preds = [()] + [tuple(sorted(e)) for e in inputs]
    from_in = {0}
    for v in range(1, num_nodes):
        if any(p in from_in for p in preds[v]):
            from_in.add(v)
    to_out = {num_nodes - 1}
    for v in range(num_nodes - 1, -1, -1):
        if v in to_out:
            to_out.update(preds[v])
    kept = sorted(from_in & to_out)
    if 0 not in kept or num_nodes - 1 not in kept:
        raise InvalidArchitectureError(
            f"invalid architecture: NAS-Bench-101 cell {label!r} is disconnected: its input (vertex 0) "
            f"does not reach its output (vertex {num_nodes - 1}) through the chosen inputs "
            f"{[list(e) for e in inputs]}; connect them"
        )
    index = {v: i for i, v in enumerate(kept)}
    return NasBench101Graph(
        vertices=tuple(kept),
        inputs=tuple(tuple(index[p] for p in preds[v] if p in index) for v in kept),
        ops=tuple(ops[v - 1] for v in kept[1:-1]),
    )


def nasbench101_final(graph: NasBench101Graph) -> dict[str, Any]:
    """NNI 3.0's record ``<label>/final`` of a pruned graph: ``op<t>`` (its op's key) and ``input<t>``
    (its inputs) for each kept vertex ``t``, numbered after pruning."""
    final: dict[str, Any] = {}
    last = len(graph.vertices) - 1
    for t in range(1, last + 1):
        if t < last:
            final[f"op{t}"] = graph.ops[t - 1]
        final[f"input{t}"] = list(graph.inputs[t])
    return final


def _check_final(label: str, graph: NasBench101Graph, value: Any) -> None:
    """InvalidArchitectureError unless ``value`` (``<cell>/final``, or MISSING) is ``graph``'s record."""
    if value is MISSING:
        return
    expected = nasbench101_final(graph)
    given = {k: canonical(v) for k, v in value.items()} if isinstance(value, Mapping) else value
    if given != expected:
        raise InvalidArchitectureError(
            f"invalid architecture: {label!r} is NNI 3.0's record of the pruned graph, {value!r}, but the "
            f"architecture's choices give {expected!r}; leave {label!r} out or make it agree"
        )


def _subsets(n: int) -> list[list[int]]:
    """Every subset of ``range(n)`` as a sorted list, by size, then lexicographically."""
    return [list(c) for size in range(n + 1) for c in itertools.combinations(range(n), size)]


def _truncate(x: torch.Tensor, width: int) -> torch.Tensor:
    return x if x.shape[1] == width else x[:, :width]


class NasBench101Cell(ArchHooks, nn.Module):
    """NAS-Bench-101's cell: a DAG of up to ``max_num_nodes`` vertices (IN and OUT included).

    Interior vertex ``t`` applies its op (a factory ``num_features -> module``) to the sum of its
    inputs (IN's through ``projection(in_features, width)``); OUT concatenates the interior vertices
    feeding it and adds IN's projection if connected. Frozen, the graph is pruned and each vertex
    gets NAS-Bench-101's width, with projections only where IN feeds a vertex. The supernet holds
    every op at ``out_features`` and runs the active graph at that width (OUT sums instead of
    concatenating): its weights are not those of any frozen model, whose widths depend on the graph.
    """

    num_nodes_label: str

    def __init__(
        self,
        op_candidates: Sequence[Callable[[int], nn.Module]] | Mapping[str, Callable[[int], nn.Module]],
        in_features: int,
        out_features: int,
        projection: Callable[[int, int], nn.Module],
        max_num_nodes: int = 7,
        max_num_edges: int = 9,
        label: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(max_num_nodes, int) or isinstance(max_num_nodes, bool) or max_num_nodes < 2:
            raise ValueError(f"NasBench101Cell max_num_nodes must be an int >= 2, got {max_num_nodes!r}")
        if not isinstance(max_num_edges, int) or isinstance(max_num_edges, bool) or max_num_edges < 1:
            raise ValueError(f"NasBench101Cell max_num_edges must be an int >= 1, got {max_num_edges!r}")
        if not callable(projection):
            raise TypeError(
                f"NasBench101Cell projection must be a factory (in, out) -> module, got {projection!r}"
            )
        table = _as_table(op_candidates, "NasBench101Cell")
        self.in_features = in_features
        self.out_features = out_features
        self.max_num_nodes = max_num_nodes
        self.max_num_edges = max_num_edges
        fixed = current_fixed_arch()
        with composite_scope("nasbench101cell", label) as (full_label, child):
            self.label = full_label
            self.final_label = f"{full_label}/final"
            self.derived_labels = frozenset([self.final_label])
            prior = [2.0**i for i in range(2, max_num_nodes + 1)]
            num_nodes: Any = ValueChoice(
                list(range(2, max_num_nodes + 1)),
                label=child("num_nodes"),
                prior=[p / sum(prior) for p in prior],
            )
            if fixed is not None:
                self._build_frozen(int(num_nodes), table, projection, child, fixed)
                return
            self.num_nodes_label = num_nodes.label
            self.projections = nn.ModuleDict(
                {str(i): projection(in_features, out_features) for i in range(1, max_num_nodes)}
            )
            self.ops = nn.ModuleDict()
            self.input_specs: list[ChoiceSpec] = []
            for i in range(1, max_num_nodes):
                if i < max_num_nodes - 1:
                    ops = {key: _built(make, out_features) for key, make in table.items()}
                    self.ops[str(i)] = LayerChoice(ops, label=child(f"op{i}"))
                self.input_specs.append(
                    register_choice("inputchoice", child(f"input{i}"), _subsets(i), [i - 1])
                )
        self.op_labels = [self.ops[str(i)].label for i in range(1, max_num_nodes - 1)]
        self.activated_labels = frozenset([self.num_nodes_label, *(s.label for s in self.input_specs)])
        self.active_num_nodes = max_num_nodes
        self.active_inputs: list[list[int]] = [list(s.default) for s in self.input_specs]

    def _build_frozen(
        self,
        num_nodes: int,
        table: dict[str, Callable[..., nn.Module]],
        projection: Callable[[int, int], nn.Module],
        child: Callable[[str], str],
        fixed: Mapping[str, Any],
    ) -> None:
        """Build the chosen graph only. The labels of vertices beyond ``num_nodes`` are not demanded,
        but are taken when given (a strategy's full sample)."""
        ops: list[str] = []
        inputs: list[list[int]] = []
        for i in range(1, self.max_num_nodes):
            needed = i < num_nodes
            if i < self.max_num_nodes - 1:
                op_spec = register_choice("layerchoice", child(f"op{i}"), list(table), next(iter(table)))
                if needed or op_spec.label in fixed:
                    value = fixed_choice(op_spec)
                    if i < num_nodes - 1:
                        ops.append(str(value))
            in_spec = register_choice("inputchoice", child(f"input{i}"), _subsets(i), [i - 1])
            if needed or in_spec.label in fixed:
                value = fixed_choice(in_spec)
                if needed:
                    inputs.append(list(value))
        graph = nasbench101_graph(num_nodes, inputs, ops, self.max_num_edges, self.label)
        _check_final(self.final_label, graph, fixed_derived(self.final_label))
        self.graph = graph
        self.widths = graph.channels(self.in_features, self.out_features)
        self.projections = nn.ModuleDict(
            {
                str(t): projection(self.in_features, self.widths[t])
                for t in range(1, len(graph.vertices))
                if 0 in graph.inputs[t]
            }
        )
        self.ops = nn.ModuleDict(
            {
                str(t): _built(table[graph.ops[t - 1]], self.widths[t])
                for t in range(1, len(graph.vertices) - 1)
            }
        )

    # -- supernet: the architecture as a whole (ModelSpace.validate / activate call these)

    def _read(self, arch: Mapping[str, Any]) -> tuple[int, list[list[int]], list[str]]:
        num_nodes = int(arch.get(self.num_nodes_label, self.active_num_nodes))
        inputs = [list(arch.get(s.label, self.active_inputs[i])) for i, s in enumerate(self.input_specs)]
        choices: Any = self.ops
        labels: list[str] = list(self.__dict__["op_labels"])
        ops = [str(arch.get(label, choices[str(i + 1)].active)) for i, label in enumerate(labels)]
        return num_nodes, inputs[: num_nodes - 1], ops[: max(num_nodes - 2, 0)]

    def check_arch(self, arch: Mapping[str, Any]) -> None:
        """InvalidArchitectureError if ``arch``'s graph has too many edges or is disconnected, or if
        its ``<label>/final`` (NNI 3.0's record of the pruned graph) is not that graph's."""
        num_nodes, inputs, ops = self._read(arch)
        graph = nasbench101_graph(num_nodes, inputs, ops, self.max_num_edges, self.label)
        _check_final(self.final_label, graph, arch.get(self.final_label, MISSING))

    def activate_arch(self, arch: Mapping[str, Any]) -> None:
        """Make forward run ``arch``'s graph (its ops are activated as LayerChoices)."""
        num_nodes, _, _ = self._read(arch)
        spec = ChoiceSpec(self.num_nodes_label, "valuechoice", tuple(range(2, self.max_num_nodes + 1)), None)
        _check_active(spec, num_nodes)
        inputs = []
        for i, s in enumerate(self.input_specs):
            value = coerce_choice(s, arch[s.label]) if s.label in arch else self.active_inputs[i]
            if value is MISSING:
                _check_active(s, arch[s.label])
            inputs.append(canonical(value))
        self.check_arch(arch)
        self.active_num_nodes, self.active_inputs = num_nodes, inputs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "graph"):
            return self._forward_frozen(x)
        n = self.active_num_nodes
        ops = [str(self.ops[str(i)].active) for i in range(1, n - 1)]
        graph = nasbench101_graph(n, self.active_inputs[: n - 1], ops, self.max_num_edges, self.label)
        tensors: list[torch.Tensor] = [x]
        last = len(graph.vertices) - 1
        for t in range(1, last + 1):
            original = graph.vertices[t]
            parts = [tensors[s] for s in graph.inputs[t] if s != 0]
            if 0 in graph.inputs[t]:
                parts.append(self.projections[str(original)](x))
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            tensors.append(total if t == last else self.ops[str(original)](total))
        return tensors[-1]

    def _forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        graph, widths = self.graph, self.widths
        last = len(graph.vertices) - 1
        tensors: list[torch.Tensor] = [x]
        for t in range(1, last):
            parts = [_truncate(tensors[s], widths[t]) for s in graph.inputs[t] if s != 0]
            if 0 in graph.inputs[t]:
                parts.append(self.projections[str(t)](x))
            total = parts[0]
            for part in parts[1:]:
                total = total + part
            tensors.append(self.ops[str(t)](total))
        hidden = [tensors[s] for s in graph.inputs[last] if s != 0]
        projected = self.projections[str(last)](x) if 0 in graph.inputs[last] else None
        if not hidden:
            assert isinstance(projected, torch.Tensor)
            return projected
        out = hidden[0] if len(hidden) == 1 else torch.cat(hidden, 1)
        return out if projected is None else out + projected

    def extra_repr(self) -> str:
        return (
            f"label={self.label!r}, in_features={self.in_features}, out_features={self.out_features}, "
            f"max_num_nodes={self.max_num_nodes}, max_num_edges={self.max_num_edges}"
        )
