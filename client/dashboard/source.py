"""What the dashboard shows, read without writing: an experiment directory, or a dispatcher's status.

An experiment directory is read with :class:`~retia.client.results.ExperimentRecord` (the writer's own
reader), again only when ``trials.jsonl`` changed. A trial's files are opened beneath its output
directory with :func:`~retia.artifact_paths.open_beneath` after :func:`~retia.artifact_paths.artifact_parts`
checked the name, so no name reaches outside it and no symbolic link is followed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retia.artifact_paths import artifact_parts, open_beneath
from retia.credentials import CREDENTIAL_ENV, Credential, Role
from retia.errors import ConfigError, RetiaError
from retia.protocol import StatusReply

from ..results import ExperimentRecord, ExperimentSettings, TrialResult

__all__ = ["ClusterSource", "ExperimentSource", "TrialFile", "failure_traceback"]

_log = logging.getLogger(__name__)

MAX_FILES = 1000  # a trial's files listed at most (a trial writing more is listed in part)
MAX_ONNX_BYTES = 64 << 20  # a model.onnx larger than this is offered for download, not drawn


@dataclass(frozen=True)
class TrialFile:
    """One regular file of a trial's output directory: its name (``/`` between components) and size."""

    name: str
    size: int


class ExperimentSource:
    """An experiment directory, finished or still being written; every method only reads."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._record = ExperimentRecord(self.path)
        self._settings = self._record.settings()  # ConfigError when it is no experiment directory
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._results: list[TrialResult] = []
        self._labels: list[str] = []

    @property
    def settings(self) -> ExperimentSettings:
        return self._settings

    def results(self) -> list[TrialResult]:
        """The trials in order of their number, replayed again only when ``trials.jsonl`` changed."""
        try:
            st = os.stat(self._record.trials_file)
            stamp = (st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            stamp = (0, 0)
        with self._lock:
            if stamp != self._stamp:
                loaded = self._record.load()
                self._results = [loaded[k] for k in sorted(loaded)]
                labels: dict[str, None] = {}
                for r in self._results:
                    labels.update(dict.fromkeys(r.arch))
                self._labels = list(labels)
                self._stamp = stamp
            return self._results

    def labels(self) -> list[str]:
        """The architecture's labels, in the order the trials first used them."""
        self.results()
        return self._labels

    def trial(self, key: int) -> TrialResult:
        """Trial number ``key``, or a ConfigError naming the range there is."""
        results = self.results()
        if 0 <= key < len(results) and results[key].key == key:
            return results[key]
        for r in results:
            if r.key == key:
                return r
        raise ConfigError(f"no trial #{key} in {self.path} (it has {len(results)} trials, numbered from 0)")

    def files(self, key: int) -> list[TrialFile]:
        """The regular files of the trial's output directory (symbolic links are not followed)."""
        root = self.trial(key).output_dir
        if not root or not os.path.isdir(root):
            return []
        out: list[TrialFile] = []
        for folder, dirs, names in os.walk(root, followlinks=False):
            dirs.sort()
            for name in sorted(names):
                full = os.path.join(folder, name)
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    out.append(TrialFile(os.path.relpath(full, root).replace(os.sep, "/"), st.st_size))
                if len(out) >= MAX_FILES:
                    return out
        return out

    def open_file(self, key: int, name: str) -> tuple[int, int]:
        """``(descriptor, size)`` of file ``name`` of the trial, opened read-only beneath its output
        directory; UnsafePathError for a name that is no plain relative path, FileNotFoundError else."""
        parts = artifact_parts(name)  # refuses "/x", "//x", "..", "\\", control characters
        root = self.trial(key).output_dir
        if not root:
            raise FileNotFoundError(f"trial #{key} has no output directory (yet)")
        try:
            fd = open_beneath(root, parts, os.O_RDONLY)
        except OSError as exc:
            raise FileNotFoundError(f"trial #{key} has no file {name!r} ({exc.strerror})") from None
        return fd, os.fstat(fd).st_size

    def read_file(self, key: int, name: str, limit: int, *, tail: bool = False) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of the trial's file (its end with ``tail``), and its whole size."""
        fd, size = self.open_file(key, name)
        try:
            if tail and size > limit:
                os.lseek(fd, size - limit, os.SEEK_SET)
            chunks, left = [], limit
            while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                chunks.append(chunk)
                left -= len(chunk)
            return b"".join(chunks), size
        finally:
            os.close(fd)

    def onnx_graph(self, key: int, name: str = "model.onnx") -> dict[str, Any] | None:
        """The trial's ONNX graph as nodes and edges (None: it has no such file); weights are not read."""
        try:
            data, size = self.read_file(key, name, MAX_ONNX_BYTES + 1)
        except FileNotFoundError:
            return None
        if size > MAX_ONNX_BYTES:
            raise ConfigError(
                f"trial #{key}'s {name} is {size} bytes, over the {MAX_ONNX_BYTES} the dashboard draws: "
                "download it and open it with Netron"
            )
        return onnx_graph(data)


def onnx_graph(data: bytes) -> dict[str, Any]:
    """Nodes (op, name, inputs, outputs), graph inputs and outputs of an ONNX model's bytes."""
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # onnx raises DecodeError and others for a file that is no ONNX model
        raise ConfigError(f"not a readable ONNX model: {exc}") from None
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    return {
        "inputs": [i.name for i in graph.input if i.name not in weights],
        "outputs": [o.name for o in graph.output],
        "nodes": [
            {
                "op": node.op_type,
                "name": node.name,
                "inputs": [i for i in node.input if i and i not in weights],
                "weights": [i for i in node.input if i in weights],
                "outputs": list(node.output),
            }
            for node in graph.node
        ],
        "opset": [{"domain": o.domain or "ai.onnx", "version": o.version} for o in model.opset_import],
    }


def failure_traceback(log: str) -> str:
    """The last Python traceback in a trial's log (from its ``Traceback`` line on), or ``""``."""
    start = log.rfind("Traceback (most recent call last):")
    return "" if start < 0 else log[start:].rstrip() + "\n"


class ClusterSource:
    """A dispatcher watched as a client (a credential file, never the cluster key): its workers."""

    def __init__(self, address: str, credential: str | Path | None = None, *, timeout: float = 10.0) -> None:
        path = credential or os.environ.get(CREDENTIAL_ENV)
        if not path:
            raise ConfigError(
                f"watching {address} needs a credential file: pass --credential (or set ${CREDENTIAL_ENV}); "
                "issue one on the head node with `retia credential issue --role client NAME` "
                "(the dashboard never holds the cluster key)"
            )
        self.address = address
        self.credential = Credential.load(path)
        self.timeout = timeout
        self._backend: Any = None
        self._lock = threading.Lock()
        self._last: tuple[float, StatusReply] | None = None

    def status(self, max_age: float = 1.0) -> StatusReply:
        """The dispatcher's status, asked at most once per ``max_age`` seconds over one connection."""
        with self._lock:
            if self._last is not None and time.monotonic() - self._last[0] < max_age:
                return self._last[1]
            if self._backend is None:
                from retia.client.backend import connect

                if self.credential.role is Role.WORKER:
                    raise ConfigError(f"{self.credential.label} is a worker's: use a client or admin one")
                self._backend = connect(self.address, credential=self.credential, timeout=self.timeout)
            try:
                reply: StatusReply = self._backend.status(timeout=self.timeout)
            except RetiaError:
                _log.warning("no status from %s", self.address)
                raise
            self._last = (time.monotonic(), reply)
            return reply

    def close(self) -> None:
        with self._lock:
            if self._backend is not None:
                self._backend.close()
                self._backend = None
