"""The one exception hierarchy of retia: every error raised on purpose derives from RetiaError."""

from __future__ import annotations

from enum import Enum
from typing import Any

from .failure import Failure, FailureKind

__all__ = [
    "RetiaError",
    "ConfigError",
    "SerializationError",
    "PayloadTooLarge",
    "ReportError",
    "AuthenticationError",
    "ProtocolError",
    "MessageTooLarge",
    "StorageFault",
    "UnsafePathError",
    "TrialFailedError",
    "TrialCancelledError",
    "TrialTimeoutError",
    "TrialProcessDiedError",
    "BlobUnavailableError",
    "ReportsLostError",
    "WorkerLostError",
    "InvalidArchitectureError",
    "ChoiceNotFixedError",
    "TrialStateError",
    "PlacementError",
    "SubmissionRefusedError",
    "ClusterLostError",
    "DispatcherLostError",
    "CredentialRefusedError",
]


class RetiaError(Exception):
    """Root of every error retia raises on purpose."""


class ConfigError(RetiaError, ValueError):
    """Invalid configuration: a bad CLI flag, key file, or option value."""


class SerializationError(RetiaError):
    """An object could not be dumped or loaded; the message names the argument path."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class PayloadTooLarge(SerializationError):
    """A pickled argument exceeded the size cap; trace it or load it inside the trial."""

    def __init__(self, message: str, path: str = "", size: int = 0) -> None:
        super().__init__(message, path)
        self.size = size


class ReportError(RetiaError, ValueError):
    """A reported metric was malformed, or a final result was reported twice."""


class AuthenticationError(RetiaError):
    """A message's signature did not match its session's key (or its credential's); it was dropped
    undecoded."""


class ProtocolError(RetiaError):
    """A message was malformed: wrong version, bad framing, undecodable or oversized."""


class MessageTooLarge(ProtocolError):
    """A message over the receiver's limit. When it was signed with the cluster key, ``message`` is
    what it said, so the receiver can answer with a refusal naming it (nothing waits forever)."""

    def __init__(self, text: str, message: Any = None) -> None:
        super().__init__(text)
        self.message = message


class StorageKind(str, Enum):
    """How the dispatcher's disk refused a write (a field of StorageFault, not an error itself)."""

    FULL = "full"
    READ_ONLY = "read-only"
    QUOTA = "over quota"
    FAILING = "failing"


class StorageFault(RetiaError):
    """A write to the dispatcher's disk failed; what depended on it was neither stored nor acknowledged."""

    def __init__(self, kind: StorageKind, what: str, path: str, cause: BaseException) -> None:
        self.kind, self.what, self.path = kind, what, path
        happened, to_do = _STORAGE_SAYING[kind]
        detail = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        self.reason = (
            f"{happened} ({what} at {path}: {detail}): {to_do}; "
            "the dispatcher resumes by itself once it can write again"
        )
        super().__init__(self.reason)


_STORAGE_SAYING = {  # what happened, what to do
    StorageKind.FULL: ("the dispatcher's disk is full", "free space there"),
    StorageKind.READ_ONLY: ("the dispatcher's disk is read-only", "remount it read-write"),
    StorageKind.QUOTA: ("the dispatcher's disk quota is exceeded", "free space there or raise the quota"),
    StorageKind.FAILING: ("the dispatcher's disk failed a write", "check the disk"),
}


class UnsafePathError(RetiaError, ValueError):
    """A peer-supplied artefact name that is no plain relative path (absolute, ``..``, a control
    character...) or that would reach outside its trial's directory: the one file is refused."""


class InvalidArchitectureError(RetiaError, ValueError):
    """An architecture dict does not fit the model space; the message lists valid options."""


class ChoiceNotFixedError(RetiaError, TypeError):
    """A ValueChoice (or an expression of some) used where Python needs one plain bool or number
    (``if``, ``int()``, ``max()``) before an architecture is chosen; the message says what to write."""


class TrialFailedError(RetiaError):
    """A trial ended in FAILED; carries its :class:`~retia.failure.Failure` (type, traceback, log tail)."""

    def __init__(
        self,
        message: str,
        *,
        trial_id: str = "",
        exc_type: str = "",
        remote_traceback: str = "",
        log_tail: str = "",
        failure: Failure | None = None,
    ) -> None:
        super().__init__(message)
        self.trial_id = trial_id
        self.failure = failure
        self.exc_type = exc_type or (failure.exc_type if failure else "")
        self.remote_traceback = remote_traceback or (failure.traceback if failure else "")
        self.log_tail = log_tail or (failure.log_tail if failure else "")


class TrialStateError(RetiaError):
    """A trial was asked to move between states its lifecycle does not join (a stale or bad message)."""


class TrialCancelledError(RetiaError):
    """The trial was cancelled before it produced a final result."""


class TrialTimeoutError(TrialFailedError):
    """The trial ran past its timeout; the worker stopped it."""


class TrialProcessDiedError(TrialFailedError):
    """The trial process ended before fit returned: a crash, ``os._exit`` or a signal (see ``failure``)."""


class BlobUnavailableError(TrialFailedError):
    """A large argument of the trial could not be fetched or verified on its worker."""


class ReportsLostError(TrialFailedError):
    """Reports the attempt sent never reached the dispatcher (its DONE says how many there were)."""


class WorkerLostError(TrialFailedError):
    """The worker running a trial died or stopped heartbeating too many times."""


class PlacementError(TrialFailedError):
    """No worker of the cluster has the GPUs the trial asks for (``gpus=``); it waited, then failed."""


class SubmissionRefusedError(TrialFailedError):
    """The dispatcher refused the trial's SUBMIT or a blob it needs; ``reason`` is the dispatcher's."""

    def __init__(self, message: str, *, trial_id: str = "", reason: str = "") -> None:
        super().__init__(message, trial_id=trial_id)
        self.reason = reason


class ClusterLostError(RetiaError):
    """The cluster can no longer run trials (every worker, or the dispatcher, is gone): waits end with it."""


class DispatcherLostError(ClusterLostError):
    """The dispatcher exited, or stayed silent past ``lost_after``; a later wait works if it comes back."""


class CredentialRefusedError(AuthenticationError, ClusterLostError):
    """The dispatcher refuses this peer's credential (revoked, or its id is another's): waits end with it."""


_ERROR_OF_KIND: dict[FailureKind, type[TrialFailedError]] = {
    FailureKind.TIMEOUT: TrialTimeoutError,
    FailureKind.PROCESS_DIED: TrialProcessDiedError,
    FailureKind.BLOB: BlobUnavailableError,
    FailureKind.WORKER_LOST: WorkerLostError,
    FailureKind.REPORTS_LOST: ReportsLostError,
    FailureKind.UNPLACEABLE: PlacementError,
}


def error_for(failure: Failure, message: str, *, trial_id: str = "") -> TrialFailedError:
    """The error class a failure of this kind raises, built from the record (its traceback as cause)."""
    cls = _ERROR_OF_KIND.get(failure.kind, TrialFailedError)
    error = cls(message, trial_id=trial_id, failure=failure)
    if failure.traceback:
        error.__cause__ = RemoteTraceback(failure.traceback)
    return error


class RemoteTraceback(Exception):
    """Carries a formatted remote traceback as the __cause__ of a TrialFailedError (as loky does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
