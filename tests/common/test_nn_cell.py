"""Cell (DARTS/NASNet) and AutoActivation: supernet, frozen, state-dict hooks, NNI's labels, training."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch
from fixtures_data import assert_trains_on_digits

import retia.nn as nn
import retia.nni.nas.nn.pytorch as nni3
import retia.nni.retiarii
import retia.nni.retiarii.nn.pytorch as nni2
from retia.nn import AutoActivation, Cell, original_state_dict_hooks


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _ops(c: int) -> dict[str, torch.nn.Module]:
    return {"conv": nn.Conv2d(c, c, 3, padding=1), "pool": nn.MaxPool2d(3, 1, 1), "skip": nn.Identity()}


class CellSpace(nn.ModelSpace):
    """Two predecessors of different widths aligned by a preprocessor (DARTS's layout), one cell, a head."""

    def __init__(self, merge_op: str = "all", factory: bool = False) -> None:
        super().__init__()
        self.stem0 = nn.Conv2d(1, 3, 1)
        self.stem1 = nn.Conv2d(1, 5, 1)
        pre = Align([3, 5], 4)
        ops: Any = _ops(4)
        if factory:  # a reduction-like cell: the op's shape depends on the input it takes
            ops = {
                "conv": lambda node, k, inp: nn.Conv2d(4, 4, 3, padding=1, bias=inp < 2),
                "pool": lambda node, k, inp: nn.AvgPool2d(3, 1, 1),
            }
        self.cell = Cell(ops, 3, 2, 2, merge_op=merge_op, preprocessor=pre, label="cell")  # type: ignore[arg-type]
        self.head = nn.LazyLinear(10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, 8, 8)
        out: torch.Tensor = self.head(self.cell([self.stem0(x), self.stem1(x)]).flatten(1))
        return out


class Align(nn.Module):
    """DARTS's preprocessing: a 1x1 conv per predecessor to the cell's width."""

    def __init__(self, widths: list[int], c: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(w, c, 1) for w in widths)

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, xs)]


def _cell_arch(space: nn.ModelSpace, seed: int) -> dict[str, Any]:
    return space.random_sample(seed=seed)


def test_cell_labels_are_nni_and_the_space_samples_and_grids() -> None:
    space = CellSpace()
    labels = list(space.search_space())
    assert labels[:4] == ["cell/input_2_0", "cell/op_2_0", "cell/input_2_1", "cell/op_2_1"]
    assert labels[-1] == "cell/op_4_1" and len(labels) == 12
    assert space.search_space()["cell/input_4_0"] == [0, 1, 2, 3]
    assert space.search_space()["cell/op_3_0"] == ["conv", "pool", "skip"]
    assert space.size() == (2 * 3) ** 2 * (3 * 3) ** 2 * (4 * 3) ** 2
    first = next(iter(space.grid()))
    assert all(v in (0, "conv") for v in first.values())
    assert space.random_sample(seed=1) == space.random_sample(seed=1)


