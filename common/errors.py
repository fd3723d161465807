"""The one exception hierarchy of retia: every error raised on purpose derives from RetiaError."""

from __future__ import annotations

__all__ = [
    "RetiaError",
    "ConfigError",
    "SerializationError",
    "PayloadTooLarge",
    "ReportError",
    "AuthenticationError",
    "ProtocolError",
    "TrialFailedError",
    "TrialCancelledError",
    "WorkerLostError",
    "InvalidArchitectureError",
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
    """A message's signature did not match the cluster key; it was dropped undecoded."""


class ProtocolError(RetiaError):
    """A message was malformed: wrong version, bad framing, undecodable or oversized."""


class InvalidArchitectureError(RetiaError, ValueError):
    """An architecture dict does not fit the model space; the message lists valid options."""


class TrialFailedError(RetiaError):
    """A trial ended in FAILED; carries the remote exception type, message and log tail."""

    def __init__(
        self,
        message: str,
        *,
        trial_id: str = "",
        exc_type: str = "",
        remote_traceback: str = "",
        log_tail: str = "",
    ) -> None:
        super().__init__(message)
        self.trial_id = trial_id
        self.exc_type = exc_type
        self.remote_traceback = remote_traceback
        self.log_tail = log_tail


class TrialCancelledError(RetiaError):
    """The trial was cancelled before it produced a final result."""


class WorkerLostError(TrialFailedError):
    """The worker running a trial died or stopped heartbeating too many times."""


class RemoteTraceback(Exception):
    """Carries a formatted remote traceback as the __cause__ of a TrialFailedError (as loky does)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return f'\n"""\n{self.tb}"""'
