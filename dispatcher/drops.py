"""What the dispatcher keeps about peers it does not know: bounded, whatever they send.

A peer earns per-peer state only with a valid HELLO. Before that, a flood of junk (unsigned,
malformed, from any number of routing ids) costs a fixed amount of memory and of log: drops are
logged in full up to a budget per interval, then counted by reason and summarised in one line;
and a peer that sends signed messages without saying HELLO (the dispatcher restarted) is asked
to say HELLO (RESET) once per liveness window, remembered in a table of bounded size.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, OrderedDict

__all__ = ["DropLog", "ResetLimiter"]

_log = logging.getLogger("retia.dispatcher.service")  # where the dispatcher's drops were always logged
_VARYING = re.compile(r"b?'[^']*'|\"[^\"]*\"|\d+(\.\d+)?")  # numbers and quoted values: not the reason
_OTHER = "other reasons"


class DropLog:
    """Logs dropped messages with a global budget: the first ``budget`` of each ``interval`` in full
    (sender and reason), the rest counted by reason and summarised in one line per interval."""

    def __init__(self, *, budget: int = 20, interval: float = 60.0, max_reasons: int = 16) -> None:
        self.budget = budget
        self.interval = interval
        self.max_reasons = max_reasons
        self.total = 0  # every drop since start
        self._logged = 0  # logged in full in this interval
        self._window_end: float | None = None
        self._suppressed: Counter[str] = Counter()  # reason -> drops not logged in this interval

    def drop(self, identity: bytes, reason: str, now: float) -> None:
        """Count one dropped message from ``identity`` and log it if the budget allows."""
        self.total += 1
        self.tick(now)
        if self._window_end is None:
            self._window_end = now + self.interval
        if self._logged < self.budget:
            self._logged += 1
            _log.warning("dropped message from peer %r: %.300s", identity[:64], reason)
            if self._logged == self.budget:
                _log.warning(
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
            _log.warning(
                "%d more messages dropped unlogged in the last %.0fs (%d since start): %s",
                sum(self._suppressed.values()),
                self.interval,
                self.total,
                counts,
            )
        self._suppressed.clear()
        self._logged = 0
        self._window_end = None


class ResetLimiter:
    """Whom we RESET recently: at most one RESET per routing id per ``window`` seconds, remembering at
    most ``capacity`` routing ids (the oldest are forgotten first, and all of them after ``window``)."""

    def __init__(self, window: float, capacity: int = 10_000) -> None:
        self.window = window
        self.capacity = capacity
        self._at: OrderedDict[bytes, float] = OrderedDict()  # oldest RESET first

    def __len__(self) -> int:
        return len(self._at)

    def allow(self, identity: bytes, now: float) -> bool:
        """True (and remembered) when ``identity`` may be sent a RESET now."""
        while self._at:
            oldest, at = next(iter(self._at.items()))
            if now - at < self.window and len(self._at) < self.capacity:
                break
            del self._at[oldest]
        last = self._at.get(identity)
        if last is not None and now - last < self.window:
            return False
        self._at[identity] = now
        self._at.move_to_end(identity)
        return True
