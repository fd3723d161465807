"""retia.trace on a class gives a class (issue 18): isinstance, subclassing, pickle, copy, NNI's names."""

from __future__ import annotations

import collections
import copy
import inspect
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from fixtures_trace import NamedPoint, Pair, Point, Point3
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import retia
from retia.trace import Recipe, get_recipe, is_traceable, is_wrapped_with_trace

HERE = Path(__file__).parent


def _run_python(code: str, *args: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter that can import this folder's fixtures; its last line, parsed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=150, env=env
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_a_decorated_class_is_a_class_and_its_instances_are_of_it() -> None:
    original = cast(Any, Point).__wrapped__
    assert isinstance(Point, type) and issubclass(Point, original) and Point is not original
    assert (Point.__name__, Point.__qualname__, Point.__module__) == ("Point", "Point", "fixtures_trace")
    assert Point.__doc__ == original.__doc__
    assert inspect.signature(Point) == inspect.signature(original)  # what Lightning and jsonargparse read

    p = Point(3, -4)
    assert type(p) is Point and isinstance(p, Point) and isinstance(p, original)
    assert p.norm1() == 7
    assert is_wrapped_with_trace(Point) and not is_wrapped_with_trace(original)


def test_subclasses_of_a_traced_class_are_traced_and_record_their_own_arguments() -> None:
    p3: Any = Point3(1, 2, z=3)
    assert p3.trace_symbol is Point3 and p3.trace_kwargs == {"x": 1, "y": 2, "z": 3}  # not super()'s call
    assert type(p3) is Point3 and isinstance(p3, Point) and issubclass(Point3, Point)
    assert (p3.x, p3.y, p3.z) == (10, 20, 3)
    assert list(inspect.signature(Point3).parameters) == ["x", "y", "z"]

    named: Any = NamedPoint(5, y=6)  # inherits Point's __init__: still its own recipe
    assert named.trace_symbol is NamedPoint and named.trace_kwargs == {"x": 5, "y": 6}
    assert not hasattr(NamedPoint, "__wrapped__")  # so inspect reads NamedPoint, not Point's original
    assert list(inspect.signature(NamedPoint).parameters) == ["x", "y"]

    class Local(Point3):  # a subclass of a subclass, defined later
        def __init__(self, w: int) -> None:
            super().__init__(w, w, w)

    local: Any = Local(2)
    assert local.trace_kwargs == {"w": 2} and (local.x, local.z) == (20, 2)
    assert retia.load(retia.dump(local)).z == 2


def test_instances_pickle_by_the_module_level_name_here_and_in_a_fresh_process(tmp_path: Path) -> None:
    objs: dict[str, Any] = {"point": Point(1, y=2), "p3": Point3(1, 2, 3), "named": NamedPoint(4)}
    for obj in objs.values():
        clone = pickle.loads(pickle.dumps(obj))
        assert type(clone) is type(obj) and clone.__dict__ == obj.__dict__
        assert get_recipe(clone) == get_recipe(obj)
    data = pickle.dumps(objs["point"])
    assert b"fixtures_trace" in data and b"norm1" not in data  # the class by name, not by value

    # A class someone else defined, traced where it is used: pickled as trace(original).
    objs["loader_dataset"] = retia.trace(TensorDataset)(torch.arange(4))
    path = tmp_path / "objs.pkl"
    path.write_bytes(pickle.dumps(objs))
    code = textwrap.dedent(
        """
        import json, pickle, sys
        import retia
        from fixtures_trace import Point
        objs = pickle.loads(open(sys.argv[1], "rb").read())
        out = {k: [type(v).__name__, v.trace_symbol.__name__, sorted(v.trace_kwargs), isinstance(v, Point)]
               for k, v in objs.items()}
        from torch.utils.data import TensorDataset
        out["same_class"] = type(objs["loader_dataset"]) is retia.trace(TensorDataset)
        print(json.dumps(out))
        """
    )
    assert _run_python(code, str(path)) == {
        "point": ["Point", "Point", ["x", "y"], True],
        "p3": ["Point3", "Point3", ["x", "y", "z"], True],
        "named": ["NamedPoint", "NamedPoint", ["x"], True],
        "loader_dataset": ["TensorDataset", "TensorDataset", [], False],
        "same_class": True,
    }


_SPAWNED_WORKERS = """
import json, os, sys
import torch
from torch.utils.data import DataLoader, TensorDataset
import retia
from fixtures_trace import PidDataset

dataset = PidDataset(inner=retia.trace(TensorDataset)(torch.arange(40)))
loader = retia.trace(DataLoader)(dataset, batch_size=5, num_workers=2, multiprocessing_context="spawn")
values, pids = [], set()
for x, pid in loader:
    values.append(x)
    pids.update(int(p) for p in pid)
ok = torch.equal(torch.cat(values), torch.arange(40))
print(json.dumps({"ok": ok, "pids": sorted(pids), "me": os.getpid()}))
"""


@pytest.mark.timeout(180)
def test_dataloader_worker_processes_receive_a_traced_dataset() -> None:
    # spawn: each worker is a fresh interpreter that unpickles the dataset (fork would copy it).
    # In a child interpreter, so that multiprocessing's resource tracker ends with it.
    out = _run_python(_SPAWNED_WORKERS)
    assert out["ok"] and len(out["pids"]) == 2 and out["me"] not in out["pids"]


def test_copy_and_deepcopy_keep_the_class_and_the_recipe() -> None:
    for obj in (Point(1, 2), Point3(1, 2, 3), retia.trace(nn.Linear)(2, 3)):
        shallow, deep = copy.copy(obj), copy.deepcopy(obj)
        for clone in (shallow, deep):
            assert type(clone) is type(obj) and clone is not obj
            assert get_recipe(clone) == get_recipe(obj)
    layer = retia.trace(nn.Linear)(2, 3)
    deep = copy.deepcopy(layer)
    assert deep.weight.data_ptr() != layer.weight.data_ptr() and torch.equal(deep.weight, layer.weight)


def test_dump_and_load_round_trip_traced_classes_and_their_instances() -> None:
    point: Any
    p3: Any
    point, p3 = retia.load(retia.dump([Point(7, y=8), Point3(1, 1, 1)]))
    assert point.trace_kwargs == {"x": 7, "y": 8}
    assert type(point) is Point and (point.x, point.y) == (7, 8)
    assert type(p3) is Point3 and p3.z == 1
    assert retia.load(retia.dump(Point)) is Point
    assert retia.load(retia.dump(Point3)) is Point3
    pair: Any = retia.load(retia.dump(Pair(1, [2])))
    assert pair.trace_args == [1, [2]] and pair.trace_kwargs == {} and type(pair) is Pair


_MAIN_SCRIPT = """
import sys
import retia


@retia.trace
class Counter:
    def __init__(self, start):
        self.start = start


class Sub(Counter):
    def __init__(self, a, b):
        super().__init__(a + b)


with open(sys.argv[1], "wb") as f:
    retia.dump({"counter": Counter(40), "sub": Sub(1, 2), "cls": Counter}, f)
"""

_LOAD_MAIN = """
import json, sys
import retia
d = retia.load(fp=sys.argv[1])
c, s, cls = d["counter"], d["sub"], d["cls"]
print(json.dumps({"start": [c.start, s.start], "kwargs": [c.trace_kwargs, s.trace_kwargs],
                  "one_class": type(c) is cls and isinstance(s, cls) and retia.trace(cls) is cls}))
"""


def test_a_class_decorated_in_main_and_its_subclass_travel_to_a_fresh_process(tmp_path: Path) -> None:
    script, payload = tmp_path / "experiment.py", tmp_path / "payload.bin"
    script.write_text(_MAIN_SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(payload)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert _run_python(_LOAD_MAIN, str(payload)) == {
        "start": [40, 3],
        "kwargs": [{"start": 40}, {"a": 1, "b": 2}],
        "one_class": True,  # the subclass's pickle and the class itself name one Counter
    }


def test_tracing_a_class_defined_elsewhere_without_decorating_it() -> None:
    dataset = retia.trace(TensorDataset)(torch.arange(64.0).view(64, 1))
    loader: Any = retia.trace(DataLoader)(dataset, batch_size=32)
    assert loader.trace_symbol is DataLoader and loader.trace_kwargs == {"dataset": dataset, "batch_size": 32}
    assert isinstance(loader, DataLoader) and type(loader) is retia.trace(DataLoader)
    assert [len(x) for (x,) in loader] == [32, 32]
    assert type(DataLoader(dataset)) is DataLoader and not retia.is_traced(DataLoader(dataset))  # untouched
    loaded = retia.load(retia.dump(loader))
    assert type(loaded) is retia.trace(DataLoader) and type(loaded.dataset) is retia.trace(TensorDataset)


def test_nni_names_trace_symbol_args_kwargs_copy_and_get() -> None:
    p: Any = Point(3, y=4)
    assert (
        p.trace_symbol is cast(Any, Point).__wrapped__
        and p.trace_args == []
        and p.trace_kwargs == {"x": 3, "y": 4}
    )
    assert p.get() is p

    recipe = p.trace_copy()  # NNI: the arguments without the object
    assert isinstance(recipe, Recipe) and is_traceable(recipe) and not hasattr(recipe, "norm1")
    recipe.trace_kwargs["x"] = -10
    built: Any = recipe.get()
    assert built.norm1() == 14 and built.trace_kwargs == {"x": -10, "y": 4} and type(built) is Point
    assert p.trace_kwargs == {"x": 3, "y": 4}  # the original is untouched
    again = cast(Any, built).trace_copy()
    again.trace_kwargs["y"] = 0
    assert again.get().norm1() == 10 and built.norm1() == 14
    assert type(retia.load(retia.dump(again))) is Point  # a trace_copy ships as a recipe and loads built

    # Names the class already has stay the class's own: a traced dict's get is dict.get.
    d: Any = retia.trace(dict)(a=1)
    assert d.get("a") == 1 and d.trace_kwargs == {"a": 1}


def test_kw_only_false_keeps_positional_arguments_and_travels_with_the_class() -> None:
    pair: Any = Pair(1, 2)
    assert pair.trace_args == [1, 2] and pair.trace_kwargs == {}
    linear: Any = retia.trace(nn.Linear, kw_only=False)(3, 4, bias=False)
    assert linear.trace_args == [3, 4] and linear.trace_kwargs == {"bias": False}
    named: Any = retia.trace(nn.Linear)(3, 4)
    assert named.trace_args == [] and named.trace_kwargs == {"in_features": 3, "out_features": 4}

    @retia.trace(kw_only=False)
    def scaled(a: int, b: int = 1) -> Any:
        return retia.trace(Point)(a * b)

    result: Any = scaled(2, 3)
    recipe = get_recipe(result)
    assert recipe is not None and recipe.args == (2, 3) and recipe.kwargs == {}
    assert result.trace_symbol is cast(Any, scaled).__wrapped__ and result.x == 6

    loaded = retia.load(retia.dump(retia.trace(nn.Linear, kw_only=False)))
    assert loaded is retia.trace(nn.Linear, kw_only=False) and loaded is not retia.trace(nn.Linear)
    assert loaded(1, 2).trace_args == [1, 2]


def test_generator_arguments_are_recorded_and_passed_as_lists() -> None:
    model = nn.Linear(2, 1)
    optimizer: Any = retia.trace(torch.optim.SGD)(model.parameters(), lr=0.1)
    params = optimizer.trace_kwargs["params"]
    assert isinstance(params, list) and len(params) == 2 and params[0] is model.weight
    assert len(optimizer.param_groups[0]["params"]) == 2  # the optimizer got them too


_AB = collections.namedtuple("_AB", "a b")


def test_classes_with_only_new_or_no_constructor_behave_as_without_trace() -> None:
    point: Any = retia.trace(_AB)(1, b=2)
    assert tuple(point) == (1, 2) and point.trace_kwargs == {"a": 1, "b": 2}
    assert pickle.loads(pickle.dumps(point)) == point

    class Empty:
        pass

    assert retia.is_traced(retia.trace(Empty)())
    with pytest.raises(TypeError, match=r"Empty\(\) takes no arguments"):
        retia.trace(Empty)(1)  # type: ignore[call-arg]  # on purpose
