"""FunctionalEvaluator and Evaluator.evaluate: the seed examples, results, output directories."""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
from collections.abc import Sized
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import onnxruntime as ort
import payload_inspect as pi
import pytest
import torch
from fixtures_data import (
    MLP,
    Box,
    fit_digits,
    fit_export_onnx,
    fit_fails,
    fit_marker,
    fit_record_env,
    fit_reports,
    make_marked_mlp,
)
from torch.utils.data import DataLoader

import retia
from retia import EvaluationResult, FunctionalEvaluator, report_final_result
from retia.blobs import Blob
from retia.datasets import DigitsDataset
from retia.errors import (
    ConfigError,
    InvalidArchitectureError,
    PayloadTooLarge,
    ReportError,
    SerializationError,
)
from retia.reporting import CollectingReporter
from retia.trace import get_recipe

MiB = 1 << 20


def _digits_loader(
    split: Literal["train", "val", "all"], shuffle: bool
) -> DataLoader[tuple[torch.Tensor, torch.Tensor]]:
    return retia.trace(DataLoader)(retia.trace(DigitsDataset)(split=split), batch_size=64, shuffle=shuffle)


# --- the seed examples --------------------------------------------------------------------------


def test_seed_a_fit_with_traced_dataloader_learns_digits() -> None:
    evaluator = FunctionalEvaluator(
        fit_digits,
        dataloader=_digits_loader("train", shuffle=True),
        val_dataloader=_digits_loader("val", shuffle=False),
        epochs=4,
    )
    # Ship it as a worker would receive it: recipes and references, no pickled data.
    data = retia.dump(evaluator)
    assert len(data) < 8192
    shipped = retia.load(data)
    assert isinstance(shipped, FunctionalEvaluator) and shipped is not evaluator

    result = shipped.evaluate(MLP)
    assert isinstance(result, EvaluationResult)
    assert isinstance(result.final, float) and result.final > 0.85, result
    intermediates = cast(list[dict[str, float]], result.intermediates)  # fit_digits reports dicts
    assert [m["epoch"] for m in intermediates] == [0.0, 1.0, 2.0, 3.0]
    assert intermediates[-1]["default"] == result.final
    assert intermediates[-1]["default"] > intermediates[0]["default"] - 0.05
    assert result.duration > 0


@pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # raised inside torch's dynamo exporter
def test_seed_b_fit_exports_onnx_into_nni_output_dir() -> None:
    model = MLP()
    result = FunctionalEvaluator(fit_export_onnx).evaluate(model)

    onnx_path = result.output_dir / "model.onnx"
    assert onnx_path.is_file() and result.final == onnx_path.stat().st_size
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x})
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(onnx_out, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("model", "marker"),
    [
        pytest.param(MLP, 1.0, id="class"),
        pytest.param(retia.trace(MLP), 1.0, id="traced-class"),
        pytest.param(make_marked_mlp, 3.0, id="callable"),
        pytest.param(lambda: make_marked_mlp(), 3.0, id="lambda"),
    ],
)
def test_seed_c_evaluate_a_class_or_a_callable(model, marker: float) -> None:
    result = FunctionalEvaluator(fit_marker).evaluate(model)
    assert cast(dict[str, float], result.final)["default"] == marker  # fit_marker reports a dict


def test_seed_c_evaluate_an_instance_uses_that_very_instance() -> None:
    model = MLP()
    model.marker = 7.0
    with torch.no_grad():
        torch.nn.init.constant_(cast(torch.nn.Linear, model.net[2]).bias, 0.25)
        expected = float(model(torch.ones(1, 64)).sum())
    result = FunctionalEvaluator(fit_marker).evaluate(model)
    final = cast(dict[str, float], result.final)  # fit_marker reports a dict
    assert final["default"] == 7.0
    assert final["output"] == pytest.approx(expected)


# --- results --------------------------------------------------------------------------------------


def test_evaluation_result_fields() -> None:
    result = FunctionalEvaluator(fit_record_env, sleep=0.05).evaluate(MLP)
    assert result.final == {"default": 0.5, "loss": 2.0}
    assert result.intermediates == [1.0, 2.0, 3.0]
    assert isinstance(result.intermediates, list)
    assert isinstance(result.duration, float) and 0.05 <= result.duration < 5
    assert isinstance(result.output_dir, Path) and result.output_dir.is_dir()


