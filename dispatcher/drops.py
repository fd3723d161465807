"""What the dispatcher keeps about peers it does not know: bounded, whatever they send.

A peer earns per-peer state only with a valid HELLO. Before that, its junk is logged within the
one budget of :class:`~retia.droplog.DropLog`, and a peer that sends signed messages without
saying HELLO (the dispatcher restarted) is asked to say HELLO (RESET) once per liveness window,
remembered in a table of bounded size.
"""

from __future__ import annotations

from collections import OrderedDict

__all__ = ["ResetLimiter"]


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
