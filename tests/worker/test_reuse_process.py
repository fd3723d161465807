"""``retia worker --reuse-process``: trials share one long-lived child, replaced when it dies."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.errors import TrialFailedError

from ..clusters import fast_cluster
from ..integration import fits

pytestmark = pytest.mark.timeout(240)


def _pid(home: Path, trial_id: str) -> int:
    [log] = home.glob(f"worker-0/trials/{trial_id}-1/trial.log")
    match = re.search(r" pid (\d+)", log.read_text())
    assert match is not None
    return int(match.group(1))


def test_trials_share_one_process_until_it_dies(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with fast_cluster(workers=1, home=home, worker_args=["--reuse-process"]) as backend:
        ok = FunctionalEvaluator(fits.counting, steps=2)
        first = [backend.submit(fits.DigitsMLP, ok) for _ in range(4)]
        assert [t.result(timeout=60) for t in first] == [2.0] * 4
        assert [t.intermediates for t in first] == [[0.0, 1.0]] * 4
        assert len({_pid(home, t.id) for t in first}) == 1

        raising = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.raising))
        with pytest.raises(TrialFailedError, match="the model diverged"):
            raising.result(timeout=60)
        assert _pid(home, raising.id) == _pid(home, first[0].id)  # an exception does not cost the process

        crash = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.hard_exit))
        with pytest.raises(TrialFailedError, match="exited with code 0"):
            crash.result(timeout=60)
        hung = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.hanging), timeout=1.0)
        with pytest.raises(TrialFailedError, match="timed out"):
            hung.result(timeout=60)
        after = backend.submit(fits.DigitsMLP, ok)
        assert after.result(timeout=60) == 2.0
        pids = [_pid(home, t.id) for t in (first[0], crash, hung, after)]
        assert pids[0] == pids[1] and len(set(pids[1:])) == 3  # replaced after each death


def test_a_quiet_trial_leaves_no_directory_and_one_that_writes_gets_its_own(tmp_path: Path) -> None:
    home = tmp_path / "c"
    with fast_cluster(workers=1, home=home, worker_args=["--reuse-process"]) as backend:
        quiet = FunctionalEvaluator(fits.quiet)
        trials = [backend.submit(fits.DigitsMLP, quiet) for _ in range(3)]
        onnx = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.export_onnx))  # written in the scratch
        trials.append(backend.submit(fits.DigitsMLP, quiet))
        assert [t.result(timeout=60) for t in trials] == [1.0] * 4 and onnx.result(timeout=120) == 1.0
    on_worker = home / "worker-0" / "trials"
    assert sorted(p.name for p in on_worker.iterdir() if not p.name.startswith(".")) == [f"{onnx.id}-1"]
    assert (on_worker / f"{onnx.id}-1" / "model.onnx").stat().st_size > 0
    assert onnx.output_dir is not None and (onnx.output_dir / "model.onnx").stat().st_size > 0
    assert "fit pid " in (onnx.output_dir / "trial.log").read_text()
    assert not list(on_worker.glob(".reused-*"))  # the worker stopped cleanly: its empty scratch is gone
