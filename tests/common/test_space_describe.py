"""ModelSpace.describe(): every choice with its kind, options, default, prior and requirements, as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

import retia.nn as nn
from retia.errors import ConfigError
from retia.evaluator import FunctionalEvaluator
from retia.nn.describe import describe_space
from retia.searchspace import ChoiceKind, Requirement, SpaceDescription, nni_search_space
from retia.strategy import Random


class Block(nn.Module):
    """One Repeat block: its own activation choice, and the space's shared width."""

    def __init__(self, index: int, width: int) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)
        self.act = nn.LayerChoice([nn.ReLU(), nn.Tanh()], label=f"act{index}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act(self.lin(x))
        return out


class EveryKind(nn.ModelSpace):
    """Shared labels, a choice nested in a LayerChoice candidate, choices in Repeat blocks, a
    2-of-3 InputChoice and a prior."""

    def __init__(self) -> None:
        super().__init__()
        width = nn.ValueChoice([8, 16], label="width", prior=[0.9, 0.1])
        self.stem = nn.Linear(4, width)
        self.op = nn.LayerChoice(
            {"lin": nn.Linear(width, nn.ValueChoice([3, 5], label="inner")), "id": nn.Identity()}, label="op"
        )
        self.proj = nn.Linear(5, width)  # (op's 'lin' is padded to 5 features in forward)
        self.blocks = nn.Repeat(lambda i: Block(i, width), (1, 3), label="depth")
        self.norm1 = nn.LayerChoice([nn.Identity(), nn.LayerNorm(width)], label="norm")
        self.norm2 = nn.LayerChoice([nn.Identity(), nn.LayerNorm(width)], label="norm")  # one decision
        self.skip = nn.InputChoice(3, n_chosen=2, reduction="sum", label="skip")
        self.head = nn.Linear(width, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        o = self.op(h)
        o = torch.nn.functional.pad(o, (0, 5 - o.shape[1])) if o.shape[1] < 5 else o[:, :5]
        a = self.norm1(self.proj(o))
        b = self.norm2(self.blocks(h))
        out: torch.Tensor = self.head(self.skip([h, a, b]))
        return out


# Distinct models: width 2 x op (lin: inner 2, id: 1) x depth (1: 2, 2: 4, 3: 8 act values) x norm 2 x skip 3.
DISTINCT = 2 * 3 * 14 * 2 * 3


def test_describe_gives_every_kind_with_its_requirements() -> None:
    space = EveryKind()
    desc = describe_space(space)
    assert list(desc) == ["width", "inner", "op", "depth", "act0", "act1", "act2", "norm", "skip"]
    assert dict(desc) == space.search_space()  # as a mapping: the flat form
    kinds = {c.label: c.kind for c in desc.choices}
    assert kinds == {
        "width": ChoiceKind.VALUECHOICE,
        "inner": ChoiceKind.VALUECHOICE,
        "op": ChoiceKind.LAYERCHOICE,
        "depth": ChoiceKind.REPEAT,
        "act0": ChoiceKind.LAYERCHOICE,
        "act1": ChoiceKind.LAYERCHOICE,
        "act2": ChoiceKind.LAYERCHOICE,
        "norm": ChoiceKind.LAYERCHOICE,
        "skip": ChoiceKind.INPUTCHOICE,
    }
    assert desc.choice("width").prior == (0.9, 0.1)
    assert desc.choice("width").default == 16 and desc.choice("inner").prior is None
    assert desc.choice("op").options == ("lin", "id")
    assert desc.choice("skip").options == ([0, 1], [0, 2], [1, 2])
    requires = {c.label: c.requires for c in desc.choices}
    assert requires["inner"] == (Requirement("op", ("lin",)),)
    assert requires["act0"] == ()  # block 0 is there at every depth
    assert requires["act1"] == (Requirement("depth", (2, 3)),)
    assert requires["act2"] == (Requirement("depth", (3,)),)
    for label in ("width", "op", "depth", "norm", "skip"):
        assert requires[label] == ()  # width is used outside op's candidates too
    assert desc.count() == DISTINCT


def test_describe_and_nni_format_are_json() -> None:
    space = EveryKind()
    data = space.describe()
    text = json.dumps(data)
    assert SpaceDescription.from_json(json.loads(text)) == describe_space(space)
    assert json.loads(text)["act2"] == {
        "kind": "layerchoice",
        "options": [0, 1],
        "default": 0,
        "prior": None,
        "requires": [{"label": "depth", "values": [3]}],
    }
    nni = json.loads(json.dumps(nni_search_space(describe_space(space))))
    assert nni["skip"] == {"_type": "choice", "_value": [[0, 1], [0, 2], [1, 2]]}
    assert nni["op"] == {"_type": "choice", "_value": ["lin", "id"]}
    assert list(nni) == list(space.search_space())


def test_description_reaches_and_representative() -> None:
    desc = describe_space(EveryKind())
    arch = {**EveryKind().random_sample(seed=3), "op": "id", "depth": 1, "inner": 3, "act1": 1, "act2": 1}
    assert not desc.reaches(arch, "inner") and not desc.reaches(arch, "act1") and desc.reaches(arch, "act0")
    rep = desc.representative(arch)
    assert (rep["inner"], rep["act1"], rep["act2"]) == (5, 0, 0)  # the defaults
    assert desc.representative({k: v for k, v in arch.items() if k not in ("inner", "act2")}) == rep


def test_a_bad_description_is_refused() -> None:
    good = EveryKind().describe()
    with pytest.raises(ConfigError, match="requires 'nope'"):
        SpaceDescription.from_json(
            {**good, "inner": {**good["inner"], "requires": [{"label": "nope", "values": [1]}]}}
        )
    with pytest.raises(ConfigError, match="kind 'cell'"):
        SpaceDescription.from_json({**good, "op": {**good["op"], "kind": "cell"}})
    with pytest.raises(ConfigError, match="malformed"):
        SpaceDescription.from_json({"x": {"kind": "valuechoice"}})


def test_a_shared_label_takes_the_prior_given_once() -> None:
    class Twice(nn.ModelSpace):
        def __init__(self, second: Any) -> None:
            super().__init__()
            self.a = nn.Linear(2, nn.ValueChoice([2, 4], label="w"))
            self.b = nn.Linear(2, nn.ValueChoice([2, 4], label="w", prior=second))

    assert describe_space(Twice([0.25, 0.75])).choice("w").prior == (0.25, 0.75)
    assert describe_space(Twice(None)).choice("w").prior is None


def test_experiment_attaches_the_description(tmp_path: Any) -> None:
    def fit(model: Any) -> None:
        pass

    strategy = Random(seed=0)
    exp = nn_experiment(EveryKind(), FunctionalEvaluator(fit), strategy, tmp_path)
    desc = exp.describe_space()
    assert desc.choice("act2").requires == (Requirement("depth", (3,)),)
    assert desc.choice("width").prior == (0.9, 0.1)
    assert dict(desc) == exp.search_space()


def nn_experiment(space: Any, evaluator: Any, strategy: Any, path: Any) -> Any:
    from retia import Experiment

    return Experiment(space, evaluator, strategy, path=path / "exp")
