"""The dashboard's JSON API under ``/api/`` (docs/dashboard.md documents each endpoint).

Payloads are dataclasses turned into JSON as they are; the trials table is sorted, filtered and
paginated here, so a page of a 10,000-trial experiment is all the browser receives.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from retia.client.cli import describe_devices
from retia.errors import ConfigError, RetiaError, UnsafePathError
from retia.protocol import TrialState
from retia.reporting import Metric, default_value

from ..results import TrialResult, scored
from .source import ClusterSource, ExperimentSource, failure_traceback

__all__ = ["Overview", "TrialRow", "TrialsPage", "TrialDetail", "api_routes", "query_trials"]

_log = logging.getLogger(__name__)

MAX_PER_PAGE = 500
LOG_LIMIT = 256 << 10  # the last 256 KiB of a log, at most, per request
SORT_KEYS = ("key", "state", "metric", "duration", "attempt", "seed")


@dataclass(frozen=True)
class Best:
    key: int
    metric: float
    arch: dict[str, Any]


@dataclass(frozen=True)
class Overview:
    """Counts by state, the best trial, time and speed of an experiment."""

    experiment_id: str
    path: str
    direction: str
    max_trials: int
    concurrency: int
    trials: int
    counts: dict[str, int]
    best: Best | None
    created: float
    elapsed: float  # seconds from its creation to its last event (to now while trials are in flight)
    trials_per_minute: float | None
    remaining_trials: int
    labels: list[str]
    cluster: bool  # whether a dispatcher is watched too (the cluster page has something to show)


@dataclass(frozen=True)
class TrialRow:
    """One row of the trials table."""

    key: int
    trial_id: str
    state: str
    metric: float | None
    duration: float | None  # from its submission to its result (queueing included)
    attempt: int
    seed: int | None
    devices: str
    arch: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class TrialsPage:
    total: int  # the trials the filter keeps
    all: int  # every trial of the experiment
    page: int
    per_page: int
    sort: str
    order: str
    labels: list[str]
    rows: list[TrialRow]


@dataclass(frozen=True)
class TrialDetail:
    """One trial: what it was, every report, its files; its failure's traceback from its log."""

    row: TrialRow
    final: Metric | None
    intermediates: list[Metric]
    submitted: float
    finished: float
    output_dir: str
    files: list[dict[str, Any]]
    traceback: str
    has_onnx: bool


@dataclass(frozen=True)
class MetricSeries:
    """Final metric per scored trial, the best so far after each, and the architectures (for plots)."""

    direction: str
    keys: list[int]
    metrics: list[float]
    best: list[float]
    labels: list[str]
    arch: dict[str, list[Any]] = field(default_factory=dict)  # label -> each scored trial's choice


@dataclass(frozen=True)
class Curve:
    key: int
    values: list[float]


def _row(r: TrialResult) -> TrialRow:
    done = TrialState(r.state).finished if r.state in TrialState.__members__ else False
    return TrialRow(
        key=r.key,
        trial_id=r.trial_id,
        state=r.state,
        metric=r.score,
        duration=(r.finished - r.submitted) if done and r.finished and r.submitted else None,
        attempt=r.attempt,
        seed=r.seed,
        devices="" if r.devices is None else describe_devices(r.devices),
        arch=dict(r.arch),
        reason=r.reason,
    )


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _matches(row: TrialRow, terms: list[str]) -> bool:
    """Each term keeps a row: ``label=value`` its choice, any other its text (id, state, arch, reason)."""
    for term in terms:
        label, eq, want = term.partition("=")
        if eq and label in row.arch:
            if _text(row.arch[label]).lower() != want.lower():
                return False
            continue
        haystack = f"#{row.key} {row.trial_id} {row.state} {json.dumps(row.arch)} {row.reason}".lower()
        if term.lower() not in haystack:
            return False
    return True


def _sort_value(sort: str) -> Callable[[TrialRow], tuple[int, Any]]:
    """A key putting rows without a value last whatever the order, and mixed types in a stable order."""

    def value(row: TrialRow) -> tuple[int, Any]:
        if sort.startswith("arch."):
            v = row.arch.get(sort[5:])
            if v is None:
                return (1, "")
            return (0, (0, v, "")) if isinstance(v, (int, float)) else (0, (1, 0, _text(v)))
        v = getattr(row, sort)
        return (1, 0) if v is None else (0, v)

    return value


