"""LayerChoice in NNI's layout: candidates are its own children, and checkpoints port both ways."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import torch

import retia.nn as nn
from retia.nn import LayerChoice, original_state_dict_hooks

pytestmark = pytest.mark.timeout(60)

SpaceT = TypeVar("SpaceT", bound=nn.ModelSpace)


class TwoOpSpace(nn.ModelSpace):
    """A stem, one LayerChoice of two candidates with parameters, a head.

    Both candidates' first weights have the same shape: with candidate 1 chosen, the frozen
    ``block.0.weight`` (the Sequential's first Linear) is also the supernet key of candidate 0,
    so a mapping that reads keys one by one would load the wrong tensor without any error.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Linear(6, 4)
        self.block = nn.LayerChoice(
            [nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4))], label="op"
        )
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.block(self.stem(x)))
        return out


class NestedSpace(nn.ModelSpace):
    """A LayerChoice inside a candidate of another, and one that is itself a candidate."""

    def __init__(self) -> None:
        super().__init__()
        self.outer = nn.LayerChoice(
            {
                "plain": nn.Linear(4, 4),
                "deep": nn.Sequential(
                    nn.Linear(4, 4), nn.LayerChoice([nn.Linear(4, 4), nn.Identity()], label="inner")
                ),
            },
            label="outer",
        )
        self.pair = nn.LayerChoice(
            [nn.LayerChoice([nn.Linear(4, 4), nn.Linear(4, 4)], label="pair_inner"), nn.Identity()],
            label="pair",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.pair(self.outer(x))
        return out


def _randomized(space: SpaceT, seed: int) -> SpaceT:
    """Distinct random values in every parameter, so a tensor loaded into the wrong place shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in space.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))
    return space


def _checkpoint(space: torch.nn.Module, tmp_path: Path) -> dict[str, torch.Tensor]:
    """The supernet's state dict as a file on disk and back, as a saved supernet is reused."""
    path = tmp_path / "supernet.pt"
    torch.save(space.state_dict(), path)
    loaded: dict[str, torch.Tensor] = torch.load(path, weights_only=True)
    return loaded


def _outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out: torch.Tensor = model(x)
    return out


# ---------------------------------------------------------------------------- layout and API


def test_candidates_are_direct_children_named_by_index_or_key() -> None:
    space = TwoOpSpace()
    block = space.block
    assert isinstance(block, LayerChoice)
    assert [name for name, _ in block.named_children()] == ["0", "1"]
    assert getattr(block, "0") is block[0] and getattr(block, "1") is block[1]
    assert list(space.state_dict()) == [
        "stem.weight",
        "stem.bias",
        "block.0.weight",
        "block.0.bias",
        "block.1.0.weight",
        "block.1.0.bias",
        "block.1.2.weight",
        "block.1.2.bias",
        "head.weight",
        "head.bias",
    ]
    named = LayerChoice({"conv3x3": torch.nn.Conv2d(1, 1, 3), "pool": torch.nn.MaxPool2d(2)}, label="x")
    assert [name for name, _ in named.named_children()] == ["conv3x3", "pool"]
    assert list(named.state_dict()) == ["conv3x3.weight", "conv3x3.bias"]


def test_names_getitem_len_iter_and_candidates() -> None:
    relu, tanh = torch.nn.ReLU(), torch.nn.Tanh()
    listed = LayerChoice([relu, tanh], label="act")
    assert listed.names == [0, 1] and len(listed) == 2 and list(listed) == [relu, tanh]
    assert listed[0] is relu and listed["0"] is relu and listed[-1] is tanh and listed["1"] is tanh
    assert listed.candidates == [relu, tanh]

    conv, pool = torch.nn.Conv2d(1, 1, 3), torch.nn.MaxPool2d(2)
    named = LayerChoice({"conv": conv, "pool": pool}, label="op")
    assert named.names == ["conv", "pool"] and list(named) == [conv, pool]
    assert named["pool"] is pool and named[0] is conv and named[-1] is pool  # ints are positions
    assert named.candidates == {"conv": conv, "pool": pool}

    with pytest.raises(KeyError, match="no candidate 'nope'.*'conv', 'pool'"):
        named["nope"]
    with pytest.raises(IndexError, match="2 candidates, no index 2"):
        listed[2]


def test_setitem_replaces_a_candidate_that_forward_then_runs() -> None:
    block = LayerChoice([torch.nn.Linear(3, 3), torch.nn.Linear(3, 3)], label="op")
    replacement = torch.nn.Linear(3, 5)
    block[1] = replacement
    assert block[1] is replacement and getattr(block, "1") is replacement and len(block) == 2
    assert block.state_dict()["1.weight"].shape == (5, 3)
    block.activate(1)
    x = torch.randn(2, 3)
    assert torch.equal(block(x), replacement(x))

    with pytest.raises(KeyError, match="no candidate 'extra'"):
        block["extra"] = torch.nn.Identity()  # adding would change the search space
    with pytest.raises(TypeError, match="must be an nn.Module"):
        block[0] = cast(Any, 3)
    with pytest.raises(NotImplementedError, match="deleting candidate 0 .* not supported"):
        del block[0]
    with pytest.raises(KeyError, match="no candidate 'extra'"):
        del block["extra"]
    assert block.names == [0, 1] and len(block) == 2


@pytest.mark.parametrize("name", ["forward", "names", "label", "active", "training", "_modules"])
def test_candidate_names_that_shadow_layer_choice_attributes_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match=f"{name!r} is an attribute of LayerChoice"):
        LayerChoice({name: torch.nn.ReLU(), "ok": torch.nn.Tanh()}, label="x")


