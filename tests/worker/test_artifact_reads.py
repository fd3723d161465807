"""Artefacts are read only up to the size checked against the cap (issue 16, point 19)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retia.worker.trial import chunk_count, file_chunks, pick_artifacts

pytestmark = pytest.mark.timeout(30)


def test_a_file_growing_while_it_streams_is_read_to_its_checked_size(tmp_path: Path) -> None:
    path = tmp_path / "grows.bin"
    path.write_bytes(b"a" * 2500)
    _, [(rel, where, size)] = pick_artifacts(str(tmp_path), budget=1 << 20, inline_limit=1000)
    chunks = []
    for chunk in file_chunks(rel, where, 1000, size):
        chunks.append(chunk)
        with open(path, "ab") as f:
            f.write(b"b" * 1000)  # the trial's process, still writing as its files go home
    assert b"".join(c.data for c in chunks) == b"a" * 2500
    assert len(chunks) == chunk_count(2500, 1000) == 3 and [c.last for c in chunks] == [False, False, True]


def test_a_file_that_shrinks_still_takes_the_chunks_it_was_given(tmp_path: Path) -> None:
    path = tmp_path / "shrinks.bin"
    path.write_bytes(b"a" * 2500)
    chunks = file_chunks("shrinks.bin", str(path), 1000, 2500)
    first = next(chunks)
    os.truncate(path, 1200)
    rest = list(chunks)
    assert [len(c.data) for c in [first, *rest]] == [1000, 200, 0]  # seqs were allotted: all three go
    assert [c.offset for c in [first, *rest]] == [0, 1000, 2000]


_PROC_FILES = Path("/proc/sys/kernel/random")  # files whose size says 0 but that read as more


@pytest.mark.skipif(not _PROC_FILES.is_dir(), reason="needs Linux's /proc/sys")
def test_an_inline_file_is_read_to_its_checked_size() -> None:
    # a file whose size says 0 but that reads as more (a /proc file; or one still growing); the
    # output directory is /proc's own, since a link out of the trial's directory is not sent
    inline, streamed = pick_artifacts(str(_PROC_FILES), budget=1 << 20, inline_limit=64 << 10)
    assert "boot_id" in [f.path for f in inline] and streamed == []
    assert all(f.data == b"" for f in inline)
