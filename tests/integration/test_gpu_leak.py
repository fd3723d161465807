"""Nothing starts into a GPU that a trial left memory on (issue 22): the agent reads its device
through NVML (a fake driver library here, tests/nvml.py), holds the next trial while the memory is
above its idle level, then gives it back and reports the holder in ``retia status`` until it is
freed; the trial then runs there, its attempt unspent."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.protocol import TrialState, WorkerInfo

from ..clusters import fast_cluster, joined_workers, processes, wait_until
from ..nvml import FakeNvml
from . import fits

pytestmark = pytest.mark.timeout(120)

GiB = 1 << 30


def test_memory_a_trial_left_on_its_gpu_blocks_the_worker_until_freed(
    fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in fake_nvml.env().items():  # (the workers inherit them)
        monkeypatch.setenv(name, value)
    fake_nvml.set((GiB, []))  # the idle level: another tenant's 1 GiB
    with fast_cluster(
        1, home=tmp_path / "cluster", gpus=["0"], worker_args=["--gpu-release-wait", "0.5"]
    ) as backend:
        joined_workers(backend, 1)
        leak = FunctionalEvaluator(fits.holds_gpu_memory, state=str(fake_nvml.state), used=3 * GiB)
        leaked = backend.submit(fits.DigitsMLP, leak).result(timeout=60)
        assert isinstance(leaked, dict)
        after = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices))

        def worker() -> WorkerInfo:
            (only,) = backend.status().workers
            return only

        wait_until(lambda: worker().state == "blocked" and after.state is TrialState.QUEUED, "blocked")
        reason, pid = worker().blocked, int(leaked["pid"])
        assert "GPU 0 holds 2048 MiB above its idle level" in reason and f"held by pid {pid} (" in reason
        shown = subprocess.run(
            [
                sys.executable,
                "-m",
                "retia",
                "status",
                backend.address,
                "--key-file",
                str(processes(backend).key_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert shown.returncode == 0 and f"pid {pid}" in shown.stdout, shown.stderr
        time.sleep(1.0)  # past the wait, rechecked every heartbeat: still nothing starts into it
        assert after.state is TrialState.QUEUED and worker().state == "blocked"

        fake_nvml.set((GiB, []))  # the driver freed it
        result = after.result(timeout=60)
        assert isinstance(result, dict) and result["first"] == 0 and after.attempt == 1
        assert worker().blocked == "" and worker().state == "idle"
