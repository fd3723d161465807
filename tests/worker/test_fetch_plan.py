"""A blob fetch plan is bounded by what arrives, not by the size a submission announced (issue 16, 19)."""

from __future__ import annotations

import hashlib
import time
import tracemalloc
from pathlib import Path

import pytest

from retia.blobs import CHUNK, BlobStore
from retia.protocol import BlobRef, BlobRequest, FileChunk
from retia.worker.fetch import BlobFetcher

pytestmark = pytest.mark.timeout(30)


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=32).hexdigest()


def _fetcher(tmp_path: Path) -> tuple[BlobFetcher, list[BlobRequest]]:
    asked: list[BlobRequest] = []
    return BlobFetcher(BlobStore(tmp_path / "blobs"), asked.append), asked


def _served(data: bytes, req: BlobRequest) -> FileChunk:
    """What the dispatcher answers a BLOB_GET with (dispatcher/service.py, _on_blob_get)."""
    part = data[req.offset : req.offset + min(req.length, CHUNK)]
    return FileChunk(req.digest, req.offset, part, req.offset + len(part) >= len(data))


def test_a_huge_announced_size_builds_no_plan(tmp_path: Path) -> None:
    fetcher, asked = _fetcher(tmp_path)
    digest = _digest(b"small")
    tracemalloc.start()
    try:
        fetcher.need([BlobRef(digest, 10**12)])  # before: a list of 953,675 offsets, built per chunk
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert [r.offset for r in asked] == [i * CHUNK for i in range(fetcher.window)]
    fetcher.close()


def test_a_blob_smaller_than_announced_fails_instead_of_waiting(tmp_path: Path) -> None:
    fetcher, asked = _fetcher(tmp_path)
    data = b"small"
    digest = _digest(data)
    fetcher.need([BlobRef(digest, 10**12)])
    fetcher.on_data(_served(data, asked[0]))
    assert digest not in fetcher.fetching
    assert "5 bytes, not the 1000000000000 announced" in fetcher.failed[digest]
    fetcher.close()


def test_a_blob_larger_than_announced_fails(tmp_path: Path) -> None:
    fetcher, asked = _fetcher(tmp_path)
    data = bytes(3 * CHUNK)
    digest = _digest(data)
    fetcher.need([BlobRef(digest, 2 * CHUNK)])
    assert [r.offset for r in asked] == [0, CHUNK]  # the plan ends where the announced size does
    fetcher.on_data(_served(data, asked[0]))
    fetcher.on_data(_served(data, asked[1]))  # not the last, yet at the announced end
    assert "larger than the 2097152 bytes announced" in fetcher.failed[digest]
    fetcher.close()


def test_a_blob_of_the_announced_size_arrives_and_verifies(tmp_path: Path) -> None:
    fetcher, asked = _fetcher(tmp_path)
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 1)  # two chunks and a bit
    digest = _digest(data)
    fetcher.need([BlobRef(digest, len(data))])
    while digest in fetcher.fetching:
        fetcher.on_data(_served(data, asked.pop(0)))
    assert digest not in fetcher.failed and fetcher.store.has(digest)
    assert fetcher.bytes_received == len(data)
    fetcher.close()


def test_a_blob_the_dispatcher_never_answers_for_is_asked_again_then_given_up(tmp_path: Path) -> None:
    """Found by the signed fuzz at 10,000 examples: RUNs naming blobs nobody sent held the agent's
    slots forever, and a real trial then found it busy."""
    fetcher, asked = _fetcher(tmp_path)
    digest = _digest(b"never sent")
    fetcher.need([BlobRef(digest, 10)])
    assert len(asked) == 1
    start = time.monotonic()
    fetcher.check_stalls(start + 5, patience=10)  # not yet
    assert len(asked) == 1 and digest in fetcher.fetching
    for stall in range(1, fetcher.max_failures + 1):  # asked again after each silent stretch
        fetcher.check_stalls(start + 10.5 * stall, patience=10)
        assert len(asked) == 1 + stall
    fetcher.check_stalls(start + 10.5 * (fetcher.max_failures + 1), patience=10)
    assert digest not in fetcher.fetching
    assert "no data for blob" in fetcher.failed[digest]


def test_data_coming_keeps_a_slow_blob_alive(tmp_path: Path) -> None:
    fetcher, asked = _fetcher(tmp_path)
    data = b"x" * (3 * CHUNK)
    digest = _digest(data)
    fetcher.window = 1
    fetcher.need([BlobRef(digest, len(data))])
    for _ in range(3):  # one chunk per (almost) patience window: slow, but moving
        time.sleep(0.3)
        fetcher.check_stalls(time.monotonic(), patience=0.4)
        fetcher.on_data(_served(data, asked[-1]))
    assert fetcher.ready([BlobRef(digest, len(data))]) and not fetcher.failed
