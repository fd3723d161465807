"""NNI's space API: simplify() (3.0), ModelParameterChoice (2.x), basic_unit, the 2.x serializer helpers."""

from __future__ import annotations

import warnings
from typing import Any, cast

import pytest
import torch

import retia
import retia.nn as nn
import retia.nni.retiarii.nn.pytorch as rnn
from retia.arch import ChoiceSpec
from retia.nn import InputChoice, LayerChoice, ModelParameterChoice, ValueChoice, fixed_arch
from retia.nni.mutable import Categorical
from retia.nni.nas.nn.pytorch import ModelSpace as Nni3ModelSpace
from retia.nni.retiarii import basic_unit, model_wrapper, serialize, serialize_cls
from retia.nni.retiarii.serializer import is_basic_unit, is_model_wrapped
from retia.nni.retiarii.serializer import model_wrapper as serializer_model_wrapper

pytestmark = pytest.mark.timeout(60)


# ---------------------------------------------------------------------------- simplify


class SharedSpace(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        width = ValueChoice([8, 16], label="width")
        self.a = nn.Linear(4, width)
        self.b = nn.Linear(width, ValueChoice([8, 16], label="width"))  # the same decision again
        self.op = LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="op")
        self.skip = InputChoice(3, 2, label="skip")
        self.depth = nn.Repeat(lambda i: nn.Identity(), (1, 3), label="depth")


class Nni3Space(Nni3ModelSpace, label_prefix="net"):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, ValueChoice([8, 16], label="width"))
        self.b = nn.Linear(4, ValueChoice([8, 16], label="width"))
        self.op = LayerChoice([nn.ReLU(), nn.Tanh()])


def test_simplify_lists_every_decision_once() -> None:
    simple = SharedSpace().simplify()
    assert list(simple) == ["width", "op", "skip", "depth"]
    assert all(isinstance(spec, ChoiceSpec) and spec.label == label for label, spec in simple.items())
    assert simple["width"].options == (8, 16) and simple["width"].default == 16
    assert simple["op"].kind == "layerchoice" and simple["op"].options == ("relu", "tanh")
    assert simple["skip"].options == ([0, 1], [0, 2], [1, 2])
    assert simple["depth"].options == (1, 2, 3)


def test_nni3_simplify_gives_categoricals_that_sample_the_space() -> None:
    space = Nni3Space()
    simple = space.simplify()
    assert simple == {
        "net/width": Categorical([8, 16], label="net/width"),
        "net/1": Categorical([0, 1], label="net/1"),
    }
    width = simple["net/width"]
    assert len(width) == 2 and width.default() == 16 and list(width.grid()) == [8, 16]
    assert width.as_legacy_dict() == {"_type": "choice", "_value": [8, 16]}
    assert width.freeze({"net/width": 8}) == 8 and not width.contains({"net/width": 9})
    with pytest.raises(retia.InvalidArchitectureError, match="not one of"):
        width.freeze({"net/width": 9})
    import random

    sample = {label: m.random(random.Random(0)) for label, m in simple.items()}
    model: Any = space.freeze(sample)
    assert model.a.out_features == model.b.out_features == sample["net/width"]


class PriorSpace(Nni3ModelSpace, label_prefix="net"):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, ValueChoice([8, 16, 32], label="width", prior=[0.0, 0.25, 0.75]))


def test_nni3_simplify_carries_the_prior_as_weights_and_samples_by_it() -> None:
    import random

    width = PriorSpace().simplify()["net/width"]
    assert width.weights == [0.0, 0.25, 0.75]
    rng = random.Random(0)
    draws = [width.random(rng) for _ in range(400)]
    assert 8 not in draws and 200 < draws.count(32) < 400
    with pytest.raises(ValueError, match="non-negative numbers"):
        Categorical([1, 2], label="x", weights=[1.0])


# ---------------------------------------------------------------------------- ModelParameterChoice


class DepthSpace(nn.ModelSpace):
    """A ModelParameterChoice used where only a plain value works: range(), if, torch.zeros."""

    def __init__(self) -> None:
        super().__init__()
        depth = ModelParameterChoice([1, 2, 3], label="depth")
        self.depth = depth
        self.blocks = torch.nn.ModuleList(nn.Linear(4, 4) for _ in range(depth))
        self.has_head = ModelParameterChoice([False, True], default=ModelParameterChoice.LAST)
        self.head = nn.Linear(4, 2) if self.has_head else None
        self.token = torch.nn.Parameter(torch.zeros(1, ModelParameterChoice([4, 8], label="dim")))


