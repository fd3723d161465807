"""Repeat: depth as an int, a range or a ValueChoice; supernet, frozen model and the weights between them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import pytest
import torch
from torch.utils.data import DataLoader

import retia
import retia.nn as nn
import retia.nni.nas.nn.pytorch as nni_nn3
import retia.nni.retiarii.nn.pytorch as nni_nn2
from retia import InvalidArchitectureError
from retia.datasets import DigitsDataset
from retia.nn import LayerChoice, Repeat, ValueChoice, fixed_arch, original_state_dict_hooks


@pytest.fixture(scope="module", autouse=True)
def _torch_ready() -> Iterator[None]:
    """One intra-op thread (tiny models on a shared box), and torch's first optimizer built up front
    (it exports TORCHINDUCTOR_CACHE_DIR, which the env-leak check would blame on the test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    yield
    torch.set_num_threads(threads)


def _block(index: int) -> torch.nn.Module:
    return nn.Sequential(nn.Linear(8, 8), nn.Tanh())


class DepthSpace(nn.ModelSpace):
    """A stem, 1 to 3 repeated blocks (a factory: each its own weights), a head."""

    def __init__(self, depth: Any = (1, 3)) -> None:
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.rep = nn.Repeat(_block, depth, label="depth")
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.rep(self.stem(x)))
        return out


class ChoiceDepthSpace(nn.ModelSpace):
    """Each repeated block is a LayerChoice of its own (label op<i>), the depth a ValueChoice."""

    def __init__(self) -> None:
        super().__init__()
        self.rep = nn.Repeat(
            lambda i: nn.LayerChoice(
                [nn.Linear(8, 8), nn.Sequential(nn.Linear(8, 8), nn.ReLU())], label=f"op{i}"
            ),
            nn.ValueChoice([1, 3], label="d"),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.rep(x)
        return out


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _linears(model: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.Linear) for m in model.modules())


def test_repeat_is_exported_from_retia_nn_and_both_nni_paths() -> None:
    assert nni_nn2.Repeat is Repeat and nni_nn3.Repeat is Repeat
    assert "Repeat" in nn.__all__ and "Repeat" in nni_nn2.__all__ and "Repeat" in nni_nn3.__all__


def test_a_depth_range_is_one_decision_and_the_supernet_runs_the_first_active_blocks() -> None:
    torch.manual_seed(0)
    space = DepthSpace()
    assert space.search_space() == {"depth": [1, 2, 3]}
    assert len(space.rep) == 3 and space.rep.active == 3  # the supernet holds the largest depth
    x = torch.randn(5, 4)
    outputs = []
    for depth in (1, 2, 3):
        space.activate({"depth": depth})
        h = space.stem(x)
        for block in list(space.rep)[:depth]:
            h = block(h)
        expected = space.head(h)
        out = space(x)
        assert torch.equal(out, expected)
        outputs.append(out)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])
    with pytest.raises(InvalidArchitectureError):
        space.activate({"depth": 4})


def test_frozen_models_have_exactly_the_chosen_blocks_and_the_supernets_outputs() -> None:
    torch.manual_seed(0)
    supernet = DepthSpace()
    supernet.eval()
    super_state = supernet.state_dict()
    block_params = _params(_block(0))
    x = torch.randn(5, 4)
    for depth in (1, 2, 3):
        model = supernet.freeze({"depth": depth})
        assert not [m for m in model.modules() if isinstance(m, Repeat) and m.spec is not None]
        assert len(cast(Repeat, model.rep)) == depth
        assert _linears(model) == depth + 2
        assert _params(model) == _params(supernet) - (3 - depth) * block_params
        keys = list(model.state_dict())
        assert set(keys) <= set(super_state)  # blocks keep their index: blocks.0, blocks.1, ...
        assert f"rep.blocks.{depth - 1}.0.weight" in keys and f"rep.blocks.{depth}.0.weight" not in keys
        with original_state_dict_hooks(model):
            model.load_state_dict(super_state)  # strict: the unbuilt blocks' keys are dropped
        model.eval()
        supernet.activate({"depth": depth})
        with torch.no_grad():
            assert torch.equal(model(x), supernet(x))
        # and back: the frozen model's weights load into a fresh supernet, missing only unbuilt blocks
        with original_state_dict_hooks(model):
            saved = model.state_dict()
        fresh = DepthSpace()
        result = fresh.load_state_dict(saved, strict=False)
        assert not result.unexpected_keys
        assert {k.split(".")[2] for k in result.missing_keys} == {str(i) for i in range(depth, 3)}
        fresh.activate({"depth": depth})
        fresh.eval()
        with torch.no_grad():
            assert torch.equal(fresh(x), model(x))


