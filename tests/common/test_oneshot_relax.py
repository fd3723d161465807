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
    """A DARTS-style cell on flat digits: per-edge ops (factories), one of them useless."""

    def __init__(self, merge_op: Any = "all") -> None:
        super().__init__()
        self.stem = nn.Linear(64, 16)
        self.cell = nn.Cell(
            {"lin": _edge, "zero": lambda node, op, inp: Zero()},
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


def test_darts_on_a_cell_keeps_every_useful_edge(tmp_path: Path) -> None:
    torch.manual_seed(0)
    evaluator = pl.Classification(
        learning_rate=0.01,
        train_dataloaders=digits("train"),
        val_dataloaders=digits("val", 256),
        max_epochs=6,
    )
    result = OneShotEvaluator(evaluator, DARTS(arc_learning_rate=3e-3, seed=0)).evaluate(
        supernet_of(CellSpace()), output_dir=tmp_path
    )
    arch = arch_from_metric(result.final, CellSpace().search_space())
    assert arch is not None
    assert {arch[f"cell/op_{node}_{k}"] for node in (1, 2) for k in (0, 1)} == {"lin"}, arch
    assert cast(dict[str, float], result.final)["val_acc"] > 0.5


def test_a_loose_end_cell_is_refused_by_darts() -> None:
    with pytest.raises(ConfigError, match="loose_end.*merge_op='all'"):
        relax(CellSpace(merge_op="loose_end"), "DARTS")
