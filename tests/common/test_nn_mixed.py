"""Mixed operations: a supernet runs a smaller width or kernel as a slice of its largest weight, and
the frozen model of that architecture has exactly the slice (through original_state_dict_hooks)."""

from __future__ import annotations

import copy
import pickle
from typing import Any, cast

import pytest
import torch
from spaces import DigitsConvSpace

import retia.nn as nn
from retia.nn import fixed_arch, original_state_dict_hooks
from retia.nn.mixed import MixedConv2d, MixedLinear


class AllLayers(nn.ModelSpace):
    """Every mixed layer kind, its choices shared and derived (padding = kernel // 2)."""

    def __init__(self) -> None:
        super().__init__()
        w = nn.ValueChoice([4, 8, 16], label="w")
        k = nn.ValueChoice([3, 5, 7], label="k")
        self.conv = nn.Conv2d(1, w, k, padding=k // 2)
        self.bn = nn.BatchNorm2d(w)
        self.dw = nn.Conv2d(w, w, 3, padding=1, groups=w)  # depthwise: groups is the width too
        self.conv1d = nn.Conv1d(1, 2, nn.ValueChoice([1, 3], label="k1"), padding="same")
        self.pool = nn.AdaptiveAvgPool2d(1)
        e = nn.ValueChoice([8, 16], label="e")
        self.proj = nn.Linear(w, e)
        self.ln = nn.LayerNorm(e)
        self.attn = nn.MultiheadAttention(e, nn.ValueChoice([2, 4], label="heads"), batch_first=True)
        self.bn1d = nn.BatchNorm1d(e)
        self.drop = nn.Dropout(nn.ValueChoice([0.0, 0.5], label="p"))
        self.fc = nn.Linear(e, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.dw(torch.relu(self.bn(self.conv(x))))).flatten(1)
        h = self.ln(self.proj(h))
        seq = torch.stack([h, h.flip(1).roll(1, 0), h * 0.5], dim=1)  # (batch, 3, e)
        h = self.attn(seq, seq, seq)[0].mean(1)
        side = self.conv1d(h.unsqueeze(1)).mean(1)  # (batch, e)
        out: torch.Tensor = self.fc(self.drop(self.bn1d(h + side)))
        return out


X = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
SMALL = {"w": 4, "k": 3, "k1": 1, "e": 8, "heads": 2, "p": 0.0}


def _trained(space: nn.ModelSpace, steps: int = 4) -> None:
    """A few SPOS steps on random paths, so no two weights are equal by initialization."""
    optimizer = torch.optim.SGD(space.parameters(), lr=0.1)
    space.train()
    for step in range(steps):
        space.activate({**space.random_sample(seed=step), "p": 0.0})
        optimizer.zero_grad()
        space(X).square().mean().backward()
        optimizer.step()


def _frozen(space: nn.ModelSpace, arch: dict[str, Any]) -> torch.nn.Module:
    """The frozen model of ``arch``, loaded from the supernet's state dict through the hooks."""
    with fixed_arch(arch):
        model: torch.nn.Module = type(space)()
    with original_state_dict_hooks(model):
        model.load_state_dict(space.state_dict())
    return model


def _assert_same_output(space: torch.nn.Module, model: torch.nn.Module) -> None:
    """The activated supernet and the frozen model compute the same, in eval mode."""
    space.eval()
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(space(X), model(X), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("seed", range(4))
def test_an_activated_supernet_computes_what_its_frozen_model_does(seed: int) -> None:
    torch.manual_seed(0)
    space = AllLayers()
    _trained(space)
    arch = {**space.random_sample(seed=100 + seed), "p": 0.0} if seed else SMALL
    space.activate(arch)
    model = _frozen(space, arch)
    _assert_same_output(space, model)
    # the frozen model has only the chosen sizes' parameters
    assert cast(torch.nn.Conv2d, cast(Any, model).conv).weight.shape == (arch["w"], 1, arch["k"], arch["k"])
    assert cast(torch.nn.MultiheadAttention, cast(Any, model).attn).in_proj_weight.shape == (
        3 * arch["e"],
        arch["e"],
    )


def test_the_frozen_weights_are_the_slices_the_supernet_runs() -> None:
    torch.manual_seed(0)
    space = AllLayers()
    _trained(space)
    model = cast(Any, _frozen(space, SMALL))
    sup = cast(Any, space)
    # first rows / columns; the centre 3x3 of the 7x7 kernel
    assert torch.equal(model.conv.weight, sup.conv.weight[:4, :, 2:5, 2:5])
    assert torch.equal(model.dw.weight, sup.dw.weight[:4])
    assert torch.equal(model.proj.weight, sup.proj.weight[:8, :4])
    assert torch.equal(model.bn.running_var, sup.bn.running_var[:4])
    assert torch.equal(model.ln.weight, sup.ln.weight[:8])
    assert torch.equal(model.conv1d.weight, sup.conv1d.weight[:, :, 1:2])
    # query, key and value projections: the first 8 rows of each 16-row third
    big = sup.attn.in_proj_weight
    expected = torch.cat([big[0:8, :8], big[16:24, :8], big[32:40, :8]])
    assert torch.equal(model.attn.in_proj_weight, expected)
    assert torch.equal(model.attn.out_proj.weight, sup.attn.out_proj.weight[:8, :8])
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in space.parameters()) / 3


def test_freeze_can_inherit_the_supernet_weights() -> None:
    torch.manual_seed(0)
    space = AllLayers()
    _trained(space)
    inherited = cast(Any, space.freeze(SMALL, inherit_weights=True))
    fresh = cast(Any, space.freeze(SMALL))
    assert torch.equal(inherited.proj.weight, cast(Any, space).proj.weight[:8, :4])
    assert not torch.equal(fresh.proj.weight, inherited.proj.weight)


def test_nni3_freeze_keeps_the_supernet_weights() -> None:
    from retia.nni.nas.nn.pytorch import Linear, ModelSpace, ValueChoice

    class Net(ModelSpace, label_prefix="net"):
        def __init__(self) -> None:
            super().__init__()
            self.fc = Linear(3, ValueChoice([2, 4], label="w"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.fc(x)
            return out

    space = Net()
    model = cast(Any, space.freeze({"net/w": 2}))
    assert torch.equal(model.fc.weight, cast(Any, space).fc.weight[:2])


def test_a_frozen_models_weights_load_into_their_part_of_the_supernet() -> None:
    torch.manual_seed(0)
    space = AllLayers()
    with fixed_arch(SMALL):
        model = cast(Any, AllLayers())
    before = copy.deepcopy(space.state_dict())
    with original_state_dict_hooks(model):
        saved = model.state_dict()
    assert saved["conv.weight"].shape == (4, 1, 3, 3)  # the supernet's key, the frozen shape
    space.load_state_dict(saved)
    sup = cast(Any, space)
    assert torch.equal(sup.conv.weight[:4, :, 2:5, 2:5], model.conv.weight)
    rim = sup.conv.weight.detach().clone()
    rim[:4, :, 2:5, 2:5] = before["conv.weight"][:4, :, 2:5, 2:5]
    assert torch.equal(rim, before["conv.weight"])  # everything outside the slice kept
    space.activate(SMALL)
    _assert_same_output(space, model)


def test_training_a_small_path_updates_only_its_slice() -> None:
    torch.manual_seed(0)
    space = AllLayers()
    space.activate(SMALL)
    space.train()
    space(X).square().mean().backward()
    sup = cast(Any, space)
    grad = sup.proj.weight.grad
    assert grad[:8, :4].abs().sum() > 0 and grad[8:].abs().sum() == 0 and grad[:, 4:].abs().sum() == 0
    conv_grad = sup.conv.weight.grad
    assert conv_grad[:4, :, 2:5, 2:5].abs().sum() > 0
    outside = conv_grad.detach().clone()
    outside[:4, :, 2:5, 2:5] = 0
    assert torch.count_nonzero(outside) == 0  # exact: no float sums compared
    # batch norm's running statistics move in the slice only
    assert torch.all(sup.bn.running_mean[4:] == 0) and torch.any(sup.bn.running_mean[:4] != 0)


def test_the_mixed_layers_are_the_same_parameters_and_survive_copies() -> None:
    space = AllLayers()
    weight = cast(Any, space).conv.weight
    space.activate(SMALL)
    conv = cast(Any, space).conv
    assert isinstance(conv, MixedConv2d) and conv.weight is weight
    assert "active: out_channels=4, kernel_size=(3, 3), padding=(1, 1)" in repr(conv)
    for clone in (copy.deepcopy(space), pickle.loads(pickle.dumps(space))):
        with torch.no_grad():
            torch.testing.assert_close(clone.eval()(X), space.eval()(X))
        clone.activate({**SMALL, "w": 16})
        assert clone(X).shape == (6, 10)


def test_the_largest_values_run_the_layers_unchanged() -> None:
    torch.manual_seed(0)
    space = AllLayers()
    reference = copy.deepcopy(space).eval()
    largest = {"w": 16, "k": 7, "k1": 3, "e": 16, "heads": 4, "p": 0.0}
    space.activate(largest)
    assert isinstance(cast(Any, space).proj, MixedLinear)
    with torch.no_grad():
        assert torch.equal(space.eval()(X), reference(X))


def test_a_layer_subclass_with_its_own_forward_is_not_mixed_and_says_so() -> None:
    class Scaled(torch.nn.Linear):
        def forward(self, input: torch.Tensor) -> torch.Tensor:
            return super().forward(input) * 2

    class Net(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.fc = Scaled(3, nn.ValueChoice([2, 4], label="w"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.fc(x)
            return out

    space = Net()
    space.activate({"w": 4})
    with pytest.raises(NotImplementedError, match=r"'w'=2 .* kept in fc\.out_features"):
        space.activate({"w": 2})


def test_a_real_shape_mismatch_is_not_sliced_away() -> None:
    class Net(nn.ModelSpace):
        def __init__(self, vocab: int = 5) -> None:
            super().__init__()
            self.emb = nn.Embedding(vocab, 3)  # not a mixed layer: its shape is not a choice
            self.fc = nn.Linear(3, nn.ValueChoice([2, 4], label="w"))

    with fixed_arch({"w": 2}):
        small = Net(vocab=4)
    big = Net(vocab=5).state_dict()
    with original_state_dict_hooks(small), pytest.raises(RuntimeError, match="size mismatch for emb.weight"):
        small.load_state_dict(big)
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        small.load_state_dict(big)  # without the hooks nothing is sliced


def test_digits_conv_space_trains_every_width_as_slices() -> None:
    torch.manual_seed(0)
    space = DigitsConvSpace()
    arch = {**space.random_sample(seed=0), "channels": 4}
    space.activate(arch)
    model = _frozen(space, arch)
    _assert_same_output(space, model)
