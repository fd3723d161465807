"""ValueChoice arithmetic (issue 19): expressions of choices, evaluated per architecture, built at
their largest value in the supernet, and refused where Python needs one plain value."""

from __future__ import annotations

import copy
import pickle
from typing import Any, cast

import pytest
import torch

import retia.nn as nn
from retia.errors import ChoiceNotFixedError, InvalidArchitectureError
from retia.nn import ModelSpace, ValueChoice, fixed_arch
from retia.nn.expressions import ChoiceExpression

pytestmark = pytest.mark.timeout(60)


class ExprSpace(ModelSpace):
    """Real layers taking choices and expressions of them as arguments."""

    def __init__(self) -> None:
        super().__init__()
        width = nn.ValueChoice([8, 16], label="width")
        ratio = nn.ValueChoice([1, 2, 4], label="ratio")
        kernel = nn.ValueChoice([3, 5], label="kernel")
        self.conv = nn.Conv2d(1, width, kernel_size=kernel, padding=ValueChoice.to_int((kernel - 1) / 2))
        self.expand = nn.Conv2d(width, width * ratio, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.drop = nn.Dropout(p=nn.ValueChoice([0.0, 0.25], label="p"))
        self.fc = nn.Linear(width * ratio, ValueChoice.max(width, 12) * 2)
        self.head = nn.Linear(ValueChoice.max(width, 12) * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.expand(self.conv(x))).flatten(1)
        out: torch.Tensor = self.head(self.fc(self.drop(x)))
        return out


def _choices() -> tuple[Any, Any]:
    return ValueChoice([16, 32], label="a"), ValueChoice([1, 4], label="b")


def test_arithmetic_gives_an_expression_evaluated_per_architecture() -> None:
    """Before: ``a * 2 + b`` was the plain int 68, computed from the maxima."""
    a, b = _choices()
    expr = a * 2 + b
    assert isinstance(expr, ChoiceExpression) and isinstance(expr, int)
    assert not isinstance(expr, ValueChoice)  # no decision of its own
    assert [c.label for c in expr.inner_choices()] == ["a", "b"]
    assert expr.evaluate({"a": 16, "b": 1}) == 33 and expr.freeze({"a": 32, "b": 4, "other": 0}) == 68
    assert type(expr.evaluate({"a": 16, "b": 1})) is int
    assert expr.all_options() == [33, 36, 65, 68]
    # The supernet value is the largest the expression takes, not the arithmetic on the maxima.
    assert (a - b).supernet_value == 31 and (a - b).evaluate({"a": 16, "b": 4}) == 12
    assert (a - a).supernet_value == 0  # one label is one decision
    assert (100 // a).supernet_value == 6 and (a / 8).supernet_value == 4.0
    assert type((a / 8).supernet_value) is float and isinstance(a / 8, float)
    # Comparisons are expressions too, with bool values.
    assert (a > 16).evaluate({"a": 32}) is True and (16 >= a).evaluate({"a": 32}) is False
    assert (a == 16).evaluate({"a": 16}) is True and (-a).evaluate({"a": 16}) == -16
    with pytest.raises(InvalidArchitectureError, match="missing label 'b'"):
        expr.evaluate({"a": 16})
    with pytest.raises(InvalidArchitectureError, match="not one of"):
        expr.evaluate({"a": 17, "b": 1})
    with pytest.raises(ZeroDivisionError):  # every combination is evaluated when it is built
        _ = 8 // (b - 1)


def test_value_choice_functions_on_choices_and_on_plain_values() -> None:
    a, b = _choices()
    biggest = ValueChoice.max(a, b * 10)
    assert biggest.supernet_value == 40 and biggest.evaluate({"a": 32, "b": 1}) == 32
    assert ValueChoice.min([a, b * 10]).evaluate({"a": 16, "b": 4}) == 16
    picked = ValueChoice.condition(a > 16, b, 100)
    assert picked.evaluate({"a": 32, "b": 4}) == 4 and picked.evaluate({"a": 16, "b": 4}) == 100
    assert picked.supernet_value == 100
    half = ValueChoice.to_int(a / 3)
    assert half.evaluate({"a": 32}) == 10 and half.supernet_value == 10
    ratio = ValueChoice.to_float(a)
    assert ratio.evaluate({"a": 16}) == 16.0
    assert isinstance(half, int) and isinstance(ratio, float)
    # Where no argument is a choice (as under fixed_arch) they compute the plain value.
    assert ValueChoice.max(3, 7) == 7 and ValueChoice.min([3, 7]) == 3
    assert ValueChoice.condition(False, 1, 2) == 2 and ValueChoice.to_int(2.7) == 2
    with fixed_arch({"a": 32, "b": 4}):
        a, b = _choices()
        assert type(a) is int and a * 2 + b == 68 and ValueChoice.condition(a > 16, b, 100) == 4


@pytest.mark.parametrize(
    ("use", "what"),
    [
        (lambda a: bool(a), "bool()"),
        (lambda a: 1 if a else 0, "bool()"),
        (lambda a: max(a, 3), "ValueChoice.max"),
        (lambda a: 1 if a > 16 else 0, "ValueChoice.condition"),
        (lambda a: a in [16, 32], "bool()"),
        (lambda a: int(a), "ValueChoice.to_int"),
        (lambda a: float(a * 2), "ValueChoice.to_float"),
        (lambda a: not (a + 1), "bool()"),
    ],
)
def test_choice_used_as_one_plain_value_raises(use: Any, what: str) -> None:
    """Before: ``if a:``, ``max(a, 3)``, ``int(a)`` silently used the supernet value 32."""
    a, _ = _choices()
    with pytest.raises(ChoiceNotFixedError, match="no single value until an architecture is chosen") as info:
        use(a)
    assert what in str(info.value) and isinstance(info.value, TypeError)


def test_real_layers_build_at_the_largest_value_and_freeze_to_the_chosen_one() -> None:
    space = ExprSpace()
    # Only the leaves are decisions: the expressions are not listed.
    assert space.search_space() == {
        "width": [8, 16],
        "ratio": [1, 2, 4],
        "kernel": [3, 5],
        "p": [0.0, 0.25],
    }
    assert space.conv.weight.shape == (16, 1, 5, 5)
    assert [pad.supernet_value for pad in cast(Any, space.conv.padding)] == [
        2,
        2,
    ]  # a holder: compare its value
    assert space.expand.weight.shape == (64, 16, 1, 1)
    assert space.fc.weight.shape == (32, 64) and space.head.weight.shape == (10, 32)
    assert cast(Any, space.drop.p).supernet_value == 0.25
    assert space(torch.randn(2, 1, 8, 8)).shape == (2, 10)

    arch = {"width": 8, "ratio": 2, "kernel": 3, "p": 0.0}
    frozen: Any = space.freeze(arch)
    assert frozen.conv.weight.shape == (8, 1, 3, 3) and frozen.conv.padding == (1, 1)
    assert frozen.expand.weight.shape == (16, 8, 1, 1)
    assert frozen.fc.weight.shape == (24, 16) and frozen.head.weight.shape == (10, 24)
    assert type(frozen.fc.out_features) is int and type(frozen.expand.out_channels) is int
    assert type(frozen.drop.p) is float and frozen.drop.p == 0.0
    assert frozen(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with fixed_arch(arch):
        assert ExprSpace().state_dict().keys() == frozen.state_dict().keys()


def test_torch_reads_holders_as_plain_values_in_layers() -> None:
    """torch's own constructors compare and combine their arguments (``in_channels % groups``,
    ``p < 0``); there a choice is the plain supernet value it holds, while user code gets expressions."""
    a, b = _choices()
    grouped = torch.nn.Conv2d(a, a * b, 3, groups=2)
    assert grouped.weight.shape == (128, 16, 3, 3)
    with pytest.raises(ValueError, match="in_channels must be divisible by groups"):
        torch.nn.Conv2d(a, 8, 3, groups=3)  # torch's check runs on 32 and reports it
    with pytest.raises(ValueError, match="dropout probability"):
        torch.nn.Dropout(p=ValueChoice([0.5, 1.5], label="bad"))
    layer = torch.nn.Linear(64, a * 2)
    x = torch.randn(3, 64)
    assert layer(x).shape == (3, 64) and (x * a).shape == x[:, : a * 2].shape == (3, 64)
    assert "out_features=64" in repr(layer)


def test_candidates_keyword_prior_and_pickling() -> None:
    choice: Any = ValueChoice(candidates=[2, 4, 8], label="c", prior=[1, 1, 2])
    assert choice.options == [2, 4, 8] and choice.prior == [0.25, 0.25, 0.5]
    assert cast(Any, ValueChoice([2, 4], label="d")).prior is None
    for clone in (pickle.loads(pickle.dumps(choice)), copy.deepcopy(choice)):
        assert clone.prior == [0.25, 0.25, 0.5] and clone.label == "c" and clone.supernet_value == 8
    expr = ValueChoice.condition(choice > 2, choice * 3, 1)
    clone = pickle.loads(pickle.dumps(expr))
    assert clone.supernet_value == 24 and clone.evaluate({"c": 4}) == 12 and clone.evaluate({"c": 2}) == 1
    with pytest.raises(ValueError, match="one per option"):
        ValueChoice([1, 2], label="e", prior=[1.0])
    with pytest.raises(ValueError, match="non-negative"):
        ValueChoice([1, 2], label="f", prior=[1.0, -1.0])
    with pytest.raises(TypeError, match="plain values"):
        ValueChoice([choice, 3], label="g")
