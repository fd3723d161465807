"""NNI 3.0's label_scope: labels of choices made inside it, nesting, and NNI samples loading."""

from __future__ import annotations

from typing import Any, cast

import pytest
import torch

import retia.nn as nn
from retia.nn import LayerChoice, ValueChoice, fixed_arch, label_scope
from retia.nni.mutable import label_scope as nni_label_scope
from retia.nni.nas.nn.pytorch import ModelSpace as Nni3ModelSpace
from retia.nni.nas.nn.pytorch import label_scope as nas_label_scope

pytestmark = pytest.mark.timeout(30)


class Block(nn.Module):
    """A block whose choices are labelled by the label_scope it is built in."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.op = LayerChoice([nn.ReLU(), nn.Tanh()])  # <scope>/1
        self.linear = nn.Linear(width, width)


class ScopedNet(Nni3ModelSpace, label_prefix="model"):
    def __init__(self) -> None:
        super().__init__()
        self.width = ValueChoice([8, 16], label="width")  # model/width
        with label_scope("stem"):
            self.stem = nn.Linear(4, ValueChoice([8, 16], label="width"))  # model/stem/width
            with label_scope():  # model/stem/1
                self.inner = Block(8)  # model/stem/1/1
        with label_scope("cell"):
            self.cell = Block(8)  # model/cell/1
        self.last = ValueChoice([1, 2])  # model/1


class StrictNet(Nni3ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        with label_scope("x"):
            self.a = nn.Linear(4, ValueChoice([2, 3]))
            with label_scope("y"):
                self.b = nn.Linear(4, ValueChoice([5, 6], label="width"))


class RetiaNet(nn.ModelSpace):
    def __init__(self) -> None:
        super().__init__()
        self.plain = ValueChoice([1, 2])
        with label_scope("blk"):
            self.block = Block(4)


def test_labels_in_nested_label_scopes() -> None:
    assert ScopedNet().search_space() == {
        "model/width": [8, 16],
        "model/stem/width": [8, 16],
        "model/stem/1/1": [0, 1],
        "model/cell/1": [0, 1],
        "model/1": [1, 2],
    }
    assert StrictNet().search_space() == {"x/1": [2, 3], "x/y/width": [5, 6]}
    # a retia space names its own choices its way; those in a label_scope are the scope's
    assert RetiaNet().search_space() == {"valuechoice_1": [1, 2], "blk/1": [0, 1]}


def test_label_scope_outside_a_space_and_nni_paths() -> None:
    assert nni_label_scope is label_scope and nas_label_scope is label_scope
    with label_scope("a") as outer:
        assert outer.name == "a" and label_scope.current() is outer
        first = ValueChoice([1, 2])
        named = ValueChoice([1, 2], label="w")
        with label_scope() as numbered:
            inner = ValueChoice([3, 4])
            assert numbered.path == ["a", "2"]
    assert label_scope.current() is None
    assert tuple(cast(Any, c).label for c in (first, named, inner)) == ("a/1", "a/w", "a/2/1")
    with pytest.raises(ValueError, match="explicit label"):
        ValueChoice([1, 2])  # outside every scope and space a label is needed, as before


def test_an_nni3_space_built_in_a_scope_nests_under_it() -> None:
    with label_scope("outer"):
        assert set(ScopedNet().search_space()) == {
            "outer/model/width",
            "outer/model/stem/width",
            "outer/model/stem/1/1",
            "outer/model/cell/1",
            "outer/model/1",
        }
        assert set(StrictNet().search_space()) == {"outer/x/1", "outer/x/y/width"}


def test_entering_a_scope_again_restarts_its_count() -> None:
    # NNI: each entry resets the scope's counter, so the same labels (one shared decision)
    with label_scope("s"):
        a = ValueChoice([1, 2])
    with label_scope("s"):
        b = ValueChoice([1, 2])
    assert cast(Any, a).label == cast(Any, b).label == "s/1"


def test_scope_names_are_checked() -> None:
    with pytest.raises(ValueError, match="without '/'"):
        label_scope("a/b")
    with pytest.raises(ValueError, match="give it a name"):
        with label_scope():
            pass
    with pytest.raises(ValueError, match="not entered"):
        _ = label_scope("z").name

    class StrictUnnamed(Nni3ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            with label_scope():
                self.a = ValueChoice([1, 2], label="a")

    with pytest.raises(ValueError, match="give it a name"):
        StrictUnnamed()


def test_an_nni3_sample_loads_into_a_scoped_space() -> None:
    sample = {
        "model/width": 16,
        "model/stem/width": 8,
        "model/stem/1/1": 1,
        "model/cell/1": 0,
        "model/1": 2,
    }
    space = ScopedNet()
    model: Any = space.freeze(sample)
    assert model.width == 16 and model.last == 2
    assert model.stem.out_features == 8
    assert isinstance(model.inner.op, torch.nn.Tanh) and isinstance(model.cell.op, torch.nn.ReLU)
    with fixed_arch(sample):
        again: Any = ScopedNet()
    assert again.stem.out_features == 8 and isinstance(again.inner.op, torch.nn.Tanh)
    with pytest.raises(Exception, match="model/stem/width"):
        space.freeze({k: v for k, v in sample.items() if k != "model/stem/width"})