@model_wrapper
class Nni2Space(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.width = ModelParameterChoice([3, 5])  # NNI 2.x's label: model_1
        self.op = rnn.LayerChoice([torch.nn.ReLU(), torch.nn.Tanh()])  # model_2


def test_model_parameter_choice_is_a_plain_value_in_the_supernet() -> None:
    space = DepthSpace()
    assert type(space.depth) is int and space.depth == 1  # FIRST by default
    assert len(space.blocks) == 1 and space.head is not None and space.token.shape == (1, 4)
    assert space.search_space() == {"depth": [1, 2, 3], "valuechoice_1": [False, True], "dim": [4, 8]}
    assert cast(Any, Nni2Space()).search_space() == {"model_1": [3, 5], "model_2": [0, 1]}
    assert rnn.ModelParameterChoice is ModelParameterChoice


def test_model_parameter_choice_under_fixed_arch_builds_the_chosen_model() -> None:
    arch = {"depth": 3, "valuechoice_1": False, "dim": 8}
    model: Any = DepthSpace().freeze(arch)
    assert model.depth == 3 and len(model.blocks) == 3 and model.head is None
    assert model.token.shape == (1, 8)
    with fixed_arch({"model_1": 5, "model_2": 1}):
        frozen: Any = Nni2Space()
    assert frozen.width == 5 and isinstance(frozen.op, torch.nn.Tanh)
    with pytest.raises(retia.InvalidArchitectureError):
        DepthSpace().freeze({**arch, "depth": 4})
    with pytest.raises(NotImplementedError, match="depth"):
        DepthSpace().activate({**arch, "depth": 2, "valuechoice_1": True, "dim": 4})


def test_model_parameter_choice_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="not one of the candidates"):
        ModelParameterChoice([1, 2], default=3, label="x")
    with pytest.raises(ValueError, match="picked"):
        ModelParameterChoice([1, 2], default=lambda c: 7, label="x")
    with pytest.raises(ValueError, match="prior"):
        ModelParameterChoice([1, 2], prior=[1.0], label="x")
    assert ModelParameterChoice([1, 2], default=2, label="x") == 2
    with pytest.raises(ValueError, match="explicit label"):
        ModelParameterChoice([1, 2])


# ---------------------------------------------------------------------------- basic_unit


@basic_unit
class MyConv(torch.nn.Module):
    """A primitive tuned by its arguments, with a Python loop NNI's graph parser could not follow."""

    def __init__(self, channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.convs = torch.nn.ModuleList(
            torch.nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2) for _ in range(2)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = conv(x)
        return x


class ConvSpace(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.conv = MyConv(2, kernel_size=ValueChoice([1, 3, 5], label="k"))


def test_basic_unit_keeps_the_class_working_and_marks_it() -> None:
    unit = MyConv(2, kernel_size=3)
    assert isinstance(unit, MyConv) and MyConv.__name__ == "MyConv" and is_basic_unit(unit)
    assert unit.trace_kwargs == {"channels": 2, "kernel_size": 3}
    assert unit(torch.ones(1, 2, 4, 4)).shape == (1, 2, 4, 4)
    assert basic_unit(MyConv) is MyConv and rnn.basic_unit is basic_unit
    assert not is_basic_unit(torch.nn.Conv2d) and is_model_wrapped(ConvSpace) and not is_model_wrapped(unit)
    assert serializer_model_wrapper is model_wrapper
    with pytest.raises(TypeError, match="nn.Module class"):
        basic_unit(int)  # type: ignore[type-var]
    with pytest.raises(TypeError, match="model space"):
        basic_unit(ConvSpace)
    with pytest.raises(TypeError, match="already wrapped with nni.trace"):
        basic_unit(retia.nni.trace(torch.nn.Linear))


def test_basic_unit_in_a_space_freezes_and_ships() -> None:
    space: Any = ConvSpace()
    assert space.conv.convs[0].weight.shape[-2:] == (5, 5)  # the supernet's largest option
    model = space.freeze({"k": 1})
    assert isinstance(model.conv, MyConv) and model.conv.convs[0].kernel_size == (1, 1)
    shipped = retia.load(retia.dump(model))
    assert isinstance(shipped.conv, MyConv) and shipped.conv.convs[0].kernel_size == (1, 1)
    unit = retia.load(retia.dump(MyConv(2, kernel_size=5)))
    assert isinstance(unit, MyConv) and is_basic_unit(unit) and unit.convs[1].kernel_size == (5, 5)


def test_serialize_helpers_trace_and_warn() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lin = serialize(torch.nn.Linear, 3, 4)
        cls = serialize_cls(torch.nn.Linear)
    assert [w.category for w in caught] == [DeprecationWarning, DeprecationWarning]
    assert lin.trace_kwargs == {"in_features": 3, "out_features": 4} and lin.out_features == 4
    assert cls(2, 2).trace_kwargs == {"in_features": 2, "out_features": 2}
