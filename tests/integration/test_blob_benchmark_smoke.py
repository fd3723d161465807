"""The blob benchmark runs end to end in quick mode (its numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_blob_benchmark_quick_prints_its_table(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "blobs.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for heading in (
        "Blob benchmark",
        "mode",
        "total time",
        "per-trial p50",
        "bytes moved",
        "ratio",
        "Where the time goes",
    ):
        assert heading in out.stdout, f"{heading!r} missing from:\n{out.stdout[-3000:]}"
