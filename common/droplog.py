"""Log what a process drops without letting a flood flood the log: one budget for all senders.

The first ``budget`` drops of each interval are logged in full (sender and reason); the rest are
counted by reason and summarised in one line per interval. The dispatcher uses it for whatever
peers send that it refuses unread, the peer for what it refuses from the dispatcher.
"""

from __future__ import annotations

import logging
import re
from collections import Counter

__all__ = ["DropLog"]

_VARYING = re.compile(r"b?'[^']*'|\"[^\"]*\"|\d+(\.\d+)?")  # numbers and quoted values: not the reason
_OTHER = "other reasons"


class DropLog:
    """Logs dropped messages with a global budget: the first ``budget`` of each ``interval`` in full
    (sender and reason), the rest counted by reason and summarised in one line per interval."""

    def __init__(
        self, log: logging.Logger, *, budget: int = 20, interval: float = 60.0, max_reasons: int = 16
    ) -> None:
        self._log = log
        self.budget = budget
        self.interval = interval
        self.max_reasons = max_reasons
        self.total = 0  # every drop since start
        self._logged = 0  # logged in full in this interval
        self._window_end: float | None = None
        self._suppressed: Counter[str] = Counter()  # reason -> drops not logged in this interval

    def drop(self, sender: bytes | str, reason: str, now: float) -> None:
        """Count one dropped message from ``sender`` and log it if the budget allows."""
        self.total += 1
        self.tick(now)
        if self._window_end is None:
            self._window_end = now + self.interval
        if self._logged < self.budget:
            self._logged += 1
            self._log.warning("dropped message from %r: %.300s", sender[:64], reason)
            if self._logged == self.budget:
                self._log.warning(
                    "%d messages dropped in %.0fs: further drops are counted and summarised",
                    self.budget,
                    self.interval,
                )
            return
        kind = _VARYING.sub("N", reason)[:80]
        if kind not in self._suppressed and len(self._suppressed) >= self.max_reasons:
            kind = _OTHER
        self._suppressed[kind] += 1

    def tick(self, now: float) -> None:
        """Close the interval if it is over: one summary line for what was not logged."""
        if self._window_end is None or now < self._window_end:
            return
        if self._suppressed:
            counts = ", ".join(f"{n} x {kind}" for kind, n in self._suppressed.most_common())
            self._log.warning(
                "%d more messages dropped unlogged in the last %.0fs (%d since start): %s",
                sum(self._suppressed.values()),
                self.interval,
                self.total,
                counts,
            )
        self._suppressed.clear()
        self._logged = 0
        self._window_end = None
