"""Light imports, the public names of `retia`, and the exception tree of `retia.errors`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import retia
import retia.errors as errors

HEAVY = ("torch", "pytorch_lightning", "lightning")


def _run(code: str, cwd: Path) -> Any:  # the JSON the code prints last
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_retia_trace_dump_load_loads_no_torch(tmp_path: Path) -> None:
    out = _run(
        f"""
        import json, sys
        import retia
        from retia import trace, dump, load, FunctionalEvaluator, report_final_result
        import retia.errors, retia.reporting, retia.serializer, retia.evaluator

        class Point:
            def __init__(self, x, y):
                self.x, self.y = x, y

        p = load(dump(trace(Point)(1, y=2)))
        assert (p.x, p.y) == (1, 2)
        assert load(dump({{"a": (1, 2)}})) == {{"a": (1, 2)}}
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})))
        """,
        tmp_path,
    )
    assert out == []


def test_dumping_and_running_a_functional_evaluator_with_a_plain_function_loads_no_torch(
    tmp_path: Path,
) -> None:
    out = _run(
        f"""
        import json, sys
        import retia

        def fit(model_cls, scale, encode):
            model = model_cls()
            retia.report_intermediate_result(len(encode(model)))
            retia.report_final_result(scale * len(model))

        evaluator = retia.FunctionalEvaluator(fit, scale=3, encode=json.dumps)
        data = retia.dump(evaluator)
        result = retia.load(data).evaluate(lambda: [1, 2])
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})
        print(json.dumps({{"final": result.final, "intermediates": result.intermediates, "heavy": heavy}}))
        """,
        tmp_path,
    )
    assert out == {"final": 6.0, "intermediates": [float(len(json.dumps([1, 2])))], "heavy": []}


def test_public_names_are_pinned() -> None:
    assert sorted(retia.__all__) == [
        "AuthenticationError",
        "Backend",
        "EvaluationResult",
        "Evaluator",
        "Experiment",
        "FunctionalEvaluator",
        "InvalidArchitectureError",
        "PayloadTooLarge",
        "PlacementError",
        "ProtocolError",
        "RetiaError",
        "RetiariiExperiment",
        "SerializationError",
        "Trial",
        "TrialFailedError",
        "TrialState",
        "WorkerLostError",
        "connect",
        "dump",
        "fixed_arch",
        "get_recipe",
        "is_traced",
        "load",
        "local_cluster",
        "original_state_dict_hooks",
        "report_final_result",
        "report_intermediate_result",
        "trace",
        "wait",
    ]
    assert set(retia.__all__) <= set(dir(retia))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        retia.no_such_name  # noqa: B018


def test_eager_names_are_the_real_objects() -> None:
    from retia import evaluator, reporting, serializer
    from retia.trace import Traced

    # The function shadows the submodule of the same name; the module stays importable.
    trace_module = sys.modules["retia.trace"]
    assert retia.trace is trace_module.trace and issubclass(retia.trace(dict), dict)
    assert isinstance(retia.trace(len), Traced)
    assert retia.dump is serializer.dump and retia.load is serializer.load
    assert retia.FunctionalEvaluator is evaluator.FunctionalEvaluator
    assert retia.EvaluationResult is evaluator.EvaluationResult
    assert retia.report_final_result is reporting.report_final_result
    assert retia.report_intermediate_result is reporting.report_intermediate_result
    assert retia.SerializationError is errors.SerializationError


def test_package_ships_py_typed() -> None:
    assert (Path(retia.__file__).parent / "py.typed").is_file()


# --- the exception tree ---------------------------------------------------------------------------


def test_every_error_derives_from_the_one_root() -> None:
    for name in errors.__all__:
        cls = getattr(errors, name)
        assert isinstance(cls, type) and issubclass(cls, errors.RetiaError), name
    assert errors.RetiaError.__bases__ == (Exception,)


@pytest.mark.parametrize(
    ("child", "parent"),
    [
        (errors.PayloadTooLarge, errors.SerializationError),
        (errors.WorkerLostError, errors.TrialFailedError),
        (errors.PlacementError, errors.TrialFailedError),
        (errors.ReportError, ValueError),
        (errors.ConfigError, ValueError),
        (errors.InvalidArchitectureError, ValueError),
    ],
)
def test_precise_children(child: type, parent: type) -> None:
    assert issubclass(child, parent)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (errors.SerializationError, errors.ReportError),
        (errors.SerializationError, errors.AuthenticationError),
        (errors.AuthenticationError, errors.ProtocolError),
        (errors.TrialFailedError, errors.TrialCancelledError),
    ],
)
def test_siblings_are_distinct(a: type, b: type) -> None:
    assert not issubclass(a, b) and not issubclass(b, a)


def test_error_attributes() -> None:
    too_large = errors.PayloadTooLarge("too big", "fit.kwargs.data", 123)
    assert (too_large.path, too_large.size, str(too_large)) == ("fit.kwargs.data", 123, "too big")
    failed = errors.WorkerLostError("lost", trial_id="t1", exc_type="SIGKILL", log_tail="...")
    assert (failed.trial_id, failed.exc_type, failed.log_tail) == ("t1", "SIGKILL", "...")
    remote = errors.RemoteTraceback("Traceback (most recent call last):\n  boom\n")
    assert "boom" in str(remote) and str(remote).startswith('\n"""')