def test_reports_are_validated_inside_evaluate() -> None:
    ok = FunctionalEvaluator(fit_reports, values=[1, {"default": 2, "acc": 0.5}], finals=[3]).evaluate(MLP)
    assert ok.intermediates == [1.0, {"default": 2.0, "acc": 0.5}] and ok.final == 3.0

    with pytest.raises(ReportError, match="twice"):
        FunctionalEvaluator(fit_reports, values=[], finals=[1, 2]).evaluate(MLP)
    with pytest.raises(ReportError, match="'default'"):
        FunctionalEvaluator(fit_reports, values=[{"acc": 1.0}], finals=[]).evaluate(MLP)


def test_no_final_report_gives_none() -> None:
    result = FunctionalEvaluator(fit_reports, values=[0.1], finals=[]).evaluate(MLP)
    assert result.final is None and result.intermediates == [0.1]


def test_an_explicit_reporter_receives_the_reports() -> None:
    reporter = CollectingReporter()
    result = FunctionalEvaluator(fit_reports, values=[1, 2], finals=[3]).evaluate(MLP, reporter=reporter)
    assert reporter.intermediates == [1.0, 2.0] and reporter.final_value == 3.0
    assert result.final is None and result.intermediates == []


def test_concurrent_evaluations_in_threads_keep_their_reports_apart() -> None:
    results: dict[int, EvaluationResult] = {}

    def run(k: int) -> None:
        results[k] = FunctionalEvaluator(fit_reports, values=list(range(k, k + 50)), finals=[k]).evaluate(MLP)

    threads = [threading.Thread(target=run, args=(k,)) for k in (100, 200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in (100, 200):
        assert results[k].final == k and results[k].intermediates == [float(v) for v in range(k, k + 50)]


# --- output directory --------------------------------------------------------------------------------


def test_output_dir_env_points_to_a_fresh_run_directory(tmp_path: Path) -> None:
    assert os.environ["RETIA_RUNS_DIR"] == str(tmp_path / "runs")  # set by tests/conftest.py
    evaluator = FunctionalEvaluator(fit_record_env)
    first, second = evaluator.evaluate(MLP), evaluator.evaluate(MLP)

    for result in (first, second):
        seen = json.loads((result.output_dir / "env.json").read_text())
        assert seen == {"RETIA_OUTPUT_DIR": str(result.output_dir), "NNI_OUTPUT_DIR": str(result.output_dir)}
        assert result.output_dir.parent == (tmp_path / "runs").resolve()
    assert first.output_dir != second.output_dir
    assert "RETIA_OUTPUT_DIR" not in os.environ and "NNI_OUTPUT_DIR" not in os.environ


def test_default_runs_dir_is_retia_runs_under_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RETIA_RUNS_DIR")
    monkeypatch.chdir(tmp_path)
    result = FunctionalEvaluator(fit_record_env).evaluate(MLP)
    assert result.output_dir.is_absolute()
    assert result.output_dir.parent == (tmp_path / "retia-runs").resolve()
    assert (result.output_dir / "env.json").is_file()


def test_output_dir_argument_overrides_and_previous_values_are_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NNI_OUTPUT_DIR", "/previous/nni")
    monkeypatch.delenv("RETIA_OUTPUT_DIR", raising=False)
    target = tmp_path / "mine" / "trial-1"
    result = FunctionalEvaluator(fit_record_env).evaluate(MLP, output_dir=target)

    assert result.output_dir == target.resolve()
    seen = json.loads((target / "env.json").read_text())
    assert seen == {"RETIA_OUTPUT_DIR": str(target.resolve()), "NNI_OUTPUT_DIR": str(target.resolve())}
    assert os.environ["NNI_OUTPUT_DIR"] == "/previous/nni"
    assert "RETIA_OUTPUT_DIR" not in os.environ


def test_env_is_restored_when_fit_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETIA_OUTPUT_DIR", "/previous/retia")
    monkeypatch.delenv("NNI_OUTPUT_DIR", raising=False)
    with pytest.raises(RuntimeError, match="on purpose"):
        FunctionalEvaluator(fit_fails).evaluate(MLP)
    assert os.environ["RETIA_OUTPUT_DIR"] == "/previous/retia"
    assert "NNI_OUTPUT_DIR" not in os.environ


# --- construction checks: fail early, with the argument's path ----------------------------------------


def test_kwargs_are_recorded_as_a_recipe_and_the_evaluator_round_trips() -> None:
    loader = _digits_loader("val", shuffle=False)
    evaluator = FunctionalEvaluator(fit_reports, values=[1, 2], finals=(3,), loader=loader)
    recipe = get_recipe(evaluator)
    assert recipe is not None and recipe.target is FunctionalEvaluator and recipe.args == ()
    assert recipe.kwargs == {"fit": fit_reports, "values": [1, 2], "finals": (3,), "loader": loader}
    assert "fit_reports" in repr(evaluator) and "loader" in repr(evaluator)

    loaded = retia.load(retia.dump(evaluator))
    assert loaded.arguments["values"] == [1, 2] and loaded.arguments["finals"] == (3,)
    assert type(loaded.arguments["loader"]) is retia.trace(DataLoader)
    assert get_recipe(loaded.arguments["loader"].dataset) == get_recipe(loader.dataset)
    assert loaded.evaluate(MLP).intermediates == [1.0, 2.0, float(len(cast(Sized, loader.dataset)))]


def test_unserializable_kwarg_fails_at_construction_with_its_path() -> None:
    lock = threading.Lock()
    loader = retia.trace(DataLoader)(cast(Any, retia.trace(Box)(value={"guard": lock})), batch_size=1)
    with pytest.raises(
        SerializationError, match=r"FunctionalEvaluator\.dataloader\.dataset\.value\.guard"
    ) as info:
        FunctionalEvaluator(fit_reports, values=[], finals=[], dataloader=loader)
    assert info.value.path == "FunctionalEvaluator.dataloader.dataset.value.guard"
    assert "lock" in str(info.value)

    with pytest.raises(SerializationError, match=r"FunctionalEvaluator\.stream"):
        FunctionalEvaluator(fit_reports, values=[], finals=[], stream=(i for i in range(3)))


def test_oversized_kwarg_travels_as_a_blob_is_capped_inline_and_big_pickles_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    big = FunctionalEvaluator(fit_reports, dataset=retia.trace(Box)(value=np.zeros(65 * MiB, dtype=np.uint8)))
    blobs: dict[str, Blob] = {}
    assert len(retia.dump(big, blobs=blobs)) < 4096 and len(blobs) == 1  # on the wire: a blob, shipped once
    with pytest.raises(PayloadTooLarge, match=r"FunctionalEvaluator\.dataset\.value.*MiB") as info:
        retia.dump(big)  # inline, without a blob store: capped
    assert info.value.size > 64 * MiB and info.value.path == "FunctionalEvaluator.dataset.value"

    caplog.set_level(logging.WARNING, logger="retia.serializer")
    chunks = collections.deque(
        bytes([i % 256]) * 1024 for i in range(3 * 1024)
    )  # no recipe, no array: pickled
    FunctionalEvaluator(fit_reports, dataset=retia.trace(Box)(value=chunks))
    messages = [r.getMessage() for r in caplog.records if r.name == "retia.serializer"]
    assert any("FunctionalEvaluator.dataset.value" in m and "3.0 MiB" in m for m in messages), messages


def test_fit_must_be_callable() -> None:
    with pytest.raises(TypeError, match="callable fit"):
        FunctionalEvaluator("not a function")  # type: ignore[arg-type]  # on purpose


def test_fit_by_reference_when_importable_by_value_when_not() -> None:
    data = retia.dump(FunctionalEvaluator(json.dumps))
    assert "json:dumps" in pi.refs(data) and pi.pickles(data) == []
    data = retia.dump(FunctionalEvaluator(fit_reports, values=[], finals=[]))
    (pickled,) = pi.pickles(data)
    assert b"fit_reports" in pickled  # the helper module is the user's own, uninstalled code


def _fit_lr(model_cls: Any, lr: float, train: Any = None) -> None:
    batch = {} if train is None else {"batch": train.batch_size}
    report_final_result({"default": lr, "lr": lr, **batch})


def test_choices_in_an_evaluators_arguments_are_its_search_space_and_freeze_fixes_them() -> None:
    """NNI 3.0's mutable evaluators. Before, ``FunctionalEvaluator(fit, lr=ValueChoice([0.01, 0.1]))``
    called fit with 0.1 and nothing searched ``lr``. A choice in a keyword, in a Lightning
    evaluator's argument, or inside a traced argument (a DataLoader's ``batch_size``) is the
    evaluator's search space; ``freeze`` gives the evaluator with the values picked, and an
    evaluator still holding a choice will not evaluate (never a silent maximum)."""
    import retia.lightning as pl
    from retia.nn import ValueChoice

    batch = ValueChoice([32, 64], label="bs")
    loader = retia.trace(DataLoader)(retia.trace(DigitsDataset)("val"), batch_size=batch)
    evaluator = FunctionalEvaluator(_fit_lr, lr=ValueChoice([0.01, 0.1], label="lr"), train=loader)
    assert evaluator.search_space() == {"lr": [0.01, 0.1], "bs": [32, 64]}
    with pytest.raises(ConfigError, match=r"still holds choice\(s\) \{'lr': \[0.01, 0.1\], 'bs'.*freeze"):
        evaluator.evaluate(object)
    frozen = evaluator.freeze({"lr": 0.01, "bs": 32, "width": 16})  # a model's label is ignored
    assert frozen.search_space() == {} and type(frozen) is FunctionalEvaluator
    assert frozen.evaluate(object).final == {"default": 0.01, "lr": 0.01, "batch": 32}
    assert evaluator.search_space() == {"lr": [0.01, 0.1], "bs": [32, 64]}  # the original is untouched
    assert retia.load(retia.dump(evaluator)).search_space() == evaluator.search_space()  # saved with them
    with pytest.raises(InvalidArchitectureError, match=r"needs a value for its choice\(s\) \['bs'\]"):
        evaluator.freeze({"lr": 0.1})
    with pytest.raises(InvalidArchitectureError, match="'lr' has value 0.5"):
        evaluator.freeze({"lr": 0.5, "bs": 32})
    classification = pl.Classification(
        learning_rate=ValueChoice([1e-3, 1e-2], label="clr"),
        max_epochs=ValueChoice([1, 2], label="epochs"),
        val_dataloaders=_digits_loader("val", False),
    )
    assert classification.search_space() == {"clr": [1e-3, 1e-2], "epochs": [1, 2]}
    fixed = classification.freeze({"clr": 1e-2, "epochs": 1})
    assert fixed.search_space() == {} and cast(Any, fixed).trainer_kwargs["max_epochs"] == 1
    with retia.fixed_arch({"lr": 0.1}):  # built under fixed_arch, a choice is its value at once
        assert FunctionalEvaluator(_fit_lr, lr=ValueChoice([0.01, 0.1], label="lr")).search_space() == {}


def test_an_expression_of_choices_in_an_evaluators_arguments_is_searched_by_its_choices() -> None:
    """``lr=ValueChoice([0.01, 0.1]) * 2``: searched as ``lr``; fit gets twice the sampled value. Before,
    the expression (a float holding its largest value, 0.2) was not seen and travelled as 0.2."""
    from retia.nn import ValueChoice

    lr = ValueChoice([0.01, 0.1], label="lr")
    evaluator = FunctionalEvaluator(_fit_lr, lr=lr * 2)
    for copy in (evaluator, retia.load(retia.dump(evaluator))):
        assert copy.search_space() == {"lr": [0.01, 0.1]}
        assert cast(dict[str, Any], copy.freeze({"lr": 0.01}).evaluate(object).final)["lr"] == 0.02
    with pytest.raises(ConfigError, match="still holds choice"):
        evaluator.evaluate(object)


def test_one_label_with_two_option_lists_in_an_evaluator_is_refused() -> None:
    from retia.nn import ValueChoice

    with pytest.raises(ConfigError, match="two choices labelled 'lr' with different options"):
        FunctionalEvaluator(
            _fit_lr, lr=ValueChoice([0.01, 0.1], label="lr"), train={"lr": ValueChoice([1, 2], label="lr")}
        )
