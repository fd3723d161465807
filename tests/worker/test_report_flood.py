"""A fit that reports faster than the agent reads: its process exits with the pipe still full."""

from __future__ import annotations

from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.dispatcher.cluster import local_cluster

from ..clusters import FAST
from ..integration import fits

pytestmark = pytest.mark.timeout(240)


@pytest.mark.parametrize("worker_args", [[], ["--reuse-process"]], ids=["fresh process", "reused process"])
def test_every_report_of_a_flood_arrives_once_in_order(tmp_path: Path, worker_args: list[str]) -> None:
    steps = 20_000
    with local_cluster(workers=1, home=tmp_path / "c", worker_args=worker_args, **FAST) as backend:  # type: ignore[arg-type]
        trials = [backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=steps)) for _ in range(2)]
        for trial in trials:
            assert trial.result(timeout=120) == float(steps)
            assert trial.intermediates == [float(i) for i in range(steps)]
