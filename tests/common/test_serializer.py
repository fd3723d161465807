"""retia.dump / retia.load: recipes, references, plain msgpack, and pickles only as a last resort."""

from __future__ import annotations

import importlib
import json
import logging
import math
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path
from typing import Any, cast

import msgpack
import numpy as np
import payload_inspect as pi
import pytest
import torch
from fixtures_data import Box, TensorFileDataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

import retia
from retia.datasets import DigitsDataset
from retia.errors import PayloadTooLarge, RetiaError, SerializationError
from retia.serializer import DumpOptions
from retia.trace import get_recipe

MiB = 1 << 20


# --- plain data --------------------------------------------------------------------------

_ints = st.integers(min_value=-(1 << 63), max_value=(1 << 64) - 1)  # msgpack's range; bigger ones pickle
_scalars = (
    st.none()
    | st.booleans()
    | _ints
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
_keys = st.text(max_size=4) | _ints | st.tuples(_ints, st.text(max_size=2))
_plain = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=4), inner, max_size=4)
        | st.dictionaries(_keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(_plain)
def test_plain_data_round_trips_exactly_and_is_never_pickled(value) -> None:
    data = retia.dump(value)
    assert pi.PICKLE not in pi.codes(data)
    loaded = retia.load(data)
    assert loaded == value
    assert _shape(loaded) == _shape(value)  # tuples stay tuples, lists stay lists


def _shape(value):
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [_shape(v) for v in value])
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), _shape(v)) for k, v in value.items()))
    return type(value).__name__


def test_plain_data_is_plain_msgpack() -> None:
    value = {"lr": 0.01, "layers": [64, 32], "name": "mlp", "blob": b"\x00\x01", "none": None}
    data = retia.dump(value)
    assert msgpack.unpackb(data) == ["retia-dump/1", value]


def test_ints_beyond_msgpack_range_and_sets_still_round_trip() -> None:
    value = {"huge": 1 << 70, "negative": -(1 << 64), "tags": frozenset({"a", "b"})}
    assert retia.load(retia.dump(value)) == value


# --- references ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "ref"),
    [
        (nn.Linear, "torch.nn.modules.linear:Linear"),
        (json.dumps, "json:dumps"),
        (math.sqrt, "math:sqrt"),
        (DigitsDataset, "retia.datasets:DigitsDataset"),
        (DataLoader, "torch.utils.data.dataloader:DataLoader"),
    ],
)
def test_installed_classes_and_functions_are_references_not_pickles(obj, ref) -> None:
    data = retia.dump(obj)
    assert pi.codes(data) == [pi.REF]
    assert pi.refs(data) == [ref]
    assert len(data) < 64 + len(ref)
    assert retia.load(data) is obj


# --- recipes -------------------------------------------------------------------------------


