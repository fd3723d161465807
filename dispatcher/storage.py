"""Whether the dispatcher's disk takes writes: a full, read-only or over-quota disk is a storage fault.

On a fault the dispatcher degrades instead of stopping: nothing built on the failed write is
acknowledged, new trials are refused with :attr:`StorageFault.reason`, what workers send waits
unacknowledged on their side, and :class:`StorageWatch` probes the disk with a small write every
few seconds until it takes one again (logged once each way).
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from retia.errors import StorageFault, StorageKind

__all__ = ["StorageWatch", "journal_fault", "storage_fault"]

_log = logging.getLogger(__name__)

_ERRNO_KINDS = {
    errno.ENOSPC: StorageKind.FULL,
    errno.EROFS: StorageKind.READ_ONLY,
    errno.EDQUOT: StorageKind.QUOTA,
}
# SQLITE_FULL, SQLITE_READONLY (primary codes)
_SQLITE_KINDS = {13: StorageKind.FULL, 8: StorageKind.READ_ONLY}


def storage_fault(exc: BaseException, what: str, path: str | Path) -> StorageFault | None:
    """``exc`` as a storage fault of ``what`` (the journal, an artefact, a blob) at ``path``; None when
    it is something else (a bad path, a bug), which is not the disk's fault."""
    if isinstance(exc, StorageFault):
        return exc
    if isinstance(exc, sqlite3.Error):
        return journal_fault(exc, path)
    if isinstance(exc, OSError) and exc.errno in _ERRNO_KINDS:
        return StorageFault(_ERRNO_KINDS[exc.errno], what, str(path), exc)
    return None


def journal_fault(exc: sqlite3.Error, path: str | Path) -> StorageFault:
    """A failed write or commit of the journal at ``path``: whatever the cause, its transaction is lost."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return StorageFault(_SQLITE_KINDS.get(code, StorageKind.FAILING), "journal", str(path), exc)


class StorageWatch:
    """The dispatcher's storage health: :attr:`fault` while degraded, cleared by a probe that lands.

    The probe writes ``probe_bytes`` (and fsyncs them) in each of ``roots`` on its own filesystem,
    every ``interval`` seconds while degraded."""

    def __init__(self, roots: Sequence[Path], *, interval: float = 2.0, probe_bytes: int = 1 << 20) -> None:
        self.roots = list(roots)
        self.interval = interval
        self.probe_bytes = probe_bytes
        self.fault: StorageFault | None = None
        self.failed_since_probe = False  # a write failed again after the last probe (the loop then waits)
        self._next_probe = 0.0

    @property
    def degraded(self) -> bool:
        return self.fault is not None

    def failed(self, fault: StorageFault) -> None:
        """A write failed: degraded from now until a probe lands (logged once per episode)."""
        self.failed_since_probe = True
        if self.fault is None:
            _log.error(
                "%s; degraded: new trials refused, workers' messages left unacknowledged", fault.reason
            )
            self._next_probe = time.monotonic() + self.interval
        self.fault = fault

    def probe(self, now: float) -> bool:
        """When due, try a small write on each disk; True once they all take it (no longer degraded)."""
        if self.fault is None or now < self._next_probe:
            return False
        self._next_probe = now + self.interval
        self.failed_since_probe = False
        try:
            for root in self._distinct_roots():
                self._write_probe(root)
        except OSError as exc:
            _log.debug("storage probe failed: %s", exc)
            return False
        _log.warning("the dispatcher's disk takes writes again (%s): resumed", self.fault.path)
        self.fault = None
        return True

    def _distinct_roots(self) -> list[Path]:
        """One existing directory per filesystem: the nearest existing parent of each root."""
        seen: set[int] = set()
        roots: list[Path] = []
        for root in self.roots:
            while not root.exists() and root.parent != root:
                root = root.parent
            device = root.stat().st_dev
            if device not in seen:
                seen.add(device)
                roots.append(root)
        return roots

    def _write_probe(self, root: Path) -> None:
        path = root / f".retia-probe-{os.getpid()}"
        try:
            with open(path, "wb") as f:
                f.write(bytes(self.probe_bytes))
                f.flush()
                os.fsync(f.fileno())
        finally:
            try:
                path.unlink(missing_ok=True)
            except OSError:  # read-only: it was never created
                pass
