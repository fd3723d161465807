"""Why a trial attempt failed: one record for the wire, the journal and ``TrialFailedError``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Failure", "FailureKind"]


class FailureKind(str, Enum):
    """Who or what ended the attempt; the client rebuilds the matching error class from it."""

    RAISED = "raised"  # fit raised (or called sys.exit): exc_type is the user's exception type
    PROCESS_DIED = "process_died"  # the trial process ended (segfault, os._exit, SIGKILL) before fit returned
    TIMEOUT = "timeout"  # the trial ran past its timeout and was stopped
    WORKER_LOST = "worker_lost"  # its worker died or went silent, and the retries were spent
    BLOB = "blob"  # a large argument could not be fetched or verified on the worker
    STOPPED = "stopped"  # the worker stopped it (shutting down, or too busy to take it)
    REPORTS_LOST = "reports_lost"  # reports the attempt sent never reached the dispatcher
    UNPLACEABLE = "unplaceable"  # no worker of the cluster has the GPUs it asks for


@dataclass(frozen=True)
class Failure:
    """The reason in one line, and what the trial left to explain it."""

    kind: FailureKind
    reason: str
    exc_type: str = ""
    message: str = ""
    traceback: str = ""
    log_tail: str = ""
    exit_code: int | None = None  # of the trial process, when it died
    signal: str = ""  # the signal that killed it ("SIGKILL"), when one did
