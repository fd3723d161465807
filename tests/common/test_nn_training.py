"""Model space with real (small) training on digits: sampled models, SPOS supernet, weight porting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, cast

import pytest
import torch
from spaces import DigitsConvSpace, DigitsMLPSpace
from torch.utils.data import DataLoader

from retia.datasets import DigitsDataset
from retia.nn import Arch, InputChoice, LayerChoice, ModelSpace, fixed_arch, original_state_dict_hooks

DigitsLoader = DataLoader[tuple[torch.Tensor, torch.Tensor]]


@pytest.fixture(scope="module", autouse=True)
def _torch_ready() -> Iterator[None]:
    """One intra-op thread (tiny models on a shared 2-core box run ~100x faster), and an optimizer
    built once up front: torch's first one exports TORCHINDUCTOR_CACHE_DIR, which the env-leak check
    would blame on the test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.optim.Adam(torch.nn.Linear(1, 1).parameters())
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def flat_digits() -> tuple[DigitsLoader, DigitsLoader]:
    return (
        DataLoader(
            DigitsDataset("train"), batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0)
        ),
        DataLoader(DigitsDataset("val"), batch_size=256),
    )


def _accuracy(model: torch.nn.Module, loader: DigitsLoader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())
            total += len(y)
    return correct / total


def _distinct_samples(space: ModelSpace, n: int) -> list[Arch]:
    seen: dict[str, Arch] = {}
    seed = 0
    while len(seen) < n:
        arch = space.random_sample(seed=seed)
        seen.setdefault(json.dumps(arch, sort_keys=True), arch)
        seed += 1
    return list(seen.values())


def test_sampled_architectures_build_train_one_epoch_and_differ(
    flat_digits: tuple[DigitsLoader, DigitsLoader],
) -> None:
    train, val = flat_digits
    space = DigitsMLPSpace()
    param_counts = set()
    for arch in _distinct_samples(space, 4):
        torch.manual_seed(0)
        model = space.freeze(arch)
        assert not [m for m in model.modules() if isinstance(m, (LayerChoice, InputChoice))]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            # no unused parameters: unchosen candidates are not part of the model at all
            assert all(p.grad is not None for p in model.parameters())
            optimizer.step()
        assert torch.isfinite(loss)
        assert _accuracy(model, val) > 0.3, arch  # chance is 0.1
        param_counts.add(sum(p.numel() for p in model.parameters()))
    assert len(param_counts) > 1


def test_supernet_trained_with_random_paths_ports_to_the_fixed_model() -> None:
    data = DigitsDataset("train", flatten=False)
    loader = DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    supernet = DigitsConvSpace()
    optimizer = torch.optim.SGD(supernet.parameters(), lr=0.05, momentum=0.9)
    supernet.train()
    # SPOS: a fresh random single path per step, the channels too (a slice of the widest weights)
    for step, (x, y) in zip(range(12), loader):
        supernet.activate(supernet.random_sample(seed=step))
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(supernet(x), y).backward()
        optimizer.step()

    arch = {"channels": 8, "sep0_act": 1, "op0": "sepconv", "sep1_act": 0, "op1": "conv3x3", "skip": [0, 2]}
    with fixed_arch(arch):
        model = DigitsConvSpace()
    super_state = supernet.state_dict()
    assert "blocks.1.conv3x3.weight" in super_state
    assert "blocks.1.weight" in model.state_dict()
    with original_state_dict_hooks(model):
        model.load_state_dict(super_state)  # strict: every key maps, unchosen candidates are dropped
    assert torch.equal(cast(torch.nn.Conv2d, model.blocks[1]).weight, super_state["blocks.1.conv3x3.weight"])
    assert torch.equal(
        cast(Any, model.blocks)[0][1].running_mean, super_state["blocks.0.sepconv.1.running_mean"]
    )

    x = torch.stack([data[i][0] for i in range(16)])
    supernet.activate(arch)
    supernet.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), supernet(x))

    # and back: the concrete model saves in the supernet's key layout
    with original_state_dict_hooks(model):
        saved = model.state_dict()
    assert set(saved) <= set(super_state)
    assert "blocks.0.sepconv.0.weight" in saved and "blocks.0.0.weight" not in saved
    assert all(torch.equal(v, super_state[k]) for k, v in saved.items())
    fresh = DigitsConvSpace()
    result = fresh.load_state_dict(saved, strict=False)
    assert not result.unexpected_keys
    assert all(
        k.startswith(("blocks.0.conv", "blocks.1.conv5x5", "blocks.1.sep")) for k in result.missing_keys
    )
    # hooks are gone after the block
    assert "blocks.1.weight" in model.state_dict()