def test_a_strict_load_of_the_supernets_weights_fails_without_the_hooks() -> None:
    supernet = DepthSpace()
    model = supernet.freeze({"depth": 1})
    with pytest.raises(RuntimeError, match="rep.blocks.1"):
        model.load_state_dict(supernet.state_dict())


def test_a_factory_builds_distinct_blocks_and_a_module_is_deep_copied() -> None:
    calls: list[int] = []

    def factory(index: int) -> torch.nn.Module:
        calls.append(index)
        return nn.Linear(3, 3)

    rep = Repeat(factory, 3)
    assert calls == [0, 1, 2]
    weights = [cast(torch.nn.Linear, b).weight for b in rep]
    assert len({id(w) for w in weights}) == 3 and not torch.equal(weights[0], weights[1])

    one = nn.Linear(3, 3)
    copies = Repeat(one, 3)
    assert copies[0] is one and copies[1] is not one
    assert cast(torch.nn.Linear, copies[1]).weight is not one.weight
    assert torch.equal(cast(torch.nn.Linear, copies[2]).weight, one.weight)

    listed = [nn.Linear(3, 3) for _ in range(4)]
    prefix = Repeat(listed, 2)
    assert list(prefix) == listed[:2]
    assert Repeat([factory, factory], 2)[1] is not None and calls[-2:] == [0, 1]
    with pytest.raises(ValueError, match="needs 3 blocks"):
        Repeat(listed[:2], 3)
    with pytest.raises(TypeError, match="factory returned"):
        Repeat(cast(Any, lambda i: "not a module"), 2)


