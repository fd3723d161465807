"""Model space: search space, labels, grid, fixed_arch, invalid architectures, serialization."""

from __future__ import annotations

import copy
import functools
import itertools
import json
import pickle
import subprocess
import sys
import textwrap
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import payload_inspect
import pytest
import torch
from spaces import DigitsConvSpace, DigitsMLPSpace, TinySpace

import retia
import retia.nn as nn
from retia import InvalidArchitectureError
from retia.nn import ChosenInputs, InputChoice, LayerChoice, ValueChoice, fixed_arch, validate_arch

MLP_ARCH = {"width": 32, "block0": "tanh", "block1": "bottleneck", "skip": 1}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _choice_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if isinstance(m, (LayerChoice, InputChoice))]


# ---------------------------------------------------------------------------- search space


def test_search_space_lists_every_label_in_construction_order() -> None:
    space = DigitsMLPSpace()
    assert space.search_space() == {
        "width": [16, 32, 64],
        "block0": ["relu", "tanh", "bottleneck"],
        "block1": ["relu", "tanh", "bottleneck"],
        "skip": [0, 1],
    }
    assert space.size() == 3 * 3 * 3 * 2
    json.dumps(space.search_space())  # plain JSON


def test_supernet_builds_value_choice_at_its_largest_option() -> None:
    space = DigitsMLPSpace()
    width = space.stem[0].out_features
    assert isinstance(width, int) and isinstance(width, ValueChoice)
    assert width.supernet_value == 64 and width.label == "width" and width.options == [16, 32, 64]
    assert str(width) == "64" and cast(Any, space.head.in_features).supernet_value == 64
    assert space.stem[0].weight.shape == (64, 64)
    assert len(_choice_modules(space)) == 3
    assert space.frozen_arch is None
    assert space(torch.randn(5, 64)).shape == (5, 10)


def test_auto_labels_are_deterministic_per_space_build() -> None:
    first, second = TinySpace(), TinySpace()
    expected = {"valuechoice_1": [2, 3], "layerchoice_2": [0, 1, 2], "inputchoice_3": [0, 1]}
    assert first.search_space() == second.search_space() == expected


def test_nested_choices_and_input_choice_combinations() -> None:
    space = DigitsConvSpace()
    ss = space.search_space()
    assert list(ss) == ["channels", "sep0_act", "op0", "sep1_act", "op1", "skip"]
    assert ss["op0"] == ["conv3x3", "conv5x5", "sepconv"]
    assert ss["sep0_act"] == [0, 1]
    assert ss["skip"] == [[0, 1], [0, 2], [1, 2]]
    assert space.size() == 2 * 2 * 3 * 2 * 3 * 3


def test_nested_model_spaces_share_one_label_namespace() -> None:
    class Outer(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.inner = TinySpace()
            self.last = nn.LayerChoice([nn.ReLU(), nn.Tanh()])

    outer = Outer()
    assert list(outer.search_space()) == ["valuechoice_1", "layerchoice_2", "inputchoice_3", "layerchoice_4"]
    assert list(outer.inner.search_space()) == ["valuechoice_1", "layerchoice_2", "inputchoice_3"]


P = ParamSpec("P")
R = TypeVar("R")


def _passthrough(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        return fn(*args, **kwargs)

    return wrapper


def test_choices_from_helper_methods_and_decorated_inits_register() -> None:
    class Helped(nn.ModelSpace):
        @_passthrough
        def __init__(self) -> None:
            super().__init__()
            self.act = self._make()
            self.fc = nn.Linear(2, nn.ValueChoice([1, 2]))

        def _make(self) -> torch.nn.Module:
            return nn.LayerChoice([nn.ReLU(), nn.Tanh()])

    space = Helped()
    assert space.search_space() == {"layerchoice_1": [0, 1], "valuechoice_2": [1, 2]}
    with pytest.raises(ValueError, match="outside a ModelSpace"):
        space._make()  # the space is built: a later choice belongs to no space


def test_one_label_for_different_choices_raises() -> None:
    class Dup(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.LayerChoice([nn.ReLU(), nn.Tanh()], label="act")
            self.b = nn.LayerChoice([nn.ReLU(), nn.Tanh(), nn.GELU()], label="act")

    with pytest.raises(ValueError, match="choice label 'act' is used by two different choices"):
        Dup()


def test_choice_outside_a_space_needs_a_label() -> None:
    with pytest.raises(ValueError, match="explicit label"):
        LayerChoice([nn.ReLU(), nn.Tanh()])
    with fixed_arch({"act": 1}):
        assert isinstance(LayerChoice([nn.ReLU(), nn.Tanh()], label="act"), torch.nn.Tanh)


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: LayerChoice([], label="x"), ValueError),
        (lambda: LayerChoice([nn.ReLU(), 3], label="x"), TypeError),  # type: ignore[list-item]  # on purpose
        (lambda: LayerChoice({"a.b": nn.ReLU()}, label="x"), ValueError),
        (lambda: InputChoice(2, n_chosen=3, label="x"), ValueError),
        (lambda: InputChoice(2, reduction="max", label="x"), ValueError),
        (lambda: ValueChoice([], label="x"), ValueError),
        (lambda: ValueChoice([1, 1], label="x"), ValueError),
        (lambda: ValueChoice(5, label="x"), TypeError),  # type: ignore[arg-type]  # on purpose: not a list
    ],
)
def test_bad_choice_definitions_raise(make: Callable[[], object], error: type[Exception]) -> None:
    with pytest.raises(error):
        make()


