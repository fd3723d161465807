"""The trial process, fresh or reused: a report flood outliving it, what it shares with the fork server."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import cast

import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend

from ..clusters import fast_cluster, processes
from ..integration import fits

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module", params=[[], ["--reuse-process"]], ids=["fresh process", "reused process"])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    home = tmp_path_factory.mktemp("cluster")
    with fast_cluster(workers=1, home=home, worker_args=request.param) as backend:
        yield backend


def test_every_report_of_a_flood_arrives_once_in_order(backend: Backend) -> None:
    steps = 20_000  # far more than the pipe holds: the process exits long before the agent has read it all
    trials = [
        backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=steps)) for _ in range(2)
    ]
    for trial in trials:
        assert trial.result(timeout=120) == float(steps)
        assert trial.intermediates == [float(i) for i in range(steps)]


def test_the_fork_servers_objects_are_frozen_out_of_the_collector(backend: Backend) -> None:
    # Without gc.freeze() in the fork server, a full collection in a trial copies ~100 MB of
    # torch's pages and costs ~0.5 s of CPU on a 2-core VM.
    frozen = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.gc_frozen_objects)).result(timeout=60)
    assert cast(float, frozen) > 10_000  # gc_frozen_objects reports a number


def test_nested_output_files_come_home_with_their_paths(backend: Backend) -> None:
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.writes_nested))
    assert trial.result(timeout=60) == 1.0 and trial.output_dir is not None
    assert (trial.output_dir / "logs" / "epoch-1" / "metrics.csv").read_text() == "step,loss\n1,0.5\n"
    assert (trial.output_dir / "best.txt").read_text() == "step,loss\n1,0.5\n"  # a link ships its file
    assert (trial.output_dir / "weights.bin").read_bytes() == bytes(
        range(256)
    ) * 1024  # streamed in FILE chunks
    assert "fit pid " in (trial.output_dir / "trial.log").read_text()  # small: inside DONE


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_a_lone_trial_and_its_agent_run_under_the_normal_policy(backend: Backend) -> None:
    policy = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.scheduling_policy)).result(timeout=60)
    assert policy == float(os.SCHED_OTHER)
    [agent] = processes(backend).worker_procs
    assert os.sched_getscheduler(agent.pid) == os.SCHED_OTHER  # nothing queued: a report goes out at once
