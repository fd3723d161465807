"""The fork server never initializes CUDA (issue 22): with the tripwire first in its preload, a
real worker preloads torch and Lightning, warms the serializer, forks spares, runs a Lightning
trial and launches a pack, and no CUDA entry point is called in the fork server itself; the
tripwire does catch such a call (so the cluster check could fail)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import retia.lightning as pl
from retia import trace
from retia.datasets import DigitsDataset
from retia.protocol import TrialState
from retia.worker.config import DEFAULT_PRELOAD
from retia.worker.cuda_tripwire import ENV

from ..clusters import fast_cluster
from ..integration import fits

NVML_CHECK = "PYTORCH_NVML_BASED_CUDA_CHECK"


def _entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _armed(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The one ``armed`` line: the process that imported the tripwire wrapped torch.cuda."""
    armed = [e for e in entries if e["event"] == "armed"]
    assert len(armed) == 1, armed
    assert {"torch.cuda.device_count", "torch.cuda.is_available", "torch.cuda._lazy_init"} <= set(
        armed[0]["wrapped"]
    ), armed
    return armed[0]


@pytest.mark.timeout(60)
def test_tripwire_records_a_cuda_probe_and_a_forked_process_under_its_own_pid(tmp_path: Path) -> None:
    """device_count() works without a GPU (0), and the tripwire sees it: the cluster test's "no call
    from the fork server" is not an empty file's."""
    record = tmp_path / "cuda.jsonl"
    script = textwrap.dedent(
        """
        import os, retia.worker.cuda_tripwire, torch
        assert torch.cuda.device_count() == 0
        child = os.fork()
        if child == 0:
            torch.cuda.device_count(); torch.cuda.device_count()
            os._exit(0)
        os.waitpid(child, 0)
        print(child)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != NVML_CHECK} | {ENV: str(record)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=50, check=True
    )
    child = int(done.stdout.split()[-1])
    entries = _entries(record)
    armed = _armed(entries)
    assert armed["nvml_check"] is None
    calls = [e for e in entries if e["event"] == "call"]
    ours = [e for e in calls if e["pid"] == armed["pid"]]
    assert [e["name"] for e in ours] == ["torch.cuda.device_count"], calls
    assert ours[0]["server"] and any("<string>" in frame for frame in ours[0]["stack"]), ours
    forked = [e for e in calls if e["pid"] == child]
    assert [(e["name"], e["server"]) for e in forked] == [("torch.cuda.device_count", False)], calls


@pytest.mark.timeout(150)
def test_the_fork_server_never_calls_a_cuda_entry_point(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker, the tripwire before the default preload, a Lightning trial and a packed pair."""
    record = tmp_path / "cuda.jsonl"
    monkeypatch.setenv(ENV, str(record))
    monkeypatch.delenv(NVML_CHECK, raising=False)  # the worker must set it for its fork server
    preload = ",".join(["retia.worker.cuda_tripwire", *DEFAULT_PRELOAD])
    evaluator = pl.Classification(
        train_dataloaders=pl.DataLoader(trace(DigitsDataset)("train"), batch_size=64),
        val_dataloaders=pl.DataLoader(trace(DigitsDataset)("val"), batch_size=512),
        max_epochs=1,
    )
    with fast_cluster(workers=1, home=tmp_path / "cluster", worker_args=["--preload", preload]) as backend:
        solo = backend.submit(fits.DigitsMLP, evaluator, seed=1)
        pair = backend.submit_many([fits.DigitsMLP] * 2, evaluator, seeds=[2, 3], pack=2)
        for trial in [solo, *pair]:
            trial.result(timeout=90)
            assert trial.state is TrialState.SUCCEEDED, trial
        assert pair[0].output_dir is not None
        assert "a pack of 2 trials" in (Path(pair[0].output_dir) / "trial.log").read_text()
        entries = _entries(record)
        armed = _armed(entries)
        server = armed["pid"]
        assert b"forkserver" in Path(f"/proc/{server}/cmdline").read_bytes()  # the armed one is it
    assert armed["nvml_check"] == "1"
    calls = [e for e in entries if e["event"] == "call"]
    assert [e for e in calls if e["pid"] == server] == []
    # the wrappers were live in the trials forked from it: Lightning's Trainer probes CUDA there
    assert any(e["name"] == "torch.cuda.device_count" and not e["server"] for e in calls), calls
