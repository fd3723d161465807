"""Trial artefacts brought home: files a worker streams back land under the dispatcher's home."""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path, PurePosixPath

from retia.protocol import FileChunk

from .storage import storage_fault

__all__ = ["ArtifactStore"]

_log = logging.getLogger(__name__)


class ArtifactStore:
    """``<root>/<client>/<trial>/<relative path>``; paths that try to escape are refused."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one store per dispatcher) every STATE event names it
    def trial_path(self, client: str, trial: str) -> str:
        return os.path.join(self._root, _safe_name(client), _safe_name(trial))

    def write(self, client: str, trial: str, chunk: FileChunk) -> bool:
        """Write one chunk; False for a path that escapes. A full or read-only disk raises
        :class:`~retia.dispatcher.storage.StorageFault` (the chunk must then not be acknowledged)."""
        parts = PurePosixPath(chunk.path).parts
        if not parts or parts[0] == "/" or ".." in parts:
            _log.warning("refused artefact path %r for trial %s", chunk.path, trial)
            return False
        target = os.path.join(self.trial_path(client, trial), *parts)
        try:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            mode = "r+b" if chunk.offset and os.path.exists(target) else "wb"
            with open(target, mode) as f:
                f.seek(chunk.offset)
                f.write(chunk.data)
        except OSError as exc:
            fault = storage_fault(exc, "an artefact", target)
            if fault is None:
                raise
            raise fault from exc
        return True


def _safe_name(name: str) -> str:
    if _SAFE.fullmatch(name):  # trial and client ids, in practice
        return name
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned.strip(".") or "_"


_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*[A-Za-z0-9_-]|[A-Za-z0-9_-]")