# ---------------------------------------------------------------------------- sampling, grid


def test_grid_enumerates_exactly_the_product_of_options() -> None:
    space = TinySpace()
    ss = space.search_space()
    grid = list(space.grid())
    expected = [dict(zip(ss, combo)) for combo in itertools.product(*ss.values())]
    assert grid == expected
    assert len(grid) == space.size() == 2 * 3 * 2
    assert list(space.grid()) == grid  # stable
    for arch in grid:
        validate_arch(ss, arch)
        space.freeze(arch)


def test_random_sample_is_valid_and_reproducible() -> None:
    space = DigitsConvSpace()
    assert space.random_sample(seed=7) == space.random_sample(seed=7)
    samples = [space.random_sample(seed=s) for s in range(20)]
    assert len({json.dumps(a, sort_keys=True) for a in samples}) > 10
    for arch in samples:
        validate_arch(space.search_space(), arch)
    validate_arch(space.search_space(), space.random_sample())


# ---------------------------------------------------------------------------- fixed_arch


def test_fixed_arch_builds_exactly_the_chosen_model() -> None:
    with fixed_arch(MLP_ARCH):
        model = DigitsMLPSpace()
    assert isinstance(model, DigitsMLPSpace)
    assert _choice_modules(model) == []
    first = cast(torch.nn.Linear, model.stem[0])
    assert type(first.out_features) is int and first.out_features == 32
    assert isinstance(cast(torch.nn.Sequential, model.blocks[0])[1], torch.nn.Tanh)
    assert len(cast(torch.nn.Sequential, model.blocks[1])) == 3  # bottleneck
    assert isinstance(model.skip, ChosenInputs) and model.skip.chosen == 1
    assert model.frozen_arch == MLP_ARCH
    assert model.search_space() == DigitsMLPSpace().search_space()
    assert model(torch.randn(3, 64)).shape == (3, 10)
    supernet_params = sum(p.numel() for p in DigitsMLPSpace().parameters())
    assert sum(p.numel() for p in model.parameters()) < supernet_params


def test_fixed_arch_from_dict_json_file_and_freeze_are_identical(tmp_path: Path) -> None:
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(MLP_ARCH))
    torch.manual_seed(0)
    with fixed_arch(MLP_ARCH):
        from_dict = DigitsMLPSpace()
    torch.manual_seed(0)
    with fixed_arch(path) as loaded:
        from_file = DigitsMLPSpace()
    assert loaded == MLP_ARCH
    torch.manual_seed(0)
    with fixed_arch(str(path)):
        from_str = DigitsMLPSpace()
    torch.manual_seed(0)
    frozen = DigitsMLPSpace().freeze(path)
    reference = _state(from_dict)
    for other in (from_file, from_str):
        assert repr(other) == repr(from_dict)
        assert _state(other).keys() == reference.keys()
        assert all(torch.equal(v, reference[k]) for k, v in _state(other).items())
    assert repr(frozen) == repr(from_dict) and _state(frozen).keys() == reference.keys()


def test_input_choice_accepts_tuples_as_after_json() -> None:
    arch = {"channels": 4, "sep0_act": 1, "op0": "sepconv", "sep1_act": 0, "op1": "conv3x3", "skip": (0, 2)}
    model = DigitsConvSpace().freeze(arch)
    skip = cast(ChosenInputs, model.skip)
    assert skip.chosen == [0, 2] and skip.reduction == "sum"
    assert isinstance(cast(Any, model.blocks)[0][2], torch.nn.Tanh)
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


