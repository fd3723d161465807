"""The continuous relaxation DARTS trains: mixed LayerChoice, InputChoice, Repeat and Cell."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import torch.nn.functional as F
from oneshot_spaces import UselessOpSpace, Zero, digits

import retia.lightning as pl
import retia.nn as nn
from retia.arch import option_index
from retia.errors import ConfigError
from retia.oneshot import DARTS, OneShotEvaluator, arch_from_metric, supernet_of
from retia.oneshot.supernet import relax

pytestmark = pytest.mark.timeout(120)


def _edge(node: int, op: int, inp: int) -> nn.Module:
    return nn.Sequential(nn.Linear(16, 16), nn.ReLU())


class CellSpace(nn.ModelSpace):
    """A DARTS-style cell on flat digits: per-edge ops (factories), one of them DARTS's ``none``."""

    def __init__(self, merge_op: Any = "all") -> None:
        super().__init__()
        self.stem = nn.Linear(64, 16)
        self.cell = nn.Cell(
            {"lin": _edge, "none": lambda node, op, inp: Zero()},
            num_nodes=2,
            num_ops_per_node=2,
            merge_op=merge_op,
            label="cell",
        )
        self.depth = nn.Repeat(lambda i: nn.Sequential(nn.Linear(32, 32), nn.Tanh()), (1, 2), label="depth")
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.depth(self.cell([F.relu(self.stem(x))])))
        return out


def one_hot(space: Any, arch: dict[str, Any], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Mixing weights that pick exactly ``arch``."""
    out = {}
    for label, size in sizes.items():
        weights = torch.zeros(size)
        weights[cast(int, option_index(space.search_space()[label], arch[label]))] = 1.0
        out[label] = weights
    return out


@pytest.mark.parametrize("space_cls", [CellSpace, UselessOpSpace])
def test_one_hot_mixing_weights_run_exactly_their_architecture_whatever_is_active(space_cls: Any) -> None:
    torch.manual_seed(0)
    space = space_cls()
    x = torch.randn(5, 64)
    rng = random.Random(0)
    relaxation = relax(space, "DARTS")
    for _ in range(6):
        arch, other = (
            {label: rng.choice(opts) for label, opts in space.search_space().items()} for _ in "ab"
        )
        space.activate(arch)
        expected = space(x)
        space.activate(other)  # the relaxed forward does not read the active path
        relaxation.mix(one_hot(space, arch, relaxation.sizes))
        assert torch.allclose(space(x), expected, atol=1e-6)
        relaxation.mix(None)  # no weights: the active path again
        assert torch.allclose(space(x), space.freeze(other, inherit_weights=True)(x), atol=1e-6)


def test_darts_relaxes_a_cell_by_edges_and_exports_its_strongest_trainable_ones(tmp_path: Path) -> None:
    relaxation = relax(CellSpace(), "DARTS", cell_edges=True)
    assert sorted(relaxation.sizes) == ["cell/edge_1_0", "cell/edge_2_0", "cell/edge_2_1", "depth"]
    torch.manual_seed(0)
    evaluator = pl.Classification(
        learning_rate=0.01,
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
        max_epochs=4,
    )
    result = OneShotEvaluator(evaluator, DARTS(arc_learning_rate=3e-3, seed=0)).evaluate(
        supernet_of(CellSpace()), output_dir=tmp_path
    )
    arch = arch_from_metric(result.final, CellSpace().search_space())
    assert arch is not None
    assert {arch[f"cell/op_{node}_{k}"] for node in (1, 2) for k in (0, 1)} == {"lin"}, arch  # never none
    assert {arch["cell/input_2_0"], arch["cell/input_2_1"]} == {0, 1}  # node 2's two edges, once each
    assert cast(dict[str, float], result.final)["val_acc"] > 0.5


def test_one_hot_edge_weights_run_exactly_the_architecture_on_the_edges_ops() -> None:
    """By edges, a chosen architecture runs each slot's op on slot 0's candidates (those the edges
    train): one-hot edge weights give exactly that, whatever path is active."""
    torch.manual_seed(0)
    space = CellSpace()
    relaxation = relax(space, "DARTS", cell_edges=True)
    names = ["lin", "none"]
    x = torch.randn(5, 64)
    rng = random.Random(0)
    for _ in range(6):
        arch, other = (
            {label: rng.choice(opts) for label, opts in space.search_space().items()} for _ in "ab"
        )
        space.activate(arch)
        relaxation.mix(None)
        expected = space(x)
        weights = {key: torch.zeros(size) for key, size in relaxation.sizes.items()}
        weights["depth"][space.search_space()["depth"].index(arch["depth"])] = 1.0
        for node in (1, 2):
            for k in (0, 1):
                j = arch[f"cell/input_{node}_{k}"]
                weights[f"cell/edge_{node}_{j}"][names.index(arch[f"cell/op_{node}_{k}"])] += 1.0
        space.activate(other)
        relaxation.mix(weights)
        assert torch.allclose(space(x), expected, atol=1e-6)


def test_a_loose_end_cell_is_refused_by_darts() -> None:
    with pytest.raises(ConfigError, match="loose_end.*merge_op='all'"):
        relax(CellSpace(merge_op="loose_end"), "DARTS")