def test_cell_auto_labels_follow_nni_styles() -> None:
    @retia.nni.retiarii.model_wrapper
    class V2(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nni2.Cell([nn.Identity(), nn.ReLU()], 1)

    class V3(nni3.ModelSpace, label_prefix="model"):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nni3.Cell([nn.Identity(), nn.ReLU()], 1, label="c")
            self.auto = nni3.Cell([nn.Identity(), nn.ReLU()], 1)

    assert list(cast(Any, V2()).search_space()) == ["model_1/input_1_0", "model_1/op_1_0"]
    assert list(V3().search_space()) == [
        "model/c/input_1_0",
        "model/c/op_1_0",
        "model/1/input_1_0",
        "model/1/op_1_0",
    ]


@pytest.mark.parametrize("merge_op", ["all", "loose_end"])
@pytest.mark.parametrize("factory", [False, True])
def test_cell_supernet_frozen_and_state_dicts_agree(merge_op: str, factory: bool) -> None:
    torch.manual_seed(0)
    space = CellSpace(merge_op, factory)
    x = torch.randn(3, 64)
    space(x)  # materialise the lazy head at the default arch's width
    for seed in range(4):
        arch = _cell_arch(space, seed)
        frozen: Any = space.freeze(arch)
        assert isinstance(
            frozen.cell.ops[0][0],
            (torch.nn.Conv2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d, torch.nn.Identity),
        )
        chosen = [arch[f"cell/op_{n}_{k}"] for n in (2, 3, 4) for k in (0, 1)]
        inputs = [arch[f"cell/input_{n}_{k}"] for n in (2, 3, 4) for k in (0, 1)]
        if merge_op == "loose_end":
            assert frozen.cell.output_node_indices == [n for n in (2, 3, 4) if n not in inputs]
        conv_params = sum(
            (4 * 4 * 9 + (4 if (not factory or inp < 2) else 0))
            for op, inp in zip(chosen, inputs)
            if op == "conv"
        )
        frozen(x)  # the frozen head's width follows the chosen loose ends
        head = _params(frozen.head)
        assert (
            _params(frozen)
            == conv_params + _params(frozen.stem0) + _params(frozen.stem1) + 3 * 5 + 5 * 5 + head
        )
        if _params(frozen.head) != _params(space.head):
            continue  # loose_end: this arch's output width differs from the supernet head's
        space.activate(arch)
        expected = space(x)
        with original_state_dict_hooks(frozen):
            frozen.load_state_dict(space.state_dict())
        assert torch.allclose(frozen(x), expected, atol=1e-6)
        with original_state_dict_hooks(frozen):
            saved = frozen.state_dict()
        fresh = CellSpace(merge_op, factory)
        fresh(x)
        fresh.load_state_dict(saved, strict=False)
        fresh.activate(arch)
        assert torch.allclose(fresh(x), expected, atol=1e-6)


def test_cell_supernet_activate_switches_paths() -> None:
    torch.manual_seed(0)
    space = CellSpace()
    x = torch.randn(2, 64)
    outs = []
    for seed in range(3):
        space.activate(_cell_arch(space, seed))
        outs.append(space(x))
    assert not torch.allclose(outs[0], outs[1]) and not torch.allclose(outs[1], outs[2])


def test_cell_refuses_wrong_predecessor_count_and_bad_arguments() -> None:
    space = CellSpace()
    with pytest.raises(ValueError, match="takes 2 predecessor"):
        space.cell(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="merge_op"):
        Cell([nn.Identity()], 2, merge_op="sum", label="c")  # type: ignore[arg-type]


def test_frozen_cell_trains_on_digits() -> None:
    torch.manual_seed(0)
    space = CellSpace()
    assert_trains_on_digits(space.freeze(space.random_sample(seed=5)))


class ActSpace(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 16)
        self.act = AutoActivation(unit_num=2, label="act")
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.act(self.fc(x)))
        return out


def test_auto_activation_labels_supernet_frozen_and_state_dicts() -> None:
    space = ActSpace()
    assert list(space.search_space()) == [
        "act__unary_0",
        "act__unary_1",
        "act__unary_2",
        "act__binary_0",
        "act__binary_1",
    ]
    assert (
        len(space.search_space()["act__unary_0"]) == 22 and len(space.search_space()["act__binary_0"]) == 10
    )
    x = torch.rand(4, 64)
    # NNI's indices: unary 6 is x * beta (UnaryMul), binary 9 is beta * x + (1 - beta) * y (BinaryParamAdd)
    arch = {"act__unary_0": 6, "act__unary_1": 0, "act__unary_2": 18, "act__binary_0": 9, "act__binary_1": 1}
    frozen: Any = space.freeze(arch)
    assert _params(frozen) == _params(space.fc) + _params(space.head) + 2  # the two betas chosen
    with torch.no_grad():
        cast(Any, space.act.first_unary[6]).beta.fill_(0.5)
    space.activate(arch)
    expected = space(x)
    h = space.fc(x)
    first = 0.5 * h
    by_hand = space.head((first * 1.0 + 0.0 * h) * torch.sigmoid(h))
    assert torch.allclose(expected, by_hand, atol=1e-6)
    with original_state_dict_hooks(frozen):
        frozen.load_state_dict(space.state_dict())
    assert torch.allclose(frozen(x), expected, atol=1e-6)
    with original_state_dict_hooks(frozen):
        saved = frozen.state_dict()
    fresh = ActSpace()
    fresh.load_state_dict(saved, strict=False)
    fresh.activate(arch)
    assert torch.allclose(fresh(x), expected, atol=1e-6)
    assert space.random_sample(seed=0).keys() == arch.keys()
