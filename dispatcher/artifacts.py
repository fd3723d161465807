"""Trial artefacts brought home: files a worker streams back land under the dispatcher's home."""

from __future__ import annotations

import errno
import functools
import logging
import os
import re
from pathlib import Path

from retia.artifact_paths import artifact_parts, open_beneath
from retia.errors import UnsafePathError
from retia.protocol import FileChunk

from .storage import storage_fault

__all__ = ["ArtifactStore"]

_log = logging.getLogger(__name__)


class ArtifactStore:
    """``<root>/<client>/<trial>/<relative path>``; a name that would land anywhere else is refused."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._root = str(root)

    @functools.lru_cache(maxsize=4096)  # noqa: B019 (one store per dispatcher) every STATE event names it
    def trial_path(self, client: str, trial: str) -> str:
        return os.path.join(self._root, _safe_name(client), _safe_name(trial))

    def write(self, client: str, trial: str, chunk: FileChunk) -> str:
        """Write one chunk: "" once written, else why it was refused (and logged, so a DONE's inline
        file is skipped by it alone): a name that is no plain relative path (see
        :func:`~retia.artifact_paths.artifact_parts`), or one that meets a symbolic link, a file where
        a directory must go or a directory where the file must go. The file is reached one component
        at a time with ``O_NOFOLLOW`` (:func:`~retia.artifact_paths.open_beneath`), not by checking a
        resolved path and then opening it: a link planted or swapped in is never followed, with no
        window between a check and the write. A full or read-only disk raises
        :class:`~retia.dispatcher.storage.StorageFault` (the chunk must then not be acknowledged);
        a failure to make the trial's own directory (the dispatcher's) is raised as it is."""
        try:
            parts = artifact_parts(chunk.path)
        except UnsafePathError as exc:
            return self._refused(trial, str(exc))
        directory = self.trial_path(client, trial)
        target = os.path.join(directory, *parts)
        flags = os.O_WRONLY | os.O_CREAT | (0 if chunk.offset else os.O_TRUNC)
        try:
            os.makedirs(directory, exist_ok=True)
            try:
                fd = open_beneath(directory, parts, flags, make_dirs=True)
            except OSError as exc:
                if exc.errno not in _CLASHES:
                    raise
                return self._refused(
                    trial,
                    f"artefact {chunk.path!r:.300} meets a symbolic link, a file where a directory must "
                    f"go, or a directory or special file where it must go ({exc.strerror})",
                )
            try:
                have = os.fstat(fd).st_size
                if chunk.offset > have:  # a hole: a sparse file of any size, for whoever reads it
                    return self._refused(
                        trial,
                        f"artefact {chunk.path!r:.300}: a chunk at offset {chunk.offset}, past its "
                        f"{have} bytes (chunks come in order)",
                    )
                data, done = memoryview(chunk.data), 0
                while done < len(data):
                    done += os.pwrite(fd, data[done:], chunk.offset + done)
            finally:
                os.close(fd)
        except OSError as exc:
            fault = storage_fault(exc, "an artefact", target)
            if fault is None:
                raise
            raise fault from exc
        return ""

    @staticmethod
    def _refused(trial: str, reason: str) -> str:
        _log.warning("trial %s: refused an artefact: %s", trial, reason)
        return reason


# what a peer's names can run into in its own trial's directory: its file alone is refused
_CLASHES = frozenset(
    {errno.ELOOP, errno.ENOTDIR, errno.EISDIR, errno.ENXIO, errno.EEXIST, errno.ENAMETOOLONG}
)


def _safe_name(name: str) -> str:
    if _SAFE.fullmatch(name):  # trial and client ids, in practice
        return name
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return cleaned.strip(".") or "_"


_SAFE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*[A-Za-z0-9_-]|[A-Za-z0-9_-]")
