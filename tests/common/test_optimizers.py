"""retia.optimizers.FusedStep: several optimizers stepped as one foreach step give exactly what each
gives stepping alone, whatever their kinds, settings, skipped batches and learning-rate changes."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import pytest
import torch
from torch import nn

from retia.optimizers import FusedStep, fusable

pytestmark = pytest.mark.timeout(60)

Maker = Callable[[list[nn.Parameter]], torch.optim.Optimizer]
MAKERS: list[Maker] = [
    lambda p: torch.optim.Adam(p, lr=3e-3),
    lambda p: torch.optim.Adam(p, lr=3e-3),  # the same settings: one foreach group with the first
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.Adam(p, lr=1e-3, amsgrad=True, weight_decay=0.01),
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    lambda p: torch.optim.SGD(p, lr=0.05),
    lambda p: torch.optim.Adam(  # two param groups of their own
        [{"params": p[:2], "lr": 1e-2}, {"params": p[2:], "lr": 1e-3, "betas": (0.8, 0.99)}]
    ),
]


def train(models: Sequence[nn.Module], fused: bool, steps: int = 40) -> list[torch.optim.Optimizer]:
    torch.manual_seed(0)
    x, y = torch.randn(8, 16), torch.randint(0, 4, (8,))
    optimizers = [make(list(m.parameters())) for make, m in zip(MAKERS, models)]
    together = FusedStep()
    for step in range(steps):
        stepped = []
        for i, (model, optimizer) in enumerate(zip(models, optimizers)):
            optimizer.zero_grad()
            if (step + i) % 5 == 0:
                continue  # this one skips the batch: no gradient, no step
            nn.functional.cross_entropy(model(x), y).backward()
            stepped.append(optimizer)
        if fused:
            together.step(stepped)
        else:
            for optimizer in stepped:
                optimizer.step()
        if step % 7 == 6:  # as a scheduler would: the first two's learning rates part ways
            for optimizer in optimizers[:2]:
                optimizer.param_groups[0]["lr"] *= 0.5
    return optimizers


def test_a_fused_step_equals_each_optimizers_own_step_exactly() -> None:
    torch.manual_seed(1)
    models = [nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)) for _ in MAKERS]
    alone, together = copy.deepcopy(models), copy.deepcopy(models)
    alone_opts, together_opts = train(alone, fused=False), train(together, fused=True)
    for a, b in zip(alone, together):
        for p, q in zip(a.parameters(), b.parameters()):
            assert torch.equal(p, q)
    for mine, shared in zip(alone_opts, together_opts):  # each keeps its own state
        assert mine.state_dict()["state"].keys() == shared.state_dict()["state"].keys()
        for sa, sb in zip(mine.state_dict()["state"].values(), shared.state_dict()["state"].values()):
            for name in sa:
                assert torch.equal(torch.as_tensor(sa[name]), torch.as_tensor(sb[name])), name


class MyAdam(torch.optim.Adam):
    pass


def test_what_cannot_step_fused_is_told() -> None:
    params = list(nn.Linear(2, 2).parameters())
    assert fusable(torch.optim.Adam(params))
    assert fusable(torch.optim.SGD(params, lr=0.1))
    assert not fusable(MyAdam(params))  # a subclass may step its own way
    assert not fusable(torch.optim.RMSprop(params))
    assert not fusable(torch.optim.Adam(params, lr=torch.tensor(0.01), capturable=False, foreach=False))
    assert not fusable(torch.optim.Adam(params, fused=True))
    hooked = torch.optim.Adam(params)
    hooked.register_step_pre_hook(lambda *_: None)
    assert not fusable(hooked)
