"""Labels of model spaces: shared labels, choices an architecture does not reach, NNI's arch dicts."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import retia.nn as nn
import retia.nni.retiarii.nn.pytorch as nni_nn
from retia import InvalidArchitectureError
from retia.nn import fixed_arch
from retia.nni.nas.nn.pytorch import ModelSpace as Nni3ModelSpace
from retia.nni.retiarii import model_wrapper
from retia.strategy import TPE, GridSearch, Random, RegularizedEvolution

pytestmark = pytest.mark.timeout(60)


class SharedWidth(nn.ModelSpace):
    """One width for two layers: two ValueChoices with one label."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, nn.ValueChoice([8, 16, 32], label="width"))
        self.act = nn.LayerChoice([nn.ReLU(), nn.Tanh()], label="act")
        self.fc2 = nn.Linear(nn.ValueChoice([8, 16, 32], label="width"), 2)
        self.act2 = nn.LayerChoice([nn.ReLU(), nn.Tanh()], label="act")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.act2(self.fc2(self.act(self.fc1(x))))
        return out


class NestedValue(nn.ModelSpace):
    """A ValueChoice and a LayerChoice inside the candidate of a LayerChoice."""

    def __init__(self) -> None:
        super().__init__()
        self.op = nn.LayerChoice(
            {
                "deep": nn.Sequential(
                    nn.Linear(4, nn.ValueChoice([3, 5], label="hidden")),
                    nn.LayerChoice([nn.ReLU(), nn.Tanh()], label="deep_act"),
                    nn.LazyLinear(4),
                ),
                "skip": nn.Identity(),
            },
            label="op",
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.op(x)
        return out


# ---------------------------------------------------------------------------- shared labels


def test_two_choices_with_one_label_are_one_decision() -> None:
    space = SharedWidth()
    assert space.search_space() == {"width": [8, 16, 32], "act": [0, 1]}
    assert space.size() == 6 and len(list(space.grid())) == 6
    model: Any = space.freeze({"width": 16, "act": 1})
    assert model.fc1.out_features == model.fc2.in_features == 16
    assert isinstance(model.act, torch.nn.Tanh) and isinstance(model.act2, torch.nn.Tanh)
    with fixed_arch({"width": 8, "act": 0}):
        fixed = SharedWidth()
    assert fixed.fc1.out_features == fixed.fc2.in_features == 8
    assert fixed(torch.randn(3, 4)).shape == (3, 2)
    space.activate({"width": 32, "act": 1})
    assert space.act.active == space.act2.active == 1


def test_strategies_sample_a_shared_label_once() -> None:
    space = SharedWidth()
    grid = GridSearch()
    grid.attach(space.search_space())
    seen: list[dict[str, Any]] = []
    while (arch := grid.ask(len(seen))) is not None:
        seen.append(arch)
    assert len(seen) == 6 and all(set(a) == {"width", "act"} for a in seen)
    for strategy in (Random(seed=1), RegularizedEvolution(seed=1), TPE(seed=1)):
        strategy.attach(space.search_space())
        sampled = strategy.ask(0)
        assert sampled is not None and set(sampled) == {"width", "act"}
        space.freeze(sampled)


@pytest.mark.parametrize(
    ("first", "second", "message"),
    [
        (lambda: nn.ValueChoice([8, 16], label="x"), lambda: nn.ValueChoice([8, 32], label="x"), "options"),
        (lambda: nn.ValueChoice([8, 16], label="x"), lambda: nn.ValueChoice([16, 8], label="x"), "order"),
        (
            lambda: nn.ValueChoice([0, 1], label="x"),
            lambda: nn.LayerChoice([nn.ReLU(), nn.Tanh()], label="x"),
            "kind",
        ),
        (
            lambda: nn.InputChoice(2, label="x"),
            lambda: nn.LayerChoice([nn.ReLU(), nn.Tanh()], label="x"),
            "kind",
        ),
        (
            lambda: nn.ValueChoice([1, 0], label="x"),
            lambda: nn.ValueChoice([True, False], label="x"),
            "options",
        ),
    ],
)
def test_one_label_for_different_choices_raises_and_says_why(first: Any, second: Any, message: str) -> None:
    class Clash(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = first(), second()

    with pytest.raises(ValueError, match=r"choice label 'x' is used by two different choices.*same kind"):
        Clash()


def test_nested_space_reusing_its_parents_label_shares_it() -> None:
    class Inner(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(nn.ValueChoice([8, 16], label="w"), 2)

    class Outer(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, nn.ValueChoice([8, 16], label="w"))
            self.inner = Inner()

    outer = Outer()
    assert outer.search_space() == {"w": [8, 16]} and outer.inner.search_space() == {"w": [8, 16]}
    model: Any = outer.freeze({"w": 8})
    assert model.fc.out_features == model.inner.fc.in_features == 8


# ---------------------------------------------------------------------------- unreached choices


def test_a_choice_in_an_unchosen_branch_is_not_demanded() -> None:
    space = NestedValue()
    assert space.search_space() == {"hidden": [3, 5], "deep_act": [0, 1], "op": ["deep", "skip"]}
    skip = space.freeze({"op": "skip"})
    assert isinstance(skip, NestedValue) and isinstance(skip.op, torch.nn.Identity)
    assert list(skip.parameters()) == []
    assert skip.frozen_arch == {"op": "skip", "hidden": 5, "deep_act": 0}  # defaults, unused
    with fixed_arch({"op": "skip"}):
        fixed = NestedValue()
    assert isinstance(fixed.op, torch.nn.Identity) and fixed.frozen_arch == {"op": "skip"}
    # with the unreached labels given, it builds the same
    same = space.freeze({"op": "skip", "hidden": 3, "deep_act": 1})
    assert isinstance(same.op, torch.nn.Identity)
    with fixed_arch({"op": "skip", "hidden": 3, "deep_act": 1}):
        assert isinstance(NestedValue().op, torch.nn.Identity)


def test_a_reached_nested_choice_is_still_demanded() -> None:
    space = NestedValue()
    with pytest.raises(InvalidArchitectureError, match=r"missing label 'hidden'.*missing label 'deep_act'"):
        space.freeze({"op": "deep"})
    with pytest.raises(
        InvalidArchitectureError, match=r"missing label 'hidden' \(valuechoice; options: \[3, 5\]\)"
    ):
        with fixed_arch({"op": "deep", "deep_act": 0}):
            NestedValue()
    with pytest.raises(InvalidArchitectureError, match="missing label 'op'"):
        space.freeze({"hidden": 3, "deep_act": 0})
    deep: Any = space.freeze({"op": "deep", "hidden": 3, "deep_act": 1})
    assert deep.op[0].out_features == 3 and isinstance(deep.op[1], torch.nn.Tanh)


def test_a_value_used_up_while_building_counts_as_reached() -> None:
    class Depth(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            depth = nn.ValueChoice([1, 2], label="depth")
            self.body = nn.LayerChoice(
                [nn.Sequential(*[nn.ReLU() for _ in range(depth)]), nn.Identity()],
                label="body",  # (Repeat is the way)
            )

    # "depth" is kept nowhere in the supernet: it cannot be shown unreached, so it is demanded
    with pytest.raises(InvalidArchitectureError, match="missing label 'depth'"):
        Depth().freeze({"body": 1})


# ---------------------------------------------------------------------------- NNI's architecture dicts


def test_nni2_string_indices_of_a_list_layer_choice_load() -> None:
    space = SharedWidth()
    model: Any = space.freeze({"width": 8, "act": "1"})
    assert isinstance(model.act, torch.nn.Tanh) and model.frozen_arch == {"width": 8, "act": 1}
    with fixed_arch({"width": 8, "act": "1"}):
        assert isinstance(SharedWidth().act2, torch.nn.Tanh)
    with pytest.raises(InvalidArchitectureError, match="has value '2'"):
        space.freeze({"width": 8, "act": "2"})
    with pytest.raises(InvalidArchitectureError, match="has value '16'"):
        space.freeze({"width": "16", "act": 0})  # only a LayerChoice's index is read from a string


def test_nni_list_form_of_a_single_input_choice_loads() -> None:
    class Pick(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.one = nn.InputChoice(3, label="one")
            self.two = nn.InputChoice(3, n_chosen=2, label="two")

    space = Pick()
    model: Any = space.freeze({"one": [2], "two": [0, 2]})  # NNI writes n_chosen=1 as a list
    assert model.one.chosen == 2 and model.frozen_arch == {"one": 2, "two": [0, 2]}
    with pytest.raises(InvalidArchitectureError, match=r"'one' has value \[3\]"):
        space.freeze({"one": [3], "two": [0, 2]})
    with pytest.raises(InvalidArchitectureError, match=r"'two' has value \[0\]"):
        space.freeze({"one": 0, "two": [0]})  # a 2-input choice needs both


@model_wrapper
class Nni2Cell(nni_nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pick = nni_nn.InputChoice(2)
        self.fc = nni_nn.Linear(4, nni_nn.ValueChoice([4, 8]))


@nn.model_wrapper
class RetiaWrapped(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.pick = nn.InputChoice(2)
        self.fc = nn.Linear(4, nn.ValueChoice([4, 8]))


@model_wrapper
class Nni2Net(nni_nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.op = nni_nn.LayerChoice([nni_nn.ReLU(), nni_nn.Tanh()])
        self.cell = Nni2Cell()
        self.width = nni_nn.Linear(4, nni_nn.ValueChoice([2, 3]))
        self.named = nni_nn.LayerChoice([nni_nn.ReLU(), nni_nn.Tanh()], label="named")


def test_nni2_model_wrapper_spaces_have_nni2_auto_labels() -> None:
    # NNI 2.x's ModelNamespace: model_N in order; a nested @model_wrapper takes the next N and
    # numbers its own choices under it (model_2_1, model_2_2)
    space: Any = Nni2Net()  # (mypy does not apply class decorators)
    assert space.search_space() == {
        "model_1": [0, 1],
        "model_2_1": [0, 1],
        "model_2_2": [4, 8],
        "model_3": [2, 3],
        "named": [0, 1],
    }
    exported = {"model_1": "1", "model_2_1": 1, "model_2_2": 4, "model_3": 2, "named": "0"}  # as NNI 2.x
    model: Any = space.freeze(exported)
    assert isinstance(model.op, torch.nn.Tanh) and model.cell.fc.out_features == 4
    with fixed_arch(exported):
        built: Any = Nni2Net()
    assert built.width.out_features == 2
    # retia.nn's own model_wrapper keeps retia's labels
    retia_space: Any = RetiaWrapped()
    assert list(retia_space.search_space()) == ["inputchoice_1", "valuechoice_2"]


class Nni3Sub(Nni3ModelSpace, label_prefix="sub"):
    def __init__(self) -> None:
        super().__init__()
        self.op = nni_nn.LayerChoice([nni_nn.ReLU(), nni_nn.Tanh()])


class Nni3Net(Nni3ModelSpace, label_prefix="model"):
    def __init__(self) -> None:
        super().__init__()
        self.op = nni_nn.LayerChoice([nni_nn.ReLU(), nni_nn.Tanh()])
        self.fc = nni_nn.Linear(4, nni_nn.ValueChoice([4, 8], label="width"))
        self.sub = Nni3Sub()
        self.pick = nni_nn.InputChoice(2)


class Nni3Strict(Nni3ModelSpace):
    def __init__(self, labelled: bool) -> None:
        super().__init__()
        self.op = nni_nn.LayerChoice([nni_nn.ReLU(), nni_nn.Tanh()], label="op" if labelled else None)


def test_nni3_model_spaces_have_nni3_labels() -> None:
    # NNI 3.0's label_scope: label_prefix/N for unlabelled choices, label_prefix/label for the
    # others, a nested prefixed space under its parent's scope with its own numbering
    space = Nni3Net()
    assert space.search_space() == {
        "model/1": [0, 1],
        "model/width": [4, 8],
        "model/sub/1": [0, 1],
        "model/2": [0, 1],
    }
    sample = {"model/1": 1, "model/width": 8, "model/sub/1": 0, "model/2": 1}  # as NNI 3.0
    model: Any = space.freeze(sample)
    assert isinstance(model.op, torch.nn.Tanh) and model.fc.out_features == 8
    assert isinstance(model.sub.op, torch.nn.ReLU)
    # without a label_prefix NNI 3.0 wants every label given, and adds no prefix
    assert Nni3Strict(labelled=True).search_space() == {"op": [0, 1]}
    with pytest.raises(ValueError, match="needs an explicit label"):
        Nni3Strict(labelled=False)

    # the prefix is the class's own, as in NNI: a subclass without one has none
    class Derived(Nni3Net):
        pass

    with pytest.raises(ValueError, match="needs an explicit label"):
        Derived()