def test_nested_traced_objects_round_trip_as_recipes() -> None:
    loader = retia.trace(DataLoader)(retia.trace(DigitsDataset)(split="val", seed=1), batch_size=50)
    data = retia.dump(loader)

    assert pi.pickles(data) == []  # everything is a recipe or a reference
    assert pi.codes(data).count(pi.RECIPE) == 2
    assert len(data) < 512

    loaded = retia.load(data)
    assert type(loaded) is retia.trace(DataLoader) and loaded is not loader
    assert loaded.batch_size == 50
    assert type(loaded.dataset) is retia.trace(DigitsDataset) and loaded.dataset is not loader.dataset
    recipe = get_recipe(loaded)
    assert recipe is not None and recipe.kwargs["batch_size"] == 50
    assert get_recipe(loaded.dataset) == get_recipe(loader.dataset)
    for (x1, y1), (x2, y2) in zip(loaded, loader, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_traced_objects_inside_containers_and_traced_arguments() -> None:
    value = {
        "layers": [retia.trace(nn.Linear)(2, 3), retia.trace(nn.ReLU)()],
        "box": retia.trace(Box)(value=retia.trace(Box)(value=(1, "two"), label="inner")),
        "seq": retia.trace(nn.Sequential)(retia.trace(nn.Linear)(3, 1), nn.Sigmoid()),
    }
    loaded = retia.load(retia.dump(value, name="model"))

    linear, relu = loaded["layers"]
    assert type(linear) is retia.trace(nn.Linear) and (linear.in_features, linear.out_features) == (2, 3)
    assert type(relu) is retia.trace(nn.ReLU) and get_recipe(relu) is not None
    inner = loaded["box"].value
    assert type(inner) is retia.trace(Box) and inner.value == (1, "two") and inner.label == "inner"
    recipe = get_recipe(loaded["box"])
    assert recipe is not None and recipe.kwargs["value"] is inner  # the recipe points at the rebuilt argument
    seq = loaded["seq"]
    assert [type(m) for m in seq] == [retia.trace(nn.Linear), nn.Sigmoid]
    assert seq(torch.zeros(4, 3)).shape == (4, 1)


def test_trace_class_round_trips_as_the_same_trace_class() -> None:
    data = retia.dump(retia.trace(nn.Linear))
    assert pi.codes(data) == [pi.TRACED, pi.REF]
    loaded = retia.load(data)
    assert loaded is retia.trace(nn.Linear) and cast(Any, loaded).__wrapped__ is nn.Linear
    recipe = get_recipe(loaded(1, 2))
    assert recipe is not None and recipe.kwargs == {"in_features": 1, "out_features": 2}


def test_dataloader_over_a_50mb_file_dataset_dumps_small_and_rebuilds_identically(tmp_path: Path) -> None:
    path = tmp_path / "features.pt"
    torch.save(torch.randn(12_800, 1024), path)  # 52 MB on disk
    assert path.stat().st_size > 50_000_000
    loader = retia.trace(DataLoader)(retia.trace(TensorFileDataset)(str(path)), batch_size=1000)

    data = retia.dump(loader)
    assert len(data) < 4096, len(data)

    loaded = retia.load(data)
    assert type(loaded.dataset) is retia.trace(TensorFileDataset) and loaded.dataset is not loader.dataset
    original = cast(TensorFileDataset, loader.dataset)
    assert loaded.dataset.data.data_ptr() != original.data.data_ptr()  # re-read, not shared
    batches = 0
    for (x1, y1), (x2, y2) in zip(loaded, loader, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        batches += 1
    assert batches == 13


def test_rebuild_failure_on_load_is_a_serialization_error(tmp_path: Path) -> None:
    path = tmp_path / "gone.pt"
    torch.save(torch.zeros(3, 2), path)
    data = retia.dump(retia.trace(TensorFileDataset)(str(path)))
    path.unlink()
    with pytest.raises(SerializationError, match=r"TensorFileDataset.*FileNotFoundError"):
        retia.load(data)


# --- pickles: the last resort ----------------------------------------------------------------


def test_lambda_and_closure_are_pickled_and_work_after_load() -> None:
    offset = 5
    data = retia.dump({"f": lambda x: x + offset})
    assert pi.codes(data) == [pi.PICKLE]
    assert retia.load(data)["f"](2) == 7


def test_large_pickled_argument_logs_its_path_and_size(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="retia.serializer")
    big = np.zeros(2 * MiB, dtype=np.uint8)
    holder = retia.trace(Box)(value={"weights": big}, label="x")
    data = retia.dump({"dataset": holder}, name="fit.kwargs")
    (record,) = [r for r in caplog.records if r.name == "retia.serializer"]
    assert record.levelno == logging.WARNING
    assert "fit.kwargs.dataset.value.weights" in record.getMessage()
    assert "2.0 MiB" in record.getMessage()
    assert np.array_equal(retia.load(data)["dataset"].value["weights"], big)


def test_small_pickles_do_not_warn_and_the_warning_threshold_is_configurable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="retia.serializer")
    small = np.arange(1000)
    retia.dump({"a": small})
    assert not caplog.records
    retia.dump({"a": small}, name="cfg", options=DumpOptions(warn_bytes=100))
    assert len(caplog.records) == 1 and "cfg.a" in caplog.records[0].getMessage()


def test_pickled_argument_over_the_cap_raises_payload_too_large() -> None:
    big = np.ones(2 * MiB, dtype=np.uint8)
    with pytest.raises(PayloadTooLarge, match=r"cfg\.data\[1\] \(a ndarray\).*over the 1 MiB cap") as info:
        retia.dump({"data": [0, big]}, name="cfg", options=DumpOptions(max_pickle_bytes=1 * MiB))
    assert info.value.path == "cfg.data[1]"
    assert info.value.size > 2 * MiB
    assert isinstance(info.value, SerializationError) and isinstance(info.value, RetiaError)


def test_default_cap_is_64_mib() -> None:
    assert DumpOptions().max_pickle_bytes == 64 * MiB and DumpOptions().warn_bytes == 1 * MiB
    huge = np.zeros(65 * MiB, dtype=np.uint8)
    with pytest.raises(PayloadTooLarge, match=r"root\.huge.*64 MiB cap"):
        retia.dump({"huge": huge}, name="root")


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: sys._getframe(), id="frame"),  # a generator argument is recorded as a list
        pytest.param(lambda: threading.Lock(), id="lock"),
        pytest.param(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), id="socket"),
    ],
)
def test_unserializable_arguments_raise_serialization_error_with_path(make) -> None:
    bad = make()
    try:
        with pytest.raises(SerializationError, match=r"fit\.kwargs\.loader\.dataset\.value") as info:
            loader = {"dataset": retia.trace(Box)(value=bad)}
            retia.dump({"loader": loader}, name="fit.kwargs")
        assert info.value.path == "fit.kwargs.loader.dataset.value"
        assert type(info.value) is SerializationError
        with pytest.raises(SerializationError, match=r"args\[2\]"):
            retia.dump([1, 2, bad], name="args")
    finally:
        if isinstance(bad, socket.socket):
            bad.close()