def test_supernet_layer_choice_survives_deepcopy_and_pickle() -> None:
    space = _randomized(TwoOpSpace(), seed=1)
    space.activate({"op": 1})
    x = torch.randn(3, 6)
    for clone in (copy.deepcopy(space), pickle.loads(pickle.dumps(space))):
        block = cast(LayerChoice, clone.block)
        assert block.names == [0, 1] and block.active == 1
        assert list(clone.state_dict()) == list(space.state_dict())
        assert torch.equal(_outputs(clone, x), _outputs(space, x))


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("chosen", [0, 1])
def test_supernet_checkpoint_loads_into_the_frozen_model_and_back(chosen: int, tmp_path: Path) -> None:
    supernet = _randomized(TwoOpSpace(), seed=0)
    checkpoint = _checkpoint(supernet, tmp_path)
    arch = {"op": chosen}
    model = supernet.freeze(arch)
    assert not isinstance(model.block, LayerChoice)  # the chosen module itself
    assert type(model.block) is type(supernet.block[chosen])

    with original_state_dict_hooks(model):
        model.load_state_dict(checkpoint)  # strict: every key maps, the unchosen candidate's dropped
    supernet.activate(arch)
    x = torch.randn(5, 6)
    assert torch.equal(_outputs(model, x), _outputs(supernet, x))
    chosen_params = dict(supernet.block[chosen].named_parameters())
    assert all(torch.equal(p, chosen_params[n]) for n, p in model.block.named_parameters())

    # and back: the frozen model saves the supernet's keys, which load into a fresh supernet
    with original_state_dict_hooks(model):
        saved = model.state_dict()
    assert set(saved) < set(checkpoint)
    assert all(torch.equal(v, checkpoint[k]) for k, v in saved.items())
    fresh = _randomized(TwoOpSpace(), seed=2)
    result = fresh.load_state_dict(saved, strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith(f"block.{1 - chosen}.") for k in result.missing_keys)
    fresh.activate(arch)
    assert torch.equal(_outputs(fresh, x), _outputs(model, x))


def test_a_state_dict_in_the_frozen_layout_still_loads_under_the_hooks() -> None:
    supernet = TwoOpSpace()
    model = supernet.freeze({"op": 1})
    other = _randomized(cast(nn.ModelSpace, supernet.freeze({"op": 1})), seed=3)
    with original_state_dict_hooks(model):
        model.load_state_dict(other.state_dict())  # block.0.weight is read as the frozen model's own
    x = torch.randn(4, 6)
    assert torch.equal(_outputs(model, x), _outputs(other, x))


def test_nested_layer_choices_map_both_ways(tmp_path: Path) -> None:
    supernet = _randomized(NestedSpace(), seed=4)
    checkpoint = _checkpoint(supernet, tmp_path)
    assert {"outer.plain.weight", "outer.deep.1.0.weight", "pair.0.1.weight"} <= set(checkpoint)
    arch = {"outer": "deep", "inner": 0, "pair": 0, "pair_inner": 1}
    model = supernet.freeze(arch)
    assert list(model.state_dict()) == [
        "outer.0.weight",
        "outer.0.bias",
        "outer.1.weight",
        "outer.1.bias",
        "pair.weight",
        "pair.bias",
    ]
    with original_state_dict_hooks(model):
        model.load_state_dict(checkpoint)
        saved = model.state_dict()
    assert list(saved) == [
        "outer.deep.0.weight",
        "outer.deep.0.bias",
        "outer.deep.1.0.weight",
        "outer.deep.1.0.bias",
        "pair.0.1.weight",
        "pair.0.1.bias",
    ]
    supernet.activate(arch)
    x = torch.randn(3, 4)
    assert torch.equal(_outputs(model, x), _outputs(supernet, x))
    assert all(torch.equal(v, checkpoint[k]) for k, v in saved.items())


def test_a_checkpoint_of_a_plain_torch_module_in_nni_layout_loads(tmp_path: Path) -> None:
    """A checkpoint written by a model that is not a retia space at all, with the candidates as a
    module's children by index (how NNI's LayerChoice stores them), loads into the supernet strictly
    and into the frozen model through the hooks."""
    torch.manual_seed(5)
    nni_like = torch.nn.Module()
    nni_like.stem = torch.nn.Linear(6, 4)
    nni_like.block = torch.nn.Module()
    nni_like.block.add_module("0", torch.nn.Linear(4, 4))
    nni_like.block.add_module(
        "1", torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4))
    )
    nni_like.head = torch.nn.Linear(4, 2)
    checkpoint = _checkpoint(nni_like, tmp_path)

    supernet = TwoOpSpace()
    supernet.load_state_dict(checkpoint)  # strict: the same keys
    model = supernet.freeze({"op": 1})
    with original_state_dict_hooks(model):
        model.load_state_dict(checkpoint)
    x = torch.randn(4, 6)
    with torch.no_grad():
        expected = nni_like.head(getattr(nni_like.block, "1")(nni_like.stem(x)))
    assert torch.equal(_outputs(model, x), expected)
