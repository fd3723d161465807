"""Pulling blobs from the dispatcher: a window of chunk requests per blob, verified on arrival.

Each missing blob is requested a few chunks at a time (credit-based, as the ZeroMQ guide's
file transfer), written at its offset, and checked against its digest when complete. A
mismatch is discarded and fetched again; after ``max_failures`` the blob is given up.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from retia.blobs import CHUNK, BlobStore
from retia.protocol import BlobRef, BlobRequest, FileChunk

__all__ = ["BlobFetcher"]

_log = logging.getLogger(__name__)


@dataclass
class _Fetch:
    """One blob coming: planned lazily (the next offset to ask), as its announced size may be anything."""

    digest: str
    size: int  # as the submission announced it; checked against what the dispatcher sends
    received: set[int] = field(default_factory=set)  # chunk offsets written
    requested: set[int] = field(default_factory=set)  # chunk offsets asked for, not yet received
    next_offset: int = 0  # the first offset never asked for
    failures: int = 0
    progress_at: float = field(default_factory=time.monotonic)  # when it was asked for, or data came
    stalls: int = 0  # times it went without data while the dispatcher answered other messages

    @property
    def chunks(self) -> int:
        """How many chunks the announced size makes (an empty blob is one empty chunk)."""
        return max(1, -(-self.size // CHUNK))

    def wrong_size(self, chunk: FileChunk) -> str:
        """Why this chunk shows the blob is not the announced size ("" when it fits)."""
        end = chunk.offset + len(chunk.data)
        if len(chunk.data) > CHUNK or end > self.size:
            return f"larger than the {self.size} bytes announced"
        if chunk.last and end < self.size:
            return f"{end} bytes, not the {self.size} announced"
        if not chunk.last and end == self.size:
            return f"larger than the {self.size} bytes announced"
        if not chunk.last and len(chunk.data) < CHUNK:
            return "a short chunk that is not the last"
        return ""


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
        if fetch is None or chunk.offset in fetch.received or chunk.offset % CHUNK or chunk.offset < 0:
            return  # a duplicate after a re-request, a blob no longer wanted, or no offset we ask for
        if problem := fetch.wrong_size(chunk):
            self.give_up(fetch.digest, f"blob {fetch.digest[:12]} is {problem}; submit it again")
            _log.warning("blob %s given up: %s", fetch.digest[:12], problem)
            return
        self.store.write(fetch.digest, chunk.offset, bytes(chunk.data))
        self.bytes_received += len(chunk.data)
        fetch.progress_at, fetch.stalls = time.monotonic(), 0
        fetch.requested.discard(chunk.offset)
        fetch.received.add(chunk.offset)
        if len(fetch.received) < fetch.chunks:
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
        fetch.next_offset = 0
        self._fill(fetch)

    def give_up(self, digest: str, reason: str) -> None:
        if self.fetching.pop(digest, None) is not None:
            self.failed[digest] = reason

    def check_stalls(self, now: float, patience: float) -> None:
        """A blob with no data for ``patience`` seconds (while the dispatcher is heard: the caller
        checks) is asked for again; after ``max_failures`` such stalls it is given up, so the trials
        waiting for it fail instead of holding their worker forever."""
        for fetch in list(self.fetching.values()):
            if now - fetch.progress_at < patience:
                continue
            fetch.stalls += 1
            fetch.progress_at = now
            if fetch.stalls > self.max_failures:
                waited = patience * fetch.stalls
                self.give_up(
                    fetch.digest, f"no data for blob {fetch.digest[:12]} from the dispatcher in {waited:.0f}s"
                )
                _log.warning("blob %s given up: no data in %.0fs", fetch.digest[:12], waited)
                continue
            for offset in sorted(fetch.requested):
                self._request(BlobRequest(fetch.digest, offset, CHUNK))

    def resume(self) -> None:
        """After a reconnect, outstanding requests may be lost: ask for them again."""
        for fetch in self.fetching.values():
            for offset in sorted(fetch.requested):
                self._request(BlobRequest(fetch.digest, offset, CHUNK))

    def _fill(self, fetch: _Fetch) -> None:
        """Ask for the next chunks, up to the window."""
        end = fetch.chunks * CHUNK
        while len(fetch.requested) < self.window and fetch.next_offset < end:
            offset, fetch.next_offset = fetch.next_offset, fetch.next_offset + CHUNK
            fetch.requested.add(offset)
            self._request(BlobRequest(fetch.digest, offset, CHUNK))