# --- NNI's dump(obj, fp, pickle_size_limit=...) and load(string, fp=...) ------------------------


def test_dump_writes_to_fp_and_load_reads_from_fp(tmp_path: Path) -> None:
    value = {"box": retia.trace(Box)(value=(1, 2), label="x"), "n": 3}
    path = tmp_path / "payload.bin"
    with path.open("wb") as f:
        returned = retia.dump(value, f, name="cfg")
    assert path.read_bytes() == returned  # bytes, where NNI's dump returned a str
    with path.open("rb") as f:
        loaded = retia.load(fp=f)
    assert loaded["n"] == 3 and loaded["box"].value == (1, 2) and loaded["box"].trace_kwargs["label"] == "x"
    assert retia.load(fp=path)["n"] == 3 and retia.load(returned)["n"] == 3  # a path works as fp too
    retia.dump([1], fp=tmp_path / "list.bin")
    assert retia.load(fp=str(tmp_path / "list.bin")) == [1]


def test_dump_and_load_refuse_text_files_and_ambiguous_calls(tmp_path: Path) -> None:
    with (tmp_path / "t.txt").open("w") as text, pytest.raises(TypeError, match=r"binary mode \('wb'\)"):
        retia.dump([1], text)  # type: ignore[arg-type]  # on purpose: a text file
    (tmp_path / "b.bin").write_bytes(retia.dump([1]))
    with (tmp_path / "b.bin").open("r", encoding="latin-1") as text, pytest.raises(TypeError, match="'rb'"):
        retia.load(fp=text)  # type: ignore[arg-type]  # on purpose: a text file
    with (tmp_path / "b.bin").open("rb") as f, pytest.raises(TypeError, match=r"retia.load\(fp=file\)"):
        retia.load(f)  # type: ignore[arg-type]  # on purpose: NNI users pass the file first
    with pytest.raises(TypeError, match="not both"):
        retia.load()
    with pytest.raises(TypeError, match="NNI's dump returned a str"):
        retia.load('{"a": 1}')  # type: ignore[arg-type]  # on purpose: an NNI payload


def test_pickle_size_limit_refuses_larger_pickles_naming_the_path() -> None:
    offset = 5
    small = {"f": lambda x: x + offset}
    size = len(pi.pickles(retia.dump(small))[0])
    assert retia.load(retia.dump(small, pickle_size_limit=size))["f"](1) == 6
    with pytest.raises(
        PayloadTooLarge,
        match=rf"cfg\.f \(a function\) pickles to {size} bytes, over the "
        rf"{size - 1} bytes cap.*raise pickle_size_limit",
    ) as info:
        retia.dump(small, name="cfg", pickle_size_limit=size - 1)
    assert info.value.path == "cfg.f" and info.value.size == size
    # It applies when collecting blobs too (a caller's explicit limit), and -1 means none.
    with pytest.raises(PayloadTooLarge):
        retia.dump(small, name="cfg", pickle_size_limit=size - 1, blobs={})
    big = np.ones(2 * MiB, dtype=np.uint8)
    assert np.array_equal(
        retia.load(retia.dump({"a": big}, options=DumpOptions(max_pickle_bytes=1), pickle_size_limit=-1))[
            "a"
        ],
        big,
    )