BAD_ARCHS = [
    (
        {k: v for k, v in MLP_ARCH.items() if k != "block1"},
        r"missing label 'block1'.*'relu', 'tanh', 'bottleneck'",
    ),
    ({**MLP_ARCH, "block9": "relu"}, r"unknown label.*'block9'"),
    ({**MLP_ARCH, "width": 48}, r"'width' has value 48, not one of \[16, 32, 64\]"),
    ({**MLP_ARCH, "skip": True}, r"'skip' has value True, not one of \[0, 1\]"),
    ({**MLP_ARCH, "block0": 0}, r"'block0' has value 0, not one of \['relu', 'tanh', 'bottleneck'\]"),
]


@pytest.mark.parametrize(("arch", "message"), BAD_ARCHS)
def test_invalid_architectures_raise_with_the_valid_options(arch: dict[str, Any], message: str) -> None:
    space = DigitsMLPSpace()
    with pytest.raises(InvalidArchitectureError, match=message):
        validate_arch(space.search_space(), arch)
    with pytest.raises(InvalidArchitectureError, match=message):
        space.freeze(arch)
    with pytest.raises(InvalidArchitectureError, match=message):
        space.activate(arch)
    with pytest.raises(InvalidArchitectureError, match=message):
        with fixed_arch(arch):
            DigitsMLPSpace()


def test_validate_arch_reports_every_problem_at_once() -> None:
    with pytest.raises(InvalidArchitectureError) as info:
        validate_arch({"a": [1, 2], "b": ["x"], "c": [[0, 1]]}, {"a": 3, "z": 1, "c": [0, 1]})
    text = str(info.value)
    assert "'a' has value 3" in text and "missing label 'b'" in text and "unknown label(s) ['z']" in text
    assert "'c' has value" not in text


def test_fixed_arch_rejects_non_dicts_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(InvalidArchitectureError, match="must be a dict"):
        with fixed_arch([1, 2]):  # type: ignore[arg-type]  # on purpose: not a dict
            pass
    with pytest.raises(InvalidArchitectureError, match="cannot read"):
        with fixed_arch(tmp_path / "nope.json"):
            pass
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InvalidArchitectureError, match="cannot read"):
        with fixed_arch(bad):
            pass


def test_fixed_arch_contexts_nest_and_restore() -> None:
    with fixed_arch({"act": 0}):
        with fixed_arch({"act": 1}):
            assert isinstance(LayerChoice([nn.ReLU(), nn.Tanh()], label="act"), torch.nn.Tanh)
        assert isinstance(LayerChoice([nn.ReLU(), nn.Tanh()], label="act"), torch.nn.ReLU)
    assert isinstance(LayerChoice([nn.ReLU(), nn.Tanh()], label="act"), LayerChoice)
    assert retia.fixed_arch is fixed_arch


def test_value_choice_under_fixed_arch_is_the_plain_value() -> None:
    with fixed_arch({"w": 3, "name": "b", "flag": False}):
        assert type(ValueChoice([1, 3], label="w")) is int
        assert ValueChoice(["a", "b"], label="name") == "b"
        assert ValueChoice([True, False], label="flag") is False


# ---------------------------------------------------------------------------- supernet activation


