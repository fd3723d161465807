"""``report_intermediate_result`` / ``report_final_result`` and the reporter they deliver to.

Whoever runs an evaluator sets the reporter of the current context (a ``contextvars``
variable): ``Evaluator.evaluate`` collects in process, the worker's trial runner forwards
over the wire. No mutable global for tests to reset.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
import numbers
from collections.abc import Iterator
from typing import Any

from .errors import ReportError

__all__ = [
    "Metric",
    "Reporter",
    "CollectingReporter",
    "report_intermediate_result",
    "report_final_result",
    "validate_metric",
    "default_value",
    "use_reporter",
    "current_reporter",
]

_log = logging.getLogger(__name__)

Metric = float | dict[str, float]


class Reporter:
    """Receives validated metrics of one evaluation; refuses a second final result."""

    def __init__(self) -> None:
        self.final_reported = False

    def intermediate(self, value: Metric) -> None:
        if self.final_reported:
            raise ReportError("report_intermediate_result() after report_final_result(): the trial has ended")
        self._emit(False, value)

    def final(self, value: Metric) -> None:
        if self.final_reported:
            raise ReportError("report_final_result() called twice: a trial has exactly one final result")
        self.final_reported = True
        self._emit(True, value)

    def _emit(self, final: bool, value: Metric) -> None:
        raise NotImplementedError

    def checkpoint(self) -> None:
        """The trial saved a new checkpoint (:func:`retia.checkpoint.save`); in this process, nothing
        more to do (a worker's reporter has its agent send it)."""


class CollectingReporter(Reporter):
    """Keeps the reports in memory (used by ``Evaluator.evaluate`` in this process)."""

    def __init__(self) -> None:
        super().__init__()
        self.intermediates: list[Metric] = []
        self.final_value: Metric | None = None

    def _emit(self, final: bool, value: Metric) -> None:
        if final:
            self.final_value = value
        else:
            self.intermediates.append(value)


_current: contextvars.ContextVar[Reporter | None] = contextvars.ContextVar("retia_reporter", default=None)


@contextlib.contextmanager
def use_reporter(reporter: Reporter) -> Iterator[Reporter]:
    """Route ``report_*`` calls in this context to ``reporter``."""
    token = _current.set(reporter)
    try:
        yield reporter
    finally:
        _current.reset(token)


def current_reporter() -> Reporter | None:
    """The reporter of the evaluation running in this context (None outside one)."""
    return _current.get()


def report_intermediate_result(value: Any) -> None:
    """Report a metric during training (an epoch's validation accuracy, say)."""
    metric = validate_metric(value)
    reporter = _current.get()
    if reporter is None:
        _log.warning("report_intermediate_result(%r) outside an evaluation: nothing receives it", metric)
        return
    reporter.intermediate(metric)


def report_final_result(value: Any) -> None:
    """Report the trial's final metric; exactly once per trial."""
    metric = validate_metric(value)
    reporter = _current.get()
    if reporter is None:
        _log.warning("report_final_result(%r) outside an evaluation: nothing receives it", metric)
        return
    reporter.final(metric)


# a report stays small (about 300 KB at most), so a batch of them always fits in a message
MAX_METRIC_NAMES = 1024
MAX_METRIC_NAME = 256


def validate_metric(value: Any) -> Metric:
    """A finite number, or a dict of finite numbers with a ``'default'`` key (NNI's convention)."""
    if isinstance(value, dict):
        if "default" not in value:
            raise ReportError(
                "a metric dict needs a 'default' key (the value strategies compare); "
                f"got keys {sorted(value, key=str)}"
            )
        if len(value) > MAX_METRIC_NAMES:
            raise ReportError(f"a metric dict has at most {MAX_METRIC_NAMES} names; got {len(value)}")
        out: dict[str, float] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ReportError(f"metric names must be strings; got {key!r}")
            if len(key) > MAX_METRIC_NAME:
                raise ReportError(
                    f"metric names have at most {MAX_METRIC_NAME} characters; got {key[:80]!r}..."
                )
            out[key] = _number(item, f"metric {key!r}")
        return out
    return _number(value, "metric")


def default_value(metric: Metric) -> float:
    return metric["default"] if isinstance(metric, dict) else metric


def _number(value: Any, what: str) -> float:
    if hasattr(value, "item") and not isinstance(value, numbers.Real):
        try:
            value = value.item()  # a 0-d tensor or numpy scalar
        except (ValueError, RuntimeError) as exc:
            raise ReportError(f"{what} must be a single number; got a {type(value).__name__}: {exc}") from exc
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ReportError(f"{what} must be a finite number; got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ReportError(f"{what} must be finite; got {number}")
    return number
