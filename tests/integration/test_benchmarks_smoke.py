"""The benchmarks run end to end in quick mode (their numbers are not checked here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # (each runs a benchmark or the README end to end)


def _run(script: str, args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``benchmarks/<script>`` with ``args``, run where a user would (``cwd``); it must exit 0."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _rows(stdout: str, header: str) -> dict[str, list[str]]:
    """The cells of each row of the markdown table under ``header``, by the row's first cell."""
    markdown = stdout[stdout.index(header) :]
    return {line.split("|")[1].strip(): line.split("|")[2:-1] for line in markdown.splitlines()[2:]}


@pytest.mark.timeout(300)
def test_dispatch_benchmark_quick_prints_its_table(tmp_path: Path) -> None:
    out = _run("dispatch.py", ["--quick"], tmp_path, 280)
    for heading in ("Dispatch benchmark", "per-trial overhead", "trial start latency", "reports", "Target"):
        assert heading in out.stdout, f"{heading!r} missing from:\n{out.stdout[-3000:]}"


@pytest.mark.timeout(300)
def test_curve_benchmark_quick_prints_both_transports(tmp_path: Path) -> None:
    """benchmarks/curve.py, tiny: every case runs on plain TCP and on CurveZMQ and lands in the table."""
    out = _run("curve.py", ["--quick", "--markdown"], tmp_path, 280)
    markdown = out.stdout[out.stdout.index("| Measurement | plain TCP | CurveZMQ TCP | Curve / plain |") :]
    rows = {line.split("|")[1].strip(): line for line in markdown.splitlines() if line.startswith("| ")}
    for row in (
        "HEARTBEAT: round trips",
        "REPORTS x64: one way",
        "throughput",
        "CPU per MB, dispatcher (signs, sends)",
        "all 10 at once: throughput",
    ):
        cells = [c.strip() for c in rows[row].split("|")[2:4]]
        assert all(c and c[0].isdigit() for c in cells), f"{row!r} lacks a number per transport: {rows[row]}"


@pytest.mark.timeout(240)
def test_oneshot_benchmark_runs_a_strategy_beside_the_hand_written_loop(tmp_path: Path) -> None:
    """benchmarks/oneshot.py, one timed step: the hand-written row and a retia row each get a time
    per step, a ratio and a peak memory, and the run leaves nothing where it ran."""
    out = _run(
        "oneshot.py",
        ["--batches", "1", "--warmup", "1", "--repeats", "1", "--strategies", "random", "--markdown"],
        tmp_path,
        220,
    )
    rows = _rows(out.stdout, "| row | s/step | x hand-written |")
    assert set(rows) == {"hand-written first-order DARTS", "retia RandomOneShot"}, out.stdout
    for name, cells in rows.items():
        seconds, ratio, peak = (float(c.strip().rstrip("x")) for c in cells[:3])
        assert seconds > 0 and ratio > 0 and peak > 0, f"{name}: {cells}"
    assert float(rows["hand-written first-order DARTS"][1].strip().rstrip("x")) == 1.0
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_packed_benchmark_times_each_pack_and_checks_it_against_pack_1(tmp_path: Path) -> None:
    """benchmarks/packed.py, tiny (3 trials, pack 1 and 2, one epoch): a row per pack with a wall
    time, a rate, a speed-up and a CPU per trial, packed results equal to pack 1's, nothing left
    where it ran."""
    out = _run(
        "packed.py", ["--candidates", "3", "--packs", "1", "2", "--epochs", "1", "--markdown"], tmp_path, 100
    )
    rows = _rows(out.stdout, "| pack | wall s | trials/min | speed-up vs pack 1 |")
    assert set(rows) == {"1", "2"}, out.stdout
    for pack, cells in rows.items():
        wall, rate, speedup, diff = (float(c.strip().rstrip("x")) for c in cells[:4])
        assert wall > 0 and rate > 0 and speedup > 0, f"pack {pack}: {cells}"
        assert diff <= 1e-4, f"pack {pack}: {cells}"
        assert cells[4].strip().split(" ms = ")[0].replace(".", "").isdigit(), f"pack {pack}: {cells}"
    assert float(rows["1"][2].strip().rstrip("x")) == 1.0
    assert not list(tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_gpu_benchmark_without_cuda_says_so_and_exits_0(tmp_path: Path) -> None:
    """benchmarks/gpu.py on a machine without CUDA (here or hidden): it imports what it measures,
    says there is nothing to measure, and succeeds; on a GPU machine it is run by hand."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "no CUDA device" in out.stdout