def test_activate_selects_a_single_path() -> None:
    space = DigitsConvSpace()
    arch = {"channels": 8, "sep0_act": 1, "op0": "conv5x5", "sep1_act": 0, "op1": "sepconv", "skip": [1, 2]}
    space.activate(arch)
    assert space.blocks[0].active == "conv5x5" and space.blocks[1].active == "sepconv"
    assert cast(Any, space.blocks)[0]["sepconv"][2].active == 1
    assert space.skip.active == [1, 2]
    assert space(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_activating_a_value_choice_kept_outside_a_mixed_layer_is_refused() -> None:
    class KeepsWidth(nn.ModelSpace):
        def __init__(self) -> None:
            super().__init__()
            self.width: Any = nn.ValueChoice([4, 8], label="width")  # read by forward, not by a layer
            self.fc = nn.Linear(3, self.width)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.fc(x)[:, : int(self.width.supernet_value)]
            return out

    space = KeepsWidth()
    space.activate({"width": 8})  # the supernet's own value runs
    with pytest.raises(NotImplementedError, match=r"'width'=4 .* kept in KeepsWidth\.width"):
        space.activate({"width": 4})
    with pytest.raises(RuntimeError, match="built under fixed_arch"):
        cast(nn.ModelSpace, space.freeze({"width": 4})).activate({"width": 4})


# ---------------------------------------------------------------------------- serialization


def test_space_and_frozen_model_round_trip_through_dump() -> None:
    space = DigitsMLPSpace(n_blocks=3, widths=(8, 16))
    loaded = retia.load(retia.dump(space))
    assert type(loaded).__name__ == "DigitsMLPSpace"
    assert loaded.search_space() == space.search_space() and "block2" in loaded.search_space()
    arch = space.random_sample(seed=1)
    frozen = space.freeze(arch)
    again = retia.load(retia.dump(frozen))
    assert again.frozen_arch == arch and repr(again) == repr(frozen)
    assert _choice_modules(again) == []


def test_supernet_deepcopies_and_pickles() -> None:
    space = DigitsConvSpace()
    for clone in (copy.deepcopy(space), pickle.loads(pickle.dumps(space))):
        assert clone.search_space() == space.search_space()
        width = cast(torch.nn.Conv2d, clone.stem[0]).out_channels
        assert isinstance(width, ValueChoice) and width.label == "channels" and width.supernet_value == 8
        clone.activate({**clone.random_sample(seed=3), "channels": 8})
        assert clone(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_space_from_an_importable_module_travels_by_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    module = types.ModuleType("retia.nn._space_for_tests")
    exec(  # a module of an installed package, as a user's pip-installed spaces would be
        textwrap.dedent(
            """
            import retia.nn as nn

            class RefSpace(nn.ModelSpace):
                def __init__(self, width):
                    super().__init__()
                    self.fc = nn.Linear(4, nn.ValueChoice([width, 2 * width], label="w"))
            """
        ),
        module.__dict__,
    )
    monkeypatch.setitem(sys.modules, module.__name__, module)
    space = module.RefSpace(width=3)
    data = retia.dump(space)
    assert payload_inspect.pickles(data) == []
    assert payload_inspect.refs(data) == ["retia.nn._space_for_tests:RefSpace"]
    loaded = retia.load(data)
    assert type(loaded) is module.RefSpace and loaded.search_space() == {"w": [3, 6]}
    frozen = retia.dump(space.freeze({"w": 3}))
    assert payload_inspect.pickles(frozen) == []
    assert retia.load(frozen).fc.out_features == 3


MAIN_SCRIPT = """
import sys
import retia, retia.nn as nn

class MainSpace(nn.ModelSpace):
    def __init__(self, hidden):
        super().__init__()
        self.fc = nn.Linear(4, nn.ValueChoice([hidden, 2 * hidden], label="h"))
        self.act = nn.LayerChoice({"relu": nn.ReLU(), "tanh": nn.Tanh()}, label="act")

    def forward(self, x):
        return self.act(self.fc(x))

space = MainSpace(3)
arch = {"h": 3, "act": "tanh"}
sys.stdout.buffer.write(retia.dump([space, arch, space.freeze(arch)]))
"""


def test_space_defined_in_main_travels_by_value(tmp_path: Path) -> None:
    script = tmp_path / "user_script.py"
    script.write_text(textwrap.dedent(MAIN_SCRIPT))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, timeout=120, cwd=tmp_path, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    space, arch, frozen = retia.load(proc.stdout)
    assert type(space).__name__ == "MainSpace"
    assert space.search_space() == {"h": [3, 6], "act": ["relu", "tanh"]}
    rebuilt = space.freeze(arch)
    assert repr(rebuilt) == repr(frozen)
    assert rebuilt.fc.out_features == 3 and isinstance(rebuilt.act, torch.nn.Tanh)
    assert rebuilt(torch.randn(2, 4)).shape == (2, 3)


# ---------------------------------------------------------------------------- public names


def test_public_names() -> None:
    assert {
        "ModelSpace",
        "LayerChoice",
        "InputChoice",
        "ValueChoice",
        "fixed_arch",
        "original_state_dict_hooks",
        "validate_arch",
        "Linear",
        "Conv2d",
        "Module",
    } <= set(nn.__all__)
    assert all(hasattr(nn, name) for name in nn.__all__)
    assert nn.Linear is torch.nn.Linear and nn.Hardtanh is torch.nn.Hardtanh
    assert retia.original_state_dict_hooks is nn.original_state_dict_hooks
    with pytest.raises(AttributeError):
        nn.NoSuchLayer  # noqa: B018
