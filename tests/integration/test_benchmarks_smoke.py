"""The dispatch benchmark runs end to end in quick mode (its numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(300)
def test_dispatch_benchmark_quick_prints_its_table(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "dispatch.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for heading in ("Dispatch benchmark", "per-trial overhead", "trial start latency", "reports", "Target"):
        assert heading in out.stdout, f"{heading!r} missing from:\n{out.stdout[-3000:]}"
