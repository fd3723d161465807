"""retia.trace: traced callables and instances are the real thing, plus a recipe."""

from __future__ import annotations

import copy
import pickle
from multiprocessing.reduction import ForkingPickler
from typing import Any, cast

import pytest
import torch
from fixtures_data import Box, TensorFileDataset, positional_only, star_args
from torch import nn
from torch.utils.data import DataLoader

import retia
from retia.datasets import DigitsDataset
from retia.trace import Recipe, Traced, get_recipe, is_traced


def test_trace_class_returns_a_subclass_that_builds_real_instances() -> None:
    traced = retia.trace(nn.Linear)
    assert isinstance(traced, type) and issubclass(traced, nn.Linear)
    assert traced.__name__ == "Linear" and cast(Any, traced).__wrapped__ is nn.Linear
    assert retia.trace(nn.Linear) is traced  # one trace class per class: isinstance agrees everywhere

    layer = traced(3, 5, bias=False)
    assert type(layer) is traced
    assert isinstance(layer, nn.Linear) and isinstance(layer, nn.Module)
    assert layer.in_features == 3 and layer.out_features == 5 and layer.bias is None
    out = layer(torch.ones(2, 3))  # methods work
    assert out.shape == (2, 5)
    assert sum(p.numel() for p in layer.parameters()) == 15


def test_trace_with_arguments_builds_instance_at_once() -> None:
    box = retia.trace(Box, 42, label="answer")
    assert type(box) is retia.trace(Box) and isinstance(box, Box)
    assert (box.value, box.label) == (42, "answer")
    recipe = get_recipe(box)
    assert recipe == Recipe(retia.trace(Box), (), {"value": 42, "label": "answer"})
    assert recipe is not None and recipe.trace_symbol is Box


def test_recipe_names_positional_arguments_where_the_signature_allows() -> None:
    layer = retia.trace(nn.Linear)(4, 2, False)
    recipe = get_recipe(layer)
    assert recipe is not None
    assert recipe.target is retia.trace(nn.Linear) and recipe.trace_symbol is nn.Linear
    assert recipe.args == ()
    assert recipe.kwargs == {"in_features": 4, "out_features": 2, "bias": False}


def test_recipe_keeps_positionals_that_cannot_be_named() -> None:
    result = retia.trace(positional_only)(1, 2, c=3)
    assert result == {"a": 1, "b": 2, "c": 3}
    assert get_recipe(result) is None  # a dict cannot carry an attribute; it is plain data anyway

    seq = retia.trace(nn.Sequential)(nn.ReLU(), nn.Tanh())  # *args: kept as written
    recipe = get_recipe(seq)
    assert recipe is not None and len(recipe.args) == 2 and recipe.kwargs == {}
    assert isinstance(recipe.args[1], nn.Tanh)


def test_trace_function_results_carry_recipe_when_they_can() -> None:
    traced = retia.trace(star_args)
    values = traced(1, 2, 3, scale=10)
    assert values == [10, 20, 30]
    # A list cannot carry an attribute: trace returns it untouched, and it is plain data.
    assert get_recipe(values) is None

    dataset = retia.trace(torch.utils.data.TensorDataset)(torch.arange(6))
    recipe = get_recipe(dataset)
    assert recipe is not None and recipe.trace_symbol is torch.utils.data.TensorDataset
    assert len(recipe.args) == 1 and torch.equal(recipe.args[0], torch.arange(6))


def test_traced_arguments_are_recorded_recursively_as_recipes(tmp_path) -> None:
    path = tmp_path / "x.pt"
    torch.save(torch.arange(40.0).view(20, 2), path)
    dataset = retia.trace(TensorFileDataset)(str(path), num_classes=4)
    loader = retia.trace(DataLoader)(dataset, batch_size=8)

    outer = get_recipe(loader)
    assert outer is not None and outer.trace_symbol is DataLoader
    assert outer.kwargs["dataset"] is dataset and outer.kwargs["batch_size"] == 8
    inner = get_recipe(outer.kwargs["dataset"])
    assert inner == Recipe(retia.trace(TensorFileDataset), (), {"path": str(path), "num_classes": 4})


def test_traced_dataloader_iterates_like_an_untraced_one() -> None:
    dataset = retia.trace(DigitsDataset)(split="val")
    loader = retia.trace(DataLoader)(dataset, batch_size=64)
    plain = DataLoader(DigitsDataset(split="val"), batch_size=64)
    assert isinstance(loader, DataLoader) and isinstance(loader.dataset, DigitsDataset)
    assert len(loader) == len(plain) == 6  # ceil(359 validation digits / 64)
    for (x1, y1), (x2, y2) in zip(loader, plain, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_rebuilding_from_recipe_gives_an_equal_traced_object() -> None:
    dataset = retia.trace(DigitsDataset, split="val", seed=3)
    recipe = get_recipe(dataset)
    assert recipe is not None
    rebuilt = recipe.build()
    assert rebuilt is not dataset
    assert torch.equal(rebuilt.x, dataset.x) and torch.equal(rebuilt.y, dataset.y)
    assert get_recipe(rebuilt) == get_recipe(dataset)


def test_trace_of_traced_does_not_double_wrap_and_rejects_non_callables() -> None:
    once = retia.trace(Box)
    twice = retia.trace(once)
    assert twice is once and cast(Any, twice).__wrapped__ is Box
    function = retia.trace(star_args)
    assert isinstance(function, Traced) and retia.trace(function) == function
    assert hash(retia.trace(function)) == hash(function)
    assert repr(function).startswith("trace(") and "star_args" in repr(function)
    with pytest.raises(TypeError, match="class or a function"):
        retia.trace(42)  # type: ignore[call-overload]  # on purpose: not callable


def test_is_traced_and_get_recipe_on_untraced_things() -> None:
    assert not is_traced(Box(1))
    assert get_recipe(Box(1)) is None
    assert is_traced(retia.trace(Box, 1))
    traced_cls = retia.trace(Box)
    assert get_recipe(traced_cls) is None and not is_traced(traced_cls)
    assert get_recipe(Box) is None  # a class is never a traced instance


def test_traced_instance_survives_plain_pickling_and_copy() -> None:
    dataset = retia.trace(DigitsDataset)(split="val")
    loader = retia.trace(DataLoader)(dataset, batch_size=50)

    for clone in (pickle.loads(pickle.dumps(loader)), copy.deepcopy(loader)):
        assert type(clone) is retia.trace(DataLoader) and clone.batch_size == 50
        recipe = get_recipe(clone)
        assert recipe is not None and recipe.trace_symbol is DataLoader and recipe.kwargs["batch_size"] == 50
        assert get_recipe(clone.dataset) == get_recipe(dataset)
        first = next(iter(clone))
        assert torch.equal(first[0], next(iter(loader))[0])

    traced_fn = pickle.loads(pickle.dumps(retia.trace(star_args, kw_only=False)))
    assert isinstance(traced_fn, Traced) and traced_fn == retia.trace(star_args, kw_only=False)


def test_dataloader_with_two_workers_over_a_traced_dataset() -> None:
    dataset = retia.trace(DigitsDataset)(split="val")
    # What a spawn/forkserver worker receives: the dataset pickled by multiprocessing.
    received = ForkingPickler.loads(bytes(ForkingPickler.dumps(dataset)))
    assert get_recipe(received) == get_recipe(dataset) and torch.equal(received.x, dataset.x)

    loader = retia.trace(DataLoader)(dataset, batch_size=32, num_workers=2)
    seen = torch.cat([y for _, y in loader])
    assert torch.equal(seen, dataset.y)
