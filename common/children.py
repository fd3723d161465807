"""Child processes of long-lived ones (a local cluster's, a worker supervisor's agents): they go
when their parent goes, and how one ended is said in words."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys

__all__ = ["die_with_parent", "exit_status"]


def die_with_parent() -> None:
    """For ``Popen(preexec_fn=...)``: the child gets SIGTERM when the process that started it
    dies, even by SIGKILL (Linux; elsewhere nothing)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def exit_status(code: int | None) -> str:
    """'exited with code 1', or 'was killed by SIGKILL', for a Popen's returncode."""
    if code is None or code >= 0:
        return f"exited with code {code}"
    try:
        return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"was killed by signal {-code}"
