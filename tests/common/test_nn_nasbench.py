"""NasBench201Cell and NasBench101Cell: labels, supernet, frozen, state dicts, invalid graphs, training."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from fixtures_data import assert_trains_on_digits

import retia.nn as nn
from retia import InvalidArchitectureError
from retia.nn import NasBench101Cell, NasBench201Cell, original_state_dict_hooks
from retia.nn.space import ArchHooks
from retia.searchspace import SpaceDescription
from retia.strategy import GridSearch, Random, RegularizedEvolution
from retia.strategy.base import Strategy


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


NB201_OPS: Any = [
    lambda i, o: nn.Identity() if i == o else nn.Linear(i, o),  # '0': skip
    lambda i, o: nn.Linear(i, o),  # '1'
    lambda i, o: nn.Sequential(nn.ReLU(), nn.Linear(i, o, bias=False)),  # '2'
]


class NB201Space(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.cell = NasBench201Cell(NB201_OPS, 64, 16, num_tensors=4, label="nb")
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.cell(x))
        return out


def test_nb201_labels_supernet_frozen_and_state_dicts() -> None:
    torch.manual_seed(0)
    space = NB201Space()
    assert list(space.search_space()) == ["nb/0_1", "nb/0_2", "nb/1_2", "nb/0_3", "nb/1_3", "nb/2_3"]
    assert space.search_space()["nb/1_2"] == ["0", "1", "2"] and space.size() == 3**6
    x = torch.randn(5, 64)
    outs = []
    for seed in range(3):
        arch = space.random_sample(seed=seed)
        frozen: Any = space.freeze(arch)
        own = 0
        for label, value in arch.items():
            j, t = (int(v) for v in label.split("/")[1].split("_"))
            w = 64 if j == 0 else 16
            own += {"0": 0 if w == 16 else w * 16 + 16, "1": w * 16 + 16, "2": w * 16}[value]
        assert _params(frozen) == own + _params(space.head)
        space.activate(arch)
        expected = space(x)
        outs.append(expected)
        with original_state_dict_hooks(frozen):
            frozen.load_state_dict(space.state_dict())
            saved = frozen.state_dict()
        assert torch.allclose(frozen(x), expected, atol=1e-6)
        fresh = NB201Space()
        fresh.load_state_dict(saved, strict=False)
        fresh.activate(arch)
        assert torch.allclose(fresh(x), expected, atol=1e-6)
    assert not torch.allclose(outs[0], outs[1])


def _conv_bn(c: int) -> torch.nn.Module:
    return nn.Sequential(nn.Linear(c, c), nn.ReLU())


NB101_OPS: Any = {"lin": _conv_bn, "tanh": lambda c: nn.Tanh()}


class NB101Space(nn.ModelSpace):
    def __init__(self, max_num_edges: int = 9) -> None:
        super().__init__()
        self.cell = NasBench101Cell(
            NB101_OPS,
            64,
            12,
            lambda i, o: nn.Linear(i, o),
            max_num_nodes=5,
            max_num_edges=max_num_edges,
            label="c",
        )
        self.head = nn.Linear(12, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.cell(x))
        return out


# IN -> 1 -> 3 -> OUT, IN -> 2 -> OUT, 1 -> 2; vertex 3 also from 2: 6 edges
ARCH = {
    "c/num_nodes": 5,
    "c/op1": "lin",
    "c/input1": [0],
    "c/op2": "lin",
    "c/input2": [0, 1],
    "c/op3": "tanh",
    "c/input3": [1, 2],
    "c/input4": [2, 3],
}


def test_nb101_labels_and_space() -> None:
    space = NB101Space()
    assert list(space.search_space()) == [
        "c/num_nodes",
        "c/op1",
        "c/input1",
        "c/op2",
        "c/input2",
        "c/op3",
        "c/input3",
        "c/input4",
    ]
    assert space.search_space()["c/num_nodes"] == [2, 3, 4, 5]
    assert space.search_space()["c/input2"] == [[], [0], [1], [0, 1]]
    assert len(space.search_space()["c/input4"]) == 16


def test_nb101_frozen_builds_the_pruned_graph_with_nasbench_widths() -> None:
    space = NB101Space()
    frozen: Any = space.freeze(ARCH)
    cell = frozen.cell
    assert cell.graph.vertices == (0, 1, 2, 3, 4)
    assert cell.widths == [64, 6, 6, 6, 12]  # OUT's 12 split between 2 and 3; 1 takes its widest successor
    # projections only where IN feeds a vertex (1 and 2); ops at their widths; tanh has none
    own = 2 * (64 * 6 + 6) + 2 * (6 * 6 + 6)
    assert _params(cell) == own
    assert frozen(torch.randn(3, 64)).shape == (3, 10)
    # a smaller graph: the labels of vertices beyond num_nodes are not demanded
    small: Any = space.freeze(
        {
            "c/num_nodes": 3,
            "c/op1": "lin",
            "c/input1": [0],
            "c/input2": [1],
            **{k: v for k, v in ARCH.items() if k in ("c/op2", "c/op3", "c/input3", "c/input4")},
        }
    )
    assert small.cell.graph.vertices == (0, 1, 2) and small(torch.randn(2, 64)).shape == (2, 10)


def test_nb101_refuses_too_many_edges_and_a_disconnected_graph() -> None:
    space = NB101Space(max_num_edges=4)
    with pytest.raises(InvalidArchitectureError, match="at most 4 edges, this one has 7"):
        space.freeze(ARCH)
    with pytest.raises(InvalidArchitectureError, match="at most 4 edges"):
        space.validate(ARCH)
    cut = {**ARCH, "c/input3": [], "c/input4": [3]}  # OUT only from 3, which has no input
    with pytest.raises(InvalidArchitectureError, match="disconnected"):
        NB101Space().validate(cut)
    with pytest.raises(InvalidArchitectureError, match="disconnected"):
        NB101Space().activate(cut)
    with pytest.raises(InvalidArchitectureError, match="disconnected"):
        with nn.fixed_arch(cut):
            NB101Space()


def test_nb101_supernet_runs_the_active_graph() -> None:
    torch.manual_seed(0)
    space = NB101Space()
    x = torch.randn(4, 64)
    space.activate(ARCH)
    a = space(x)
    cell = space.cell
    p = cell.projections
    h1 = cell.ops["1"](p["1"](x))
    h2 = cell.ops["2"](p["2"](x) + h1)
    h3 = torch.tanh(h1 + h2)
    assert torch.allclose(a, space.head(h2 + h3), atol=1e-6)
    space.activate({**ARCH, "c/num_nodes": 3, "c/input2": [0, 1]})
    assert torch.allclose(space(x), space.head(p["2"](x) + h1), atol=1e-6)
    valid = 0
    for seed in range(20):  # a random sample is valid, or refused with the reason
        arch = space.random_sample(seed=seed)
        try:
            space.activate(arch)
        except InvalidArchitectureError as exc:
            assert "disconnected" in str(exc) or "edges" in str(exc)
            continue
        valid += 1
        assert space(x).shape == (4, 10) and space.freeze(arch)(x).shape == (4, 10)
    assert valid > 0


def test_frozen_nb_cells_train_on_digits() -> None:
    torch.manual_seed(0)
    for model in (
        NB101Space().freeze(ARCH),
        NB201Space().freeze({k: "1" for k in NB201Space().search_space()}),
    ):
        assert_trains_on_digits(model)


# Vertex 2 reaches no output: pruned. NNI 3.0 exports the choices and, under "c/final", the pruned
# graph (vertices 0, 1, 3, 4 renumbered 0..3), as its NasBench101CellConstraint records it.
PRUNED = {
    "c/num_nodes": 5,
    "c/op1": "lin",
    "c/input1": [0],
    "c/op2": "tanh",
    "c/input2": [0],
    "c/op3": "tanh",
    "c/input3": [1],
    "c/input4": [1, 3],
}
FINAL: dict[str, Any] = {"op1": "lin", "input1": [0], "op2": "tanh", "input2": [1], "input3": [1, 2]}
NNI3_PRUNED: dict[str, Any] = {**PRUNED, "c/final": FINAL}


def test_nb101_loads_nni3_final_record_and_refuses_one_that_disagrees() -> None:
    space = NB101Space()
    assert "c/final" not in space.search_space()  # a record, not a choice: never searched
    assert space.validate(NNI3_PRUNED) == PRUNED
    torch.manual_seed(0)
    frozen: Any = space.freeze(NNI3_PRUNED)
    assert frozen.cell.graph.vertices == (0, 1, 3, 4) and frozen.cell.graph.ops == ("lin", "tanh")
    with nn.fixed_arch(NNI3_PRUNED):  # directly, as NNI's `with fixed_arch(exported): Net()`
        torch.manual_seed(0)
        direct: Any = NB101Space()
    assert direct.cell.graph == frozen.cell.graph
    torch.manual_seed(0)
    plain: Any = space.freeze(PRUNED)  # the same model without the record
    x = torch.randn(3, 64)
    assert torch.equal(frozen(x), plain(x)) and torch.equal(direct(x), plain(x))
    space.activate(NNI3_PRUNED)
    assert space.cell.active_inputs[:4] == [[0], [0], [1], [1, 3]] and space(x).shape == (3, 10)

    wrong = {**NNI3_PRUNED, "c/final": {**FINAL, "input3": [2]}}
    for load in (space.validate, space.freeze, space.activate):
        with pytest.raises(InvalidArchitectureError, match="'c/final' is NNI 3.0's record"):
            load(wrong)
    with pytest.raises(InvalidArchitectureError, match="'c/final' is NNI 3.0's record"):
        with nn.fixed_arch(wrong):
            NB101Space()
    with pytest.raises(InvalidArchitectureError, match="'c/final' is NNI 3.0's record"):
        space.validate({**PRUNED, "c/final": "not a graph"})


def _strategy_draws(space: nn.ModelSpace, strategy: Strategy, n: int) -> list[dict[str, Any]]:
    """``n`` asks of ``strategy`` attached as an Experiment attaches it (the description and the check)."""
    strategy.attach(SpaceDescription.from_json(space.describe(), check=space.arch_check()))
    draws = [strategy.ask(key) for key in range(n)]
    assert all(arch is not None for arch in draws)
    return [arch for arch in draws if arch is not None]


def test_nb101_random_sampling_gives_only_valid_graphs() -> None:
    """With at most 4 edges most uniform draws are refused (too many edges, or disconnected): the space's
    random_sample and the Random, GridSearch and evolution strategies (its mutations too) draw again
    until the space accepts one."""
    space = NB101Space(max_num_edges=4)
    archs = [space.random_sample(seed=seed) for seed in range(30)]
    archs += _strategy_draws(space, Random(seed=0), 30) + _strategy_draws(
        space, Random(seed=1, dedup=False), 10
    )
    archs += _strategy_draws(space, GridSearch(), 5)
    evolution = RegularizedEvolution(population_size=4, sample_size=2, seed=0)
    evolution.attach(SpaceDescription.from_json(space.describe(), check=space.arch_check()))
    for key in range(30):  # its mutations of valid parents too
        arch = evolution.ask(key)
        assert arch is not None
        evolution.tell(key, arch, float(key % 7))
        archs.append(arch)
    for arch in archs:
        space.validate(arch)  # raises for an invalid graph
    assert len({str(sorted(a.items())) for a in archs[:30]}) > 20  # still random, not one fallback
    assert NB101Space().arch_check() is not None and NB201Space().arch_check() is None


class _RefusesAll(ArchHooks, torch.nn.Module):
    def check_arch(self, arch: Any) -> None:
        raise InvalidArchitectureError(f"refused {arch['w']}")


class RefusingSpace(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, nn.ValueChoice([2, 3], label="w"))
        self.hook = _RefusesAll()


def test_sampling_a_space_that_refuses_every_arch_fails_with_the_reason() -> None:
    space = RefusingSpace()
    with pytest.raises(
        InvalidArchitectureError, match=r"no valid architecture in 1000 random draws.*refused [23]"
    ):
        space.random_sample(seed=0)
    with pytest.raises(InvalidArchitectureError, match="no valid architecture in 1000 random draws"):
        _strategy_draws(space, Random(seed=0, dedup=False), 1)
    grid = GridSearch()
    grid.attach(SpaceDescription.from_json(space.describe(), check=space.arch_check()))
    assert grid.ask(0) is None  # nothing valid to enumerate