def query_trials(
    source: ExperimentSource,
    *,
    page: int = 1,
    per_page: int = 50,
    sort: str = "key",
    order: str = "asc",
    state: str = "",
    q: str = "",
) -> TrialsPage:
    """One page of the trials table; ConfigError for a parameter out of range (the message says which)."""
    labels = source.labels()
    problems = []
    if sort not in SORT_KEYS and not (sort.startswith("arch.") and sort[5:] in labels):
        problems.append(
            f"sort must be one of {', '.join(SORT_KEYS)} or arch.<label> ({', '.join(labels)}), not {sort!r}"
        )
    if order not in ("asc", "desc"):
        problems.append(f"order must be asc or desc, not {order!r}")
    if not 1 <= per_page <= MAX_PER_PAGE:
        problems.append(f"per_page must be 1 to {MAX_PER_PAGE}, not {per_page}")
    if page < 1:
        problems.append(f"page must be 1 or more, not {page}")
    states = [s for s in state.upper().split(",") if s]
    if bad := [s for s in states if s not in TrialState.__members__]:
        problems.append(f"state must be among {', '.join(TrialState.__members__)}, not {', '.join(bad)}")
    if problems:
        raise ConfigError("; ".join(problems))
    results = source.results()
    rows = [_row(r) for r in results]
    if states:
        rows = [row for row in rows if row.state in states]
    if terms := q.split():
        rows = [row for row in rows if _matches(row, terms)]
    value = _sort_value(sort)
    present = [row for row in rows if value(row)[0] == 0]
    missing = [row for row in rows if value(row)[0] == 1]
    present.sort(key=value, reverse=order == "desc")
    rows = present + missing
    start = (page - 1) * per_page
    return TrialsPage(
        len(rows), len(results), page, per_page, sort, order, labels, rows[start : start + per_page]
    )


def overview(source: ExperimentSource, *, cluster: bool = False) -> Overview:
    settings = source.settings
    results = source.results()
    counts = {s.value: 0 for s in TrialState}
    for r in results:
        counts[r.state] = counts.get(r.state, 0) + 1
    done = scored(results)
    pick = max if settings.direction == "maximize" else min
    best = pick(done, key=lambda pair: pair[0]) if done else None
    finished = [r.finished for r in results if r.finished]
    in_flight = any(not TrialState(r.state).finished for r in results if r.state in TrialState.__members__)
    last = time.time() if in_flight or not results else max(finished, default=settings.created)
    elapsed = max(0.0, last - settings.created)
    n_done = len(finished)
    return Overview(
        experiment_id=settings.experiment_id,
        path=str(source.path),
        direction=settings.direction,
        max_trials=settings.max_trials,
        concurrency=settings.concurrency,
        trials=len(results),
        counts=counts,
        best=None if best is None else Best(best[1].key, best[0], dict(best[1].arch)),
        created=settings.created,
        elapsed=elapsed,
        trials_per_minute=60 * n_done / elapsed if n_done and elapsed > 0 else None,
        remaining_trials=max(0, settings.max_trials - n_done),
        labels=source.labels(),
        cluster=cluster,
    )


def metric_series(source: ExperimentSource) -> MetricSeries:
    direction = source.settings.direction
    done = scored(source.results())
    pick = max if direction == "maximize" else min
    best: list[float] = []
    for score, _ in done:
        best.append(pick(best[-1], score) if best else score)
    labels = source.labels()
    return MetricSeries(
        direction,
        [r.key for _, r in done],
        [score for score, _ in done],
        best,
        labels,
        {label: [r.arch.get(label) for _, r in done] for label in labels},
    )


def _json(payload: Any, status: int = 200) -> JSONResponse:
    data = payload if isinstance(payload, dict) else dataclasses.asdict(payload)
    return JSONResponse(data, status_code=status, headers={"Cache-Control": "no-store"})


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, not {raw!r}") from None


