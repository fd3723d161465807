"""report_intermediate_result / report_final_result: validation and the context's reporter."""

from __future__ import annotations

import contextvars
import logging
import threading
from typing import cast

import numpy as np
import pytest
import torch

import retia
from retia.errors import ReportError, RetiaError
from retia.reporting import CollectingReporter, Reporter, default_value, use_reporter, validate_metric


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3, 3.0),
        (0.25, 0.25),
        (-1e300, -1e300),
        (np.float32(0.5), 0.5),
        (np.int64(7), 7.0),
        (torch.tensor(0.75), 0.75),
        ({"default": 0.9}, {"default": 0.9}),
        (
            {"default": torch.tensor(1.5), "loss": 2, "acc": np.float64(0.1)},
            {"default": 1.5, "loss": 2.0, "acc": 0.1},
        ),
    ],
)
def test_valid_metrics_are_normalized_to_floats(value, expected) -> None:
    metric = validate_metric(value)
    assert metric == expected
    if isinstance(metric, dict):
        assert all(type(v) is float for v in metric.values())
    else:
        assert type(metric) is float


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("0.9", r"finite number; got str '0\.9'"),
        (None, "finite number; got NoneType"),
        (True, "finite number; got bool"),
        ([0.5], "finite number; got list"),
        (float("nan"), "must be finite; got nan"),
        (float("inf"), "must be finite; got inf"),
        (torch.tensor(float("-inf")), "must be finite; got -inf"),
        (torch.ones(2), "single number"),
        (np.array([1.0, 2.0]), "single number"),
        ({"acc": 0.9}, r"needs a 'default' key.*\['acc'\]"),
        ({1: 0.5, "acc": 0.9}, r"needs a 'default' key.*\[1, 'acc'\]"),
        ({"default": "high"}, r"metric 'default' must be a finite number; got str"),
        ({"default": 1.0, "loss": float("nan")}, r"metric 'loss' must be finite"),
        ({"default": 1.0, 2: 0.5}, "metric names must be strings; got 2"),
    ],
)
def test_bad_values_raise_report_error(value, match: str) -> None:
    with pytest.raises(ReportError, match=match):
        validate_metric(value)
    reporter = CollectingReporter()
    with use_reporter(reporter):
        with pytest.raises(ReportError, match=match):
            retia.report_intermediate_result(value)
        with pytest.raises(ReportError, match=match):
            retia.report_final_result(value)
    assert reporter.intermediates == [] and reporter.final_value is None and not reporter.final_reported


def test_report_error_is_a_retia_error_and_a_value_error() -> None:
    assert issubclass(ReportError, RetiaError) and issubclass(ReportError, ValueError)


def test_reports_go_to_the_current_reporter_in_order() -> None:
    reporter = CollectingReporter()
    with use_reporter(reporter) as active:
        assert active is reporter
        for i in range(5):
            retia.report_intermediate_result({"default": i / 10, "epoch": i})
        retia.report_final_result(0.4)
    intermediates = cast(list[dict[str, float]], reporter.intermediates)  # dicts, as reported above
    assert [m["epoch"] for m in intermediates] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert reporter.intermediates[2] == {"default": 0.2, "epoch": 2.0}
    assert reporter.final_value == 0.4


def test_second_final_and_intermediate_after_final_are_refused() -> None:
    reporter = CollectingReporter()
    with use_reporter(reporter):
        retia.report_final_result(1)
        with pytest.raises(ReportError, match="called twice"):
            retia.report_final_result(2)
        with pytest.raises(ReportError, match="after report_final_result"):
            retia.report_intermediate_result(3)
    assert reporter.final_value == 1.0 and reporter.intermediates == []


def test_outside_any_context_reports_warn_and_do_nothing(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="retia.reporting")
    retia.report_intermediate_result(0.5)
    retia.report_final_result({"default": 1, "acc": 0.5})
    retia.report_final_result(2)  # no reporter, so no "twice" either: nothing was recorded
    messages = [r.getMessage() for r in caplog.records if r.name == "retia.reporting"]
    assert len(messages) == 3
    assert "report_intermediate_result(0.5) outside an evaluation" in messages[0]
    assert "report_final_result" in messages[1] and "outside an evaluation" in messages[1]
    with pytest.raises(ReportError):  # bad values are refused even with nobody listening
        retia.report_final_result("oops")


def test_nested_contexts_restore_the_outer_reporter(caplog: pytest.LogCaptureFixture) -> None:
    outer, inner = CollectingReporter(), CollectingReporter()
    with use_reporter(outer):
        retia.report_intermediate_result(1)
        with use_reporter(inner):
            retia.report_intermediate_result(2)
            retia.report_final_result(20)
        retia.report_intermediate_result(3)
        retia.report_final_result(30)
    assert outer.intermediates == [1.0, 3.0] and outer.final_value == 30.0
    assert inner.intermediates == [2.0] and inner.final_value == 20.0

    caplog.set_level(logging.WARNING, logger="retia.reporting")
    retia.report_intermediate_result(4)  # the context has ended
    assert outer.intermediates == [1.0, 3.0]
    assert any("outside an evaluation" in r.getMessage() for r in caplog.records)


def test_reporter_is_per_context_not_global(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="retia.reporting")
    reporter = CollectingReporter()
    with use_reporter(reporter):
        # A plain new thread starts with an empty context: it does not see this reporter...
        plain = threading.Thread(target=retia.report_intermediate_result, args=(1,))
        plain.start()
        plain.join()
        # ...a thread running in a copy of this context does.
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=ctx.run, args=(retia.report_intermediate_result, 2))
        copied.start()
        copied.join()
    assert reporter.intermediates == [2.0]
    assert sum("outside an evaluation" in r.getMessage() for r in caplog.records) == 1


def test_a_custom_reporter_receives_validated_values() -> None:
    class Forwarding(Reporter):
        def __init__(self) -> None:
            super().__init__()
            self.sent: list[tuple[bool, object]] = []

        def _emit(self, final: bool, value: object) -> None:
            self.sent.append((final, value))

    reporter = Forwarding()
    with use_reporter(reporter):
        retia.report_intermediate_result(np.float32(0.5))
        retia.report_final_result({"default": torch.tensor(2.0)})
    assert reporter.sent == [(False, 0.5), (True, {"default": 2.0})]


def test_default_value() -> None:
    assert default_value(0.3) == 0.3
    assert default_value({"default": 0.7, "loss": 1.0}) == 0.7
