"""The live terminal view of a running experiment (rich); quiet when not attached to a terminal."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from retia.errors import RetiaError
from retia.protocol import StatusReply, TrialState

from .results import TrialResult, scored

if TYPE_CHECKING:
    from .backend import Backend

__all__ = ["LiveView"]

_log = logging.getLogger(__name__)
_STATUS_EVERY = 2.0


class LiveView:
    """Trials done/running/failed, best so far, throughput, workers; refreshed a few times a second."""

    def __init__(self, experiment: Any, backend: Backend, *, enabled: bool | None = None) -> None:
        self.experiment = experiment
        self.backend = backend
        self.console = Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self.started = time.monotonic()
        self._live: Live | None = None
        self._status: StatusReply | None = None
        self._status_at = 0.0
        self._finished_here = 0

    def __enter__(self) -> LiveView:
        if self.enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._render())
            self._live.__exit__(None, None, None)

    def trial_finished(self, result: TrialResult) -> None:
        self._finished_here += 1
        _log.info("trial #%d %s: %s %s", result.key, result.state, result.final, result.arch)

    def refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def _worker_status(self) -> StatusReply | None:
        now = time.monotonic()
        if self._status is None or not self._status.workers or now - self._status_at > _STATUS_EVERY:
            self._status_at = now
            try:
                self._status = self.backend.status(timeout=1.0)
            except RetiaError:
                pass
        return self._status

    def _render(self) -> Group:
        results = self.experiment.results
        counts = {state.value: 0 for state in TrialState}
        for r in results:
            counts[r.state if r.state in counts else TrialState.RUNNING.value] += 1
        candidates = scored(results)
        pick = max if self.experiment.direction == "maximize" else min
        best = pick(candidates, key=lambda pair: pair[0])[1] if candidates else None
        elapsed = time.monotonic() - self.started
        rate = (
            f"{60 * self._finished_here / elapsed:.1f} trials/min"
            if elapsed > 5 and self._finished_here
            else "-"
        )
        summary = Table.grid(padding=(0, 2))
        summary.add_column(style="bold")
        summary.add_column()
        summary.add_row(
            "trials",
            (
                f"[green]{counts['SUCCEEDED']} done[/green] · [red]{counts['FAILED']} failed[/red] · "
                f"{counts['CANCELLED']} stopped · [cyan]{counts['RUNNING'] + counts['QUEUED']} running[/cyan]"
            ),
        )
        summary.add_row("best", f"{best.score:.4f}  (trial #{best.key})  {best.arch}" if best else "-")
        summary.add_row("speed", f"{rate} · elapsed {elapsed:.0f}s")
        workers = Table(box=None, pad_edge=False, title_justify="left")
        for column in ("worker", "gpu", "state", "trial"):
            workers.add_column(column)
        status = self._worker_status()
        for w in status.workers if status else []:
            workers.add_row(w.worker_id, w.gpu, w.state, w.trial[-8:] if w.trial else "-")
        return Group(Panel(Group(summary, workers), title=f"retia · {self.experiment.id}", expand=False))