# --- load errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xc1garbage", "cannot load payload"),
        (msgpack.packb(["other-format/9", 1]), "unknown payload format"),
        (
            msgpack.packb(["retia-dump/1", msgpack.ExtType(2, msgpack.packb("no_such_module_xyz:thing"))]),
            "cannot import no_such_module_xyz:thing",
        ),
        (msgpack.packb(["retia-dump/1", msgpack.ExtType(99, msgpack.packb(1))]), "unknown extension code 99"),
    ],
)
def test_bad_payloads_raise_serialization_error(data: bytes, match: str) -> None:
    with pytest.raises(SerializationError, match=match):
        retia.load(data)


# --- user code travels by value, installed code by reference ----------------------------------

_USER_MODULE = """
import json
import retia

OFFSET = 100


def helper(x):
    return x * 2 + OFFSET


class Scale:
    def __init__(self, factor):
        self.factor = factor

    def apply(self, x):
        return x * self.factor


class Model:
    def __init__(self):
        self.size = 7


def fit(model_cls, scale, encode, n):
    model = model_cls()
    for i in range(n):
        retia.report_intermediate_result(scale.apply(i))
    retia.report_final_result({"default": helper(model.size), "encoded": len(encode({"a": 1}))})
"""

_LOAD_AND_RUN = """
import importlib.util, json, sys
import retia
name = sys.argv[2]
assert importlib.util.find_spec(name) is None, "the user module must not be importable here"
payload = retia.load(open(sys.argv[1], "rb").read())
result = payload["evaluator"].evaluate(payload["model"])
print(json.dumps({"final": result.final, "intermediates": result.intermediates,
                  "module_imported": name in sys.modules, "torch": "torch" in sys.modules}))
"""


def _run_python(code: str, *args: str, cwd: Path) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def test_user_module_travels_by_value_to_a_fresh_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    name = f"user_exp_{uuid.uuid4().hex[:10]}"
    src = tmp_path / "project"
    src.mkdir()
    (src / f"{name}.py").write_text(textwrap.dedent(_USER_MODULE))
    monkeypatch.syspath_prepend(str(src))
    request.addfinalizer(lambda: sys.modules.pop(name, None))
    mod = importlib.import_module(name)

    evaluator = retia.FunctionalEvaluator(
        mod.fit, scale=retia.trace(mod.Scale)(factor=2), encode=json.dumps, n=3
    )
    data = retia.dump({"evaluator": evaluator, "model": mod.Model})

    # Installed code is named, the user's code is carried.
    refs = pi.refs(data)
    assert "json:dumps" in refs and "retia.evaluator:FunctionalEvaluator" in refs
    assert not any(ref.startswith(name) for ref in refs)
    assert len(pi.pickles(data)) == 3  # fit, Scale, Model
    assert all(name.encode() in p for p in pi.pickles(data))

    payload = tmp_path / "payload.bin"
    payload.write_bytes(data)
    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    out = _run_python(_LOAD_AND_RUN, str(payload), name, cwd=worker_dir)
    assert out == {
        "final": {"default": 114.0, "encoded": float(len(json.dumps({"a": 1})))},
        "intermediates": [0.0, 2.0, 4.0],
        "module_imported": False,
        "torch": False,
    }


_MAIN_SCRIPT = """
import sys
import retia


class Counter:
    def __init__(self, start):
        self.start = start


def fit(model_cls, counter):
    retia.report_final_result(counter.start + len(model_cls()))


evaluator = retia.FunctionalEvaluator(fit, counter=retia.trace(Counter)(start=40))
with open(sys.argv[1], "wb") as f:
    f.write(retia.dump({"evaluator": evaluator, "model": lambda: [1, 2]}))
"""


def test_classes_from_main_and_lambdas_travel_by_value(tmp_path: Path) -> None:
    script = tmp_path / "experiment.py"
    script.write_text(textwrap.dedent(_MAIN_SCRIPT))
    payload = tmp_path / "payload.bin"
    proc = subprocess.run(
        [sys.executable, str(script), str(payload)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert len(pi.pickles(payload.read_bytes())) == 3  # fit, Counter, the lambda

    worker_dir = tmp_path / "worker"
    worker_dir.mkdir()
    out = _run_python(_LOAD_AND_RUN, str(payload), "experiment", cwd=worker_dir)
    assert out["final"] == 42.0 and out["intermediates"] == []
