"""``retia worker --gpus``: one agent per GPU group (or per share of a GPU) under one supervisor,
with fake devices on this CPU machine: each agent joins with its devices, its trials see exactly
those; an agent killed with SIGKILL is restarted; SIGTERM stops them all; a refused agent is not
restarted in a loop."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.client.backend import Backend, connect
from retia.client.cluster import LocalCluster
from retia.credentials import Role
from retia.protocol import WorkerInfo
from retia.worker.supervisor import plan_agents

from ..clusters import HEARTBEAT_INTERVAL, LIVENESS, processes
from ..integration import fits

pytestmark = pytest.mark.timeout(120)

LIGHT_PRELOAD = "retia.worker.runner,retia.serializer"  # (no torch: the agents start in a second)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Backend]:
    """A dispatcher with no worker of its own: the supervised agents are the only ones."""
    dispatcher = LocalCluster(
        tmp_path / "cluster", 0, heartbeat_interval=HEARTBEAT_INTERVAL, liveness=LIVENESS
    )
    try:
        dispatcher.start()
        backend = connect(
            dispatcher.address,
            credential=dispatcher.credential_file(Role.CLIENT),
            heartbeat_interval=HEARTBEAT_INTERVAL,
            liveness=LIVENESS,
        )
        backend.cluster = dispatcher
        try:
            yield backend
        finally:
            backend.close()
    finally:
        dispatcher.stop()


@pytest.fixture
def supervise(cluster: Backend, tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Starts ``retia worker --gpus ...`` against ``cluster``; whatever is left of it at the end
    (the supervisor, its agents) is killed by its process group."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        argv = [
            *(sys.executable, "-m", "retia.worker", "--connect", cluster.address),
            *("--credential", str(processes(cluster).credential_file(Role.WORKER))),
            *("--home", str(tmp_path / "workers"), "--preload", LIGHT_PRELOAD),
            *("--heartbeat", str(HEARTBEAT_INTERVAL), "--liveness", str(LIVENESS)),
            *("--name", "node", "--kill-grace", "1", *args),
        ]
        with (tmp_path / "supervisor.log").open("ab") as log:
            started.append(
                subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            )
        return started[-1]

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def workers(backend: Backend, count: int, timeout: float = 30.0) -> list[WorkerInfo]:
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(backend.status().workers, key=lambda w: w.worker_id)
        if len(found) == count or time.monotonic() > deadline:
            assert len(found) == count, found
            return found
        time.sleep(0.1)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


def stopped(supervisor: subprocess.Popen[bytes]) -> int:
    return supervisor.wait(timeout=20)


def test_one_agent_per_gpu_group_whose_trials_see_exactly_its_devices_restarted_when_killed(
    cluster: Backend, supervise: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    supervisor = supervise("--gpus", "0,1,2,3", "--gpus-per-trial", "2")
    joined = workers(cluster, 2)
    assert [(w.worker_id, w.gpu) for w in joined] == [("node-gpu0-1", "0,1"), ("node-gpu2-3", "2,3")]
    trials = [cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices)) for _ in range(6)]
    for trial in trials:
        result = trial.result(timeout=60)
        assert isinstance(result, dict)
        assert (result["first"], result["count"], result["fraction"]) in ((0, 2, 1.0), (2, 2, 1.0))

    victim = joined[0]
    os.kill(victim.pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:  # the same name comes back, another process
        back = {w.worker_id: w for w in cluster.status().workers}.get(victim.worker_id)
        if back is not None and back.pid != victim.pid:
            break
        assert time.monotonic() < deadline, "the killed agent was not restarted"
        time.sleep(0.1)
    assert cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices)).result(timeout=60)

    pids = [w.pid for w in workers(cluster, 2)]
    supervisor.send_signal(signal.SIGTERM)
    assert stopped(supervisor) == 0
    assert not any(alive(pid) for pid in pids)
    log = (tmp_path / "supervisor.log").read_text()
    assert "agent node-gpu0-1 (gpu 0,1) was killed by SIGKILL" in log


def test_agents_sharing_a_gpu_cap_their_trials_memory_share(
    cluster: Backend, supervise: Callable[..., subprocess.Popen[bytes]]
) -> None:
    supervisor = supervise("--gpus", "3", "--trials-per-gpu", "2")
    assert [(w.worker_id, w.gpu) for w in workers(cluster, 2)] == [("node-gpu3-0", "3"), ("node-gpu3-1", "3")]
    result = cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.devices)).result(timeout=60)
    assert result == {"default": 3, "first": 3, "count": 1, "fraction": 0.5}
    supervisor.send_signal(signal.SIGTERM)
    assert stopped(supervisor) == 0


def test_a_refused_agent_is_not_restarted_in_a_loop(cluster: Backend, tmp_path: Path) -> None:
    """Agents that cannot start (a credential file that is not there) exit 2: the supervisor says
    so and exits 2 too, rather than restarting them for ever."""
    cluster_files = processes(cluster)
    argv = [
        *(sys.executable, "-m", "retia.worker", "--connect", cluster.address, "--gpus", "0,1"),
        *("--credential", str(cluster_files.home / "missing.cred"), "--preload", LIGHT_PRELOAD),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "not restarting it" in done.stderr and "every agent was refused" in done.stderr
    assert done.stderr.count("starting agent") == 2


def test_the_plan_groups_and_shares_the_devices_it_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    assert [(s.gpus, s.name) for s in plan_agents("all", 1, 1, "n")] == [
        ("4", "n-gpu4"),
        ("5", "n-gpu5"),
        ("6", "n-gpu6"),
    ]
    grouped = plan_agents("all", 2, 1, "n")  # the odd one out is left unused (with a warning)
    assert [(s.gpus, s.memory_fraction) for s in grouped] == [("4,5", 1.0)]
    shared = plan_agents("0", 1, 4, "n")
    assert [(s.name, s.memory_fraction) for s in shared] == [(f"n-gpu0-{i}", 0.25) for i in range(4)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(Exception, match="shows no GPU"):
        plan_agents("all", 1, 1, "n")