def api_routes(source: ExperimentSource | None, cluster: ClusterSource | None) -> list[Route]:
    """The routes of ``/api/``: an experiment's (when ``source``), the cluster's (when ``cluster``)."""

    def need_source() -> ExperimentSource:
        if source is None:
            raise LookupError("this dashboard watches a dispatcher, not an experiment directory")
        return source

    def guarded(fn: Callable[[Request], Response]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            from starlette.concurrency import run_in_threadpool

            try:
                return await run_in_threadpool(fn, request)
            except UnsafePathError as exc:
                return _error(400, f"refused: {exc}")
            except ConfigError as exc:
                return _error(400 if "no trial #" not in str(exc) else 404, str(exc))
            except (FileNotFoundError, LookupError) as exc:
                return _error(404, str(exc))
            except RetiaError as exc:
                return _error(503, str(exc))

        return endpoint

    def get_overview(request: Request) -> Response:
        return _json(overview(need_source(), cluster=cluster is not None))

    def get_trials(request: Request) -> Response:
        params = request.query_params
        return _json(
            query_trials(
                need_source(),
                page=_int(request, "page", 1),
                per_page=_int(request, "per_page", 50),
                sort=params.get("sort", "key"),
                order=params.get("order", "asc"),
                state=params.get("state", ""),
                q=params.get("q", ""),
            )
        )

    def get_metrics(request: Request) -> Response:
        return _json(metric_series(need_source()))

    def get_curves(request: Request) -> Response:
        src, raw = need_source(), request.query_params.get("keys", "")
        try:
            keys = [int(k) for k in raw.split(",") if k][:100]
        except ValueError:
            raise ConfigError(f"keys must be trial numbers separated by commas, not {raw!r}") from None
        curves = [Curve(k, [default_value(m) for m in src.trial(k).intermediates]) for k in keys]
        return _json({"curves": [dataclasses.asdict(c) for c in curves]})

    def key_of(request: Request) -> int:
        raw = request.path_params["key"]
        try:
            return int(raw)
        except ValueError:
            raise FileNotFoundError(f"{raw!r} is no trial number") from None

    def get_trial(request: Request) -> Response:
        src, key = need_source(), key_of(request)
        r = src.trial(key)
        files = src.files(key)
        log = ""
        if any(f.name == "trial.log" for f in files):
            log = src.read_file(key, "trial.log", LOG_LIMIT, tail=True)[0].decode("utf-8", "replace")
        detail = TrialDetail(
            row=_row(r),
            final=r.final,
            intermediates=list(r.intermediates),
            submitted=r.submitted,
            finished=r.finished,
            output_dir=r.output_dir,
            files=[dataclasses.asdict(f) for f in files],
            traceback="" if r.state != TrialState.FAILED.value else failure_traceback(log),
            has_onnx=any(f.name == "model.onnx" for f in files),
        )
        return _json(detail)

    def get_log(request: Request) -> Response:
        src, key = need_source(), key_of(request)
        limit = min(max(1, _int(request, "limit", LOG_LIMIT)), LOG_LIMIT)
        try:
            data, size = src.read_file(key, "trial.log", limit, tail=True)
        except FileNotFoundError:
            data, size = b"", 0
        return _json({"key": key, "size": size, "text": data.decode("utf-8", "replace")})

    def get_file(request: Request) -> Response:
        src, key = need_source(), key_of(request)
        name = request.path_params["name"]
        fd, size = src.open_file(key, name)

        def chunks() -> Any:
            try:
                while chunk := os.read(fd, 1 << 16):
                    yield chunk
            finally:
                os.close(fd)

        base = name.rsplit("/", 1)[-1].replace('"', "")
        return StreamingResponse(
            chunks(),
            media_type="application/octet-stream",
            headers={"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{base}"'},
        )

    def get_graph(request: Request) -> Response:
        src, key = need_source(), key_of(request)
        graph = src.onnx_graph(key)
        if graph is None:
            raise FileNotFoundError(f"trial #{key} wrote no model.onnx")
        return _json(graph)

    def get_cluster(request: Request) -> Response:
        if cluster is None:
            raise LookupError("this dashboard watches no dispatcher: start it with `retia dashboard ADDRESS`")
        status = cluster.status()
        return _json(
            {
                "address": cluster.address,
                "dispatcher": status.dispatcher_id,
                "uptime": status.uptime,
                "counts": status.counts,
                "workers": [
                    {
                        **dataclasses.asdict(w),
                        "last_devices": "" if w.last_devices is None else describe_devices(w.last_devices),
                    }
                    for w in status.workers
                ],
            }
        )

    return [
        Route("/api/overview", guarded(get_overview)),
        Route("/api/trials", guarded(get_trials)),
        Route("/api/metrics", guarded(get_metrics)),
        Route("/api/curves", guarded(get_curves)),
        Route("/api/trials/{key}", guarded(get_trial)),
        Route("/api/trials/{key}/log", guarded(get_log)),
        Route("/api/trials/{key}/graph", guarded(get_graph)),
        Route("/api/trials/{key}/files/{name:path}", guarded(get_file)),
        Route("/api/cluster", guarded(get_cluster)),
    ]