def test_depth_as_int_tuple_and_value_choice() -> None:
    fixed = DepthSpace(depth=2)
    assert fixed.search_space() == {} and len(fixed.rep) == 2
    with pytest.raises(RuntimeError, match="fixed depth"):
        fixed.rep.activate(1)
    assert _linears(fixed.freeze({})) == 4

    class AutoLabel(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.rep = nn.Repeat(nn.Linear(2, 2), (0, 2))

    auto = AutoLabel()
    assert auto.search_space() == {"repeat_1": [0, 1, 2]}
    empty = auto.freeze({"repeat_1": 0})
    x = torch.randn(3, 2)
    assert _params(empty) == 0 and torch.equal(cast(Repeat, empty.rep)(x), x)  # depth 0: the identity

    space = ChoiceDepthSpace()
    assert space.search_space() == {"d": [1, 3], "op0": [0, 1], "op1": [0, 1], "op2": [0, 1]}
    arch = {"d": 1, "op0": 1, "op1": 0, "op2": 0}
    space.activate(arch)  # a ValueChoice used as a depth activates to any of its values
    assert space.rep.active == 1
    space.activate({**arch, "d": 3})
    assert space.rep.active == 3
    frozen = space.freeze({**arch, "d": 3})
    assert len(cast(Repeat, frozen.rep)) == 3 and _linears(frozen) == 3

    for bad in [(2, 1), (0, 0), (1, 2, 3), -1, 1.5]:
        with pytest.raises((ValueError, TypeError)):
            Repeat(nn.Linear(2, 2), cast(Any, bad), label="bad")
    with pytest.raises(ValueError, match="ints >= 0"):
        Repeat(nn.Linear(2, 2), cast(Any, ValueChoice([0.5, 1.5], label="floaty")))
    with pytest.raises(ValueError, match="explicit label"):
        Repeat(nn.Linear(2, 2), (1, 2))  # outside a space a range needs a label


def test_choices_in_factory_blocks_register_per_block_and_unbuilt_ones_are_not_demanded() -> None:
    torch.manual_seed(0)
    supernet = ChoiceDepthSpace()
    arch = {"d": 3, "op0": 1, "op1": 0, "op2": 1}
    supernet.activate(arch)
    x = torch.randn(4, 8)
    h = x
    for i in range(3):
        h = cast(LayerChoice, supernet.rep[i])[arch[f"op{i}"]](h)
    assert torch.equal(supernet(x), h)

    # depth 1: block 0 only; its choice is taken, those of blocks 1 and 2 are not asked for
    with fixed_arch({"d": 1, "op0": 1}):
        shallow = ChoiceDepthSpace()
    assert len(shallow.rep) == 1 and not [m for m in shallow.modules() if isinstance(m, LayerChoice)]
    with original_state_dict_hooks(shallow):
        shallow.load_state_dict(supernet.state_dict())
    supernet.activate({**arch, "d": 1})
    assert torch.equal(shallow(x), supernet(x))


def test_a_deep_copied_block_shares_its_choice() -> None:
    class Shared(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.rep = nn.Repeat(nn.LayerChoice([nn.Linear(2, 2), nn.Identity()], label="op"), 2)

    space = Shared()
    assert space.search_space() == {"op": [0, 1]}
    space.activate({"op": 1})
    assert all(cast(LayerChoice, b).active == 1 for b in space.rep)
    frozen = space.freeze({"op": 1})
    assert [type(b) for b in cast(Repeat, frozen.rep)] == [torch.nn.Identity, torch.nn.Identity]


def test_a_full_sample_with_a_shallower_depth_freezes_and_ships() -> None:
    """A strategy's sample names every label: those of blocks beyond the depth are not built, and
    neither demanded nor refused as unknown; a label of no choice still is."""
    space = ChoiceDepthSpace()
    for arch in ({"d": 1, "op0": 0, "op1": 0, "op2": 0}, {"d": 1, "op0": 0}, space.random_sample(seed=3)):
        model = space.freeze(arch)
        assert len(cast(Repeat, model.rep)) == arch["d"]
        again = retia.load(retia.dump(model))  # its recipe is the freeze: it rebuilds on a worker
        assert len(cast(Repeat, again.rep)) == arch["d"]
    with pytest.raises(InvalidArchitectureError, match="unknown label"):
        with fixed_arch({"d": 1, "op0": 0, "op9": 0}):
            ChoiceDepthSpace()


class DigitsRepeatSpace(nn.ModelSpace):
    """An MLP over the 64 digit pixels: 1 to 3 blocks, each its own choice of activation."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Linear(64, 32), nn.ReLU())
        self.rep = nn.Repeat(
            lambda i: nn.Sequential(
                nn.Linear(32, 32), nn.LayerChoice([nn.ReLU(), nn.Tanh()], label=f"act{i}")
            ),
            (1, 3),
            label="depth",
        )
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.rep(self.stem(x)))
        return out


def test_a_frozen_repeat_space_trains_on_digits() -> None:
    train = DataLoader(
        DigitsDataset("train"), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    val = DataLoader(DigitsDataset("val"), batch_size=256)
    space = DigitsRepeatSpace()
    assert space.search_space() == {"depth": [1, 2, 3], "act0": [0, 1], "act1": [0, 1], "act2": [0, 1]}
    torch.manual_seed(0)
    model = space.freeze({"depth": 3, "act0": 1, "act1": 0, "act2": 1})
    assert _linears(model) == 5
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        for x, y in train:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            assert all(p.grad is not None for p in model.parameters())  # every block is used
            optimizer.step()
    model.eval()
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in val)
    assert correct / len(cast(Any, val.dataset)) > 0.5  # chance is 0.1
