"""Large arguments travel as content-addressed blobs: once per worker, verified, never once per trial."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from retia import FunctionalEvaluator, dump, load, trace
from retia.blobs import Blob, BlobStore, make_blob
from retia.client.backend import Backend, wait
from retia.errors import TrialFailedError

from ..clusters import fast_cluster, processes
from . import fits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
MB = 1 << 20


def test_a_200_mb_tensor_crosses_the_wire_once_per_worker(cluster: Backend) -> None:
    data = torch.randn(200 * MB // 4)
    evaluator = FunctionalEvaluator(fits.tensor_stats, data=data)
    sent_before = cluster.status().bytes_sent
    trials = [cluster.submit(fits.DigitsMLP, evaluator) for _ in range(20)]
    done, pending = wait(trials, timeout=240)
    assert not pending
    expected = float(data[-1000:].sum())
    assert all(t.result() == pytest.approx(expected, rel=1e-6) for t in trials)
    sent = cluster.status().bytes_sent - sent_before
    workers_used = len({t.worker for t in trials})
    assert sent < workers_used * 200 * MB + 5 * MB, f"{sent / MB:.0f} MiB sent for {workers_used} workers"
    assert sent > 200 * MB  # it did cross the wire: blobs are not a shortcut through the file system


def test_a_traced_tensor_dataset_works_across_the_wire(cluster: Backend) -> None:
    x = torch.randn(4096, 64)  # 1 MiB: a blob
    y = torch.randint(0, 10, (4096,))
    loader = trace(DataLoader)(trace(TensorDataset)(x, y), batch_size=512)
    payload: dict[str, Blob] = {}
    assert (
        len(dump(loader, blobs=payload)) < 40_000 and len(payload) == 1
    )  # x is a blob; y (32 KiB) stays inline
    trial = cluster.submit(
        fits.DigitsMLP, FunctionalEvaluator(fits.train_digits, train=loader, val=loader, epochs=1)
    )
    assert 0.0 <= cast(dict[str, float], trial.result(timeout=120))["default"] <= 1.0  # train_digits: a dict


def test_blob_values_round_trip_and_map_copy_on_write(tmp_path: Path) -> None:
    import numpy as np

    store = BlobStore(tmp_path)
    values: dict[str, Any] = {
        "array": np.arange(100_000, dtype=np.float64),
        "tensor": torch.arange(70_000),
        "buffer": b"x" * 300_000,
    }
    blobs: dict[str, Blob] = {}
    data = dump(values, blobs=blobs)
    assert len(data) < 1024 and len(blobs) == 3
    for blob in blobs.values():
        for offset, piece in blob.chunks():
            store.write(blob.digest, offset, bytes(piece))
        assert store.finish(blob.digest)
    back = load(data, blob_dir=tmp_path)
    assert np.array_equal(back["array"], values["array"]) and torch.equal(back["tensor"], values["tensor"])
    assert back["buffer"] == values["buffer"]
    back["tensor"][0] = 42  # copy-on-write: the trial may write, the cached file does not change
    assert torch.equal(load(data, blob_dir=tmp_path)["tensor"], values["tensor"])
    assert make_blob(object()) is None


def test_a_corrupt_cached_blob_is_fetched_again(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        data = torch.randn(2 * MB // 4)
        evaluator = FunctionalEvaluator(fits.tensor_stats, data=data)
        assert backend.submit(fits.DigitsMLP, evaluator).result(timeout=60) == pytest.approx(
            float(data[-1000:].sum())
        )
        [cached] = [
            p for p in (processes(backend).home / "worker-0" / "blobs").glob("[0-9a-f]*") if not p.suffix
        ]
        stat = cached.stat()
        with open(cached, "r+b") as f:  # silent corruption: same size, same mtime
            f.seek(stat.st_size // 2)
            f.write(b"\xff\xfe\xfd\xfc")
        import os

        os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        sent = backend.status().bytes_sent
        assert backend.submit(fits.DigitsMLP, evaluator).result(timeout=60) == pytest.approx(
            float(data[-1000:].sum())
        )
        assert backend.status().bytes_sent - sent > 2 * MB  # fetched again
        log = (processes(backend).home / "logs" / "worker-0.log").read_text()
        assert "is corrupt; discarding it" in log


def test_a_blob_that_never_verifies_fails_the_trial_clearly(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        data = torch.randn(MB // 4)
        evaluator = FunctionalEvaluator(fits.tensor_stats, data=data)
        blobs_dir = processes(backend).home / "blobs"
        first = backend.submit(
            fits.DigitsMLP, FunctionalEvaluator(fits.hanging), timeout=30
        )  # keeps the worker busy
        trial = backend.submit(fits.DigitsMLP, evaluator)
        deadline = time.monotonic() + 60
        while not (stored_blobs := [p for p in blobs_dir.glob("[0-9a-f]*") if not p.suffix]):
            assert time.monotonic() < deadline  # wait until it is complete and verified, not .partial
            time.sleep(0.05)
        [stored] = stored_blobs
        stored.write_bytes(stored.read_bytes()[:-8] + b"corrupt!")  # the dispatcher's copy is now bad
        first.cancel()
        with pytest.raises(TrialFailedError, match="failed verification 3 times"):
            trial.result(timeout=90)
        assert (
            backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=1)).result(timeout=60)
            == 1.0
        )
