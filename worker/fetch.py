"""Pulling blobs from the dispatcher: a window of chunk requests per blob, verified on arrival.

Each missing blob is requested a few chunks at a time (credit-based, as the ZeroMQ guide's
file transfer), written at its offset, and checked against its digest when complete. A
mismatch is discarded and fetched again; after ``max_failures`` the blob is given up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from retia.blobs import CHUNK, BlobStore
from retia.protocol import BlobRef, BlobRequest, FileChunk

__all__ = ["BlobFetcher"]

_log = logging.getLogger(__name__)


@dataclass
class _Fetch:
    digest: str
    size: int
    received: set[int] = field(default_factory=set)  # chunk offsets written
    requested: set[int] = field(default_factory=set)  # chunk offsets asked for, not yet received
    failures: int = 0

    @property
    def offsets(self) -> list[int]:
        return list(range(0, self.size, CHUNK)) or [0]


class BlobFetcher:
    """Tracks the blobs this worker lacks; the agent feeds it BLOB_DATA and asks when all are here."""

    def __init__(
        self,
        store: BlobStore,
        request: Callable[[BlobRequest], None],
        *,
        window: int = 8,
        max_failures: int = 3,
    ) -> None:
        self.store = store
        self._request = request
        self.window = window
        self.max_failures = max_failures
        self.fetching: dict[str, _Fetch] = {}
        self.failed: dict[str, str] = {}
        self.bytes_received = 0
        # Re-hashing a cached blob takes about a second per GB: off the agent's loop, so heartbeats go on.
        self._verifier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retia-blob-verify")
        self._verifying: dict[str, tuple[Future[bool], int]] = {}

    def need(self, blobs: list[BlobRef]) -> None:
        """Check cached blobs (in a thread) and fetch every one of ``blobs`` not here intact."""
        for blob in blobs:
            digest = blob.digest
            if digest in self.fetching or digest in self._verifying:
                continue
            self.failed.pop(digest, None)
            if self.store.has(digest):
                self._verifying[digest] = (self._verifier.submit(self.store.valid, digest), blob.size)
            else:
                self._fetch(digest, blob.size)

    def poll(self) -> None:
        """Collect finished verifications: a corrupt cached copy is fetched again."""
        for digest, (future, size) in list(self._verifying.items()):
            if future.done():
                del self._verifying[digest]
                if not future.result():
                    self._fetch(digest, size)

    def ready(self, blobs: list[BlobRef]) -> bool:
        self.poll()
        return not any(b.digest in self.fetching or b.digest in self._verifying for b in blobs)

    def close(self) -> None:
        self._verifier.shutdown(wait=True, cancel_futures=True)

    def _fetch(self, digest: str, size: int) -> None:
        self.fetching[digest] = _Fetch(digest, size)
        self._fill(self.fetching[digest])

    def on_data(self, chunk: FileChunk) -> None:
        fetch = self.fetching.get(chunk.path)
        if fetch is None or chunk.offset in fetch.received:
            return  # a duplicate after a re-request, or a blob no longer wanted
        self.store.write(fetch.digest, chunk.offset, bytes(chunk.data))
        self.bytes_received += len(chunk.data)
        fetch.requested.discard(chunk.offset)
        fetch.received.add(chunk.offset)
        if len(fetch.received) < len(fetch.offsets):
            self._fill(fetch)
            return
        if self.store.finish(fetch.digest):
            del self.fetching[fetch.digest]
            _log.info("blob %s (%d bytes) fetched and verified", fetch.digest[:12], fetch.size)
            return
        fetch.failures += 1
        _log.warning(
            "blob %s failed verification (%d/%d); fetching it again",
            fetch.digest[:12],
            fetch.failures,
            self.max_failures,
        )
        if fetch.failures >= self.max_failures:
            self.give_up(fetch.digest, f"blob {fetch.digest[:12]} failed verification {fetch.failures} times")
            return
        fetch.received.clear()
        fetch.requested.clear()
        self._fill(fetch)

    def give_up(self, digest: str, reason: str) -> None:
        if self.fetching.pop(digest, None) is not None:
            self.failed[digest] = reason

    def resume(self) -> None:
        """After a reconnect, outstanding requests may be lost: ask for them again."""
        for fetch in self.fetching.values():
            fetch.requested.clear()
            self._fill(fetch)

    def _fill(self, fetch: _Fetch) -> None:
        for offset in fetch.offsets:
            if len(fetch.requested) >= self.window:
                return
            if offset not in fetch.received and offset not in fetch.requested:
                fetch.requested.add(offset)
                self._request(BlobRequest(fetch.digest, offset, CHUNK))
