"""Content-addressed blobs: large arguments shipped once per worker, never once per trial.

``retia.dump(..., blobs=...)`` turns a large tensor, array, bytes buffer or pickle into a
blob named by its BLAKE2b digest and leaves only ``[digest, kind, size]`` in the payload.
Arrays and tensors are stored in numpy's ``.npy`` layout and loaded with copy-on-write
memory maps: two trials in a row read the same page cache, and neither can change the file.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CHUNK",
    "Blob",
    "BlobStore",
    "make_blob",
    "bytes_blob",
    "pickle_blob",
    "read_blob",
    "digest_of",
    "digest_of_fd",
]

_log = logging.getLogger(__name__)
CHUNK = 1 << 20


def _hasher() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=32)


@dataclass(frozen=True)
class Blob:
    """A value ready to ship: its digest, how to rebuild it, and its bytes (views, not copies)."""

    digest: str
    kind: str  # "npy" | "torch" | "bytes" | "pickle"
    size: int
    parts: tuple[Any, ...] = field(repr=False, default=())

    def chunks(self, chunk: int = CHUNK) -> Iterator[tuple[int, memoryview]]:
        """``(offset, bytes)`` pieces of at most ``chunk`` bytes, without copying the value."""
        offset = 0
        for part in self.parts:
            view = memoryview(part).cast("B")
            for start in range(0, len(view), chunk):
                piece = view[start : start + chunk]
                yield offset, piece
                offset += len(piece)


def _blob(kind: str, *parts: Any) -> Blob:
    h = _hasher()
    size = 0
    for part in parts:
        view = memoryview(part).cast("B")
        h.update(view)
        size += len(view)
    return Blob(h.hexdigest(), kind, size, parts)


def make_blob(value: Any) -> Blob | None:
    """A blob for a tensor, an array or a bytes buffer; None for anything else."""
    if isinstance(value, (bytes, bytearray)):
        return bytes_blob(value)
    np = sys.modules.get("numpy")
    torch = sys.modules.get("torch")
    kind = "npy"
    if torch is not None and isinstance(value, torch.Tensor):
        key = (value.data_ptr(), value._version, tuple(value.shape), str(value.dtype), value.device.type)
        cached = _tensor_digests.get(id(value))
        try:
            array = value.detach().cpu().contiguous().numpy()
        except (TypeError, RuntimeError):
            return None  # e.g. bfloat16 has no numpy dtype: it is pickled instead
        blob = _npy_blob("torch", array, cached[1] if cached and cached[0] == key else None)
        if not cached or cached[0] != key:
            if not cached:
                weakref.finalize(value, _tensor_digests.pop, id(value), None)
            _tensor_digests[id(value)] = (key, blob.digest)
        return blob
    if np is None or not isinstance(value, np.ndarray) or value.dtype.hasobject:
        return None
    return _npy_blob(kind, value, None)


# A tensor's digest, kept while the tensor lives and is unchanged (its version counter moves on
# every in-place write): submitting the same evaluator twenty times hashes its data once.
_tensor_digests: dict[int, tuple[tuple[Any, ...], str]] = {}


def _npy_blob(kind: str, value: Any, digest: str | None) -> Blob:
    import numpy as np

    array = np.ascontiguousarray(value)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    parts = (header.getvalue(), array.reshape(-1).view(np.uint8) if array.size else b"")
    if digest is None:
        return _blob(kind, *parts)
    return Blob(digest, kind, len(parts[0]) + array.nbytes, parts)


def bytes_blob(data: bytes | bytearray) -> Blob:
    return _blob("bytes", data)


def pickle_blob(data: bytes) -> Blob:
    return _blob("pickle", data)


def read_blob(path: Path, kind: str) -> Any:
    """Rebuild a value from its blob file (arrays and tensors memory-mapped copy-on-write)."""
    if kind in ("npy", "torch"):
        import numpy as np

        array = np.load(path, mmap_mode="c", allow_pickle=False)
        if kind == "torch":
            import torch

            return torch.from_numpy(array)
        return array
    data = path.read_bytes()
    if kind == "pickle":
        import cloudpickle

        return cloudpickle.loads(data)
    return data


def digest_of(path: Path) -> str:
    h = _hasher()
    with open(path, "rb") as f:
        while block := f.read(CHUNK * 4):
            h.update(block)
    return h.hexdigest()


def digest_of_fd(fd: int) -> str:
    """The digest of the file open at ``fd``, read from its start without moving its offset."""
    h = _hasher()
    offset = 0
    while block := os.pread(fd, CHUNK * 4, offset):
        h.update(block)
        offset += len(block)
    return h.hexdigest()


class BlobStore:
    """A directory of blobs named by digest, with a size budget and least-recently-used eviction."""

    def __init__(self, root: Path, budget_bytes: int = 20 << 30) -> None:
        self.root = root
        self.budget_bytes = budget_bytes
        self._hashing: dict[str, tuple[int, Any]] = {}  # digest -> (next offset, running hash) of a write
        root.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a blob digest: {digest!r}")
        return self.root / digest

    def has(self, digest: str) -> bool:
        return self.path(digest).exists()

    def valid(self, digest: str) -> bool:
        """True if the blob is present and its bytes match its name; a corrupt copy is deleted.

        Always re-hashed (about 1 GB/s): silent corruption keeps a file's size and mtime.
        """
        path = self.path(digest)
        if not path.exists():
            return False
        if digest_of(path) != digest:
            _log.warning("blob %s is corrupt; discarding it", digest[:12])
            path.unlink(missing_ok=True)
            return False
        return True

    def write(self, digest: str, offset: int, data: bytes) -> None:
        """Write a chunk; chunks arriving in order are hashed as they come, so finish() need not re-read.

        A chunk goes where the blob's bytes end or before (one sent again): ValueError for one past
        its end, which would leave a hole (a sparse file of any size: finish() would hash it all), and
        for a blob larger than the store's budget."""
        partial = self.path(digest).with_suffix(".partial")
        have = partial.stat().st_size if partial.exists() else 0
        if offset > have:
            raise ValueError(
                f"a chunk at offset {offset} of blob {digest[:12]}, which has {have} bytes: chunks come in "
                "order; send the blob again from offset 0"
            )
        if offset + len(data) > self.budget_bytes:
            raise ValueError(
                f"blob {digest[:12]} would be over {offset + len(data)} bytes, more than the dispatcher's "
                f"blob store holds ({self.budget_bytes}); pass less data, or raise --blob-budget-gb"
            )
        mode = "r+b" if partial.exists() else "wb"
        with open(partial, mode) as f:
            f.seek(offset)
            f.write(data)
        if offset == 0:
            self._hashing[digest] = (0, _hasher())
        state = self._hashing.get(digest)
        if state is not None and state[0] == offset:
            state[1].update(data)
            self._hashing[digest] = (offset + len(data), state[1])
        elif state is not None:
            del self._hashing[digest]  # out of order: finish() hashes the file instead

    def finish(self, digest: str) -> bool:
        """Verify a fully written blob and publish it; a mismatch is discarded (and must be re-sent)."""
        partial = self.path(digest).with_suffix(".partial")
        state = self._hashing.pop(digest, None)
        if not partial.exists():
            return False
        if state is not None and state[0] == partial.stat().st_size:
            actual = state[1].hexdigest()
        else:
            actual = digest_of(partial)
        if actual != digest:
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, self.path(digest))
        return True

    def read(self, digest: str, offset: int, length: int) -> bytes:
        with open(self.path(digest), "rb") as f:
            f.seek(offset)
            return f.read(length)

    def size(self, digest: str) -> int:
        return self.path(digest).stat().st_size

    def touch(self, digest: str) -> None:
        path = self.path(digest)
        if path.exists():
            os.utime(path)  # least recently used goes first

    def evict(self, keep: set[str]) -> list[str]:
        """Delete least recently used blobs not in ``keep`` until the store fits its budget."""
        files = [p for p in self.root.iterdir() if p.suffix == "" and p.is_file()]
        total = sum(p.stat().st_size for p in files)
        removed: list[str] = []
        for path in sorted(files, key=lambda p: p.stat().st_mtime):
            if total <= self.budget_bytes:
                break
            if path.name in keep:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            removed.append(path.name)
        if removed:
            _log.info("evicted %d blobs to stay under %d bytes", len(removed), self.budget_bytes)
        return removed
