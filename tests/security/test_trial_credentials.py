"""A trial holds no credential (issue 17, "Trials hold no credential").

A real ``retia worker`` started with ``RETIA_KEY`` in its environment, as the Docker and Slurm
recipes may, runs a trial that looks for the key everywhere a trial can: every variable of its
environment, its own and its fork server's initial environment in /proc, the agent's, and the
key file in the worker's home. Without ``--trial-user`` the agent's /proc environ and the key
file stay readable (same user: docs/security.md says so); with ``--trial-user nobody`` (root
only) they are not, the trial runs as nobody, its files still come home, and an artefact link
to the key file does not carry the key home.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from retia import FunctionalEvaluator, report_final_result
from retia.client.backend import Backend
from retia.errors import TrialFailedError

from ..clusters import HEARTBEAT_INTERVAL, LIVENESS, fast_cluster, processes
from ..integration import fits

pytestmark = pytest.mark.timeout(120)

BLOB = bytes(range(256)) * 1200  # 300 KiB: travels as a blob, cached in the worker's home
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="--trial-user switches users: only root can (CI runs unprivileged)"
)


def looks_for_the_key(model_cls: Any, key: str, agent_pid: int, key_file: str, blob: bytes) -> None:
    """Writes what it found in found.txt, one ``place=what`` a line, and reports 1.0."""
    found = {"uid": str(os.getuid()), "blob": str(len(blob))}  # (a large argument: read from the blob cache)
    found["env"] = ",".join(sorted(name for name, value in os.environ.items() if key in value)) or "none"
    places = {"self": "/proc/self/environ", "parent": f"/proc/{os.getppid()}/environ"}
    places |= {"agent": f"/proc/{agent_pid}/environ", "key_file": key_file}
    for place, path in places.items():
        try:
            with open(path, "rb") as f:
                found[place] = "found" if key.encode() in f.read() else "clean"
        except PermissionError:
            found[place] = "denied"
    try:
        os.symlink(key_file, os.path.join(os.environ["RETIA_OUTPUT_DIR"], "key-link"))
    except OSError:
        pass
    with open(os.path.join(os.environ["RETIA_OUTPUT_DIR"], "found.txt"), "w") as f:
        f.write("".join(f"{place}={what}\n" for place, what in found.items()))
    report_final_result(1.0)


def links_its_log_to_the_key_file_and_raises(model_cls: Any, key_file: str) -> None:
    """The agent reads trial.log for the failure's tail: as a link to the key file, it must not."""
    log = os.path.join(os.environ["RETIA_OUTPUT_DIR"], "trial.log")
    os.remove(log)
    os.symlink(key_file, log)
    raise RuntimeError("gave up")


@contextmanager
def worker_with_key_in_env(
    worker_home: Path, cluster_home: Path, *args: str
) -> Iterator[tuple[Backend, int]]:
    """A cluster whose one worker is a real ``retia worker`` given the key in ``RETIA_KEY`` (local_cluster's
    own, started with --key-file, is replaced by it), the key file also in its home; (backend, its pid)."""
    with fast_cluster(workers=1, home=cluster_home) as backend:
        cluster = processes(backend)
        own = cluster.worker_procs[0]
        own.terminate()
        own.wait(timeout=30)
        key = (cluster_home / "cluster.key").read_text().strip()
        _key_file_in(worker_home, cluster_home)
        cmd = [sys.executable, "-m", "retia.worker", "--connect", cluster.address, "--home", str(worker_home)]
        cmd += ["--heartbeat", str(HEARTBEAT_INTERVAL), "--liveness", str(LIVENESS), *args]
        with open(cluster_home / "logs" / "env-worker.log", "ab") as log:
            proc = subprocess.Popen(
                cmd, env={**os.environ, "RETIA_KEY": key}, stdout=log, stderr=subprocess.STDOUT
            )
        cluster.worker_procs[0] = proc  # stopped with the cluster
        yield backend, proc.pid


def _found(backend: Backend, worker_home: Path, agent_pid: int) -> dict[str, str]:
    key = (Path(processes(backend).home) / "cluster.key").read_text().strip()
    evaluator = FunctionalEvaluator(
        looks_for_the_key,
        key=key,
        agent_pid=agent_pid,
        key_file=str(worker_home / "cluster.key"),
        blob=BLOB,
    )
    trial = backend.submit(fits.DigitsMLP, evaluator)
    assert trial.result(timeout=60) == 1.0
    assert trial.output_dir is not None
    text = (trial.output_dir / "found.txt").read_text()
    found = dict(line.split("=", 1) for line in text.splitlines())
    link = trial.output_dir / "key-link"  # what the agent sent home for the link to the key file
    found["link"] = "key" if link.exists() and key in link.read_text() else "no key"
    return found


def _key_file_in(worker_home: Path, cluster_home: Path) -> None:
    """The key also lies in the worker's home, 0600, as in the images (the worker uses $RETIA_KEY)."""
    worker_home.mkdir(mode=0o700, exist_ok=True)
    shutil.copy(cluster_home / "cluster.key", worker_home / "cluster.key")
    os.chmod(worker_home / "cluster.key", 0o600)


def test_a_trial_finds_no_key_in_its_environment_nor_in_its_fork_servers(tmp_path: Path) -> None:
    worker_home = tmp_path / "worker"
    with worker_with_key_in_env(worker_home, tmp_path / "cluster") as (backend, agent_pid):
        found = _found(backend, worker_home, agent_pid)
    assert found["env"] == "none"  # no variable holds it, under any name
    assert found["self"] == "clean" and found["parent"] == "clean"  # nor the fork server's start
    # what the same user can still read: what --trial-user is for (docs/security.md); a link to the
    # key in its output is not sent home, though (it points outside the output directory)
    assert found["agent"] == "found" and found["key_file"] == "found" and found["link"] == "no key"


@pytest.fixture
def reachable(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can pass through (tmp_path's parents are root's 0700), removed after."""
    top = Path(tempfile.mkdtemp(prefix="retia-trial-user-"))
    os.chmod(top, 0o711)
    try:
        yield top
    finally:
        shutil.rmtree(top)


@needs_root
@pytest.mark.parametrize("mode", [[], ["--reuse-process"]], ids=["fresh process", "reused process"])
def test_with_a_trial_user_a_trial_cannot_read_the_agents_environment_nor_the_key_file(
    tmp_path: Path, reachable: Path, mode: list[str]
) -> None:
    worker_home = reachable / "worker"
    args = ["--trial-user", "nobody", *mode]
    with worker_with_key_in_env(worker_home, tmp_path / "cluster", *args) as (backend, agent_pid):
        found = _found(backend, worker_home, agent_pid)
        again = _found(backend, worker_home, agent_pid)  # (a reused child: the same process, twice)
    for place in (found, again):
        assert place["uid"] == str(pwd.getpwnam("nobody").pw_uid)
        assert place["blob"] == str(len(BLOB))  # the blob cache stays readable to the trial
        assert place["env"] == "none" and place["self"] == "clean"
        assert place["parent"] == place["agent"] == place["key_file"] == "denied"  # root's, all three
        assert place["link"] == "no key"  # the agent does not read through it for the trial
    assert oct(worker_home.stat().st_mode & 0o777) == "0o711"
    assert (worker_home / "trials").stat().st_uid == pwd.getpwnam("nobody").pw_uid


@needs_root
def test_with_a_trial_user_a_log_linked_to_the_key_file_brings_no_key_home(
    tmp_path: Path, reachable: Path
) -> None:
    worker_home = reachable / "worker"
    with worker_with_key_in_env(worker_home, tmp_path / "cluster", "--trial-user", "nobody") as (backend, _):
        key = (tmp_path / "cluster" / "cluster.key").read_text().strip()
        evaluator = FunctionalEvaluator(
            links_its_log_to_the_key_file_and_raises, key_file=str(worker_home / "cluster.key")
        )
        trial = backend.submit(fits.DigitsMLP, evaluator)
        with pytest.raises(TrialFailedError) as caught:
            trial.result(timeout=60)
    failure = caught.value.failure
    assert failure is not None and failure.exc_type == "RuntimeError"
    assert key not in failure.log_tail and key not in failure.traceback
    assert trial.output_dir is None or not (trial.output_dir / "trial.log").exists()


def _start_worker(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``retia worker`` that must refuse to start (it would otherwise try to connect forever); it is
    given a key (unless ``args`` name one), so that what it refuses is the option under test."""
    cmd = [sys.executable, "-m", "retia.worker", "--connect", "tcp://127.0.0.1:9", "--home", str(home)]
    if "--key-file" not in args:
        key = home.parent / "given.key"
        key.write_text("k" * 64)
        key.chmod(0o600)
        cmd += ["--key-file", str(key)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60, check=False)


def test_a_worker_refuses_a_trial_user_that_does_not_exist(tmp_path: Path) -> None:
    refused = _start_worker(tmp_path / "worker", "--trial-user", "retia-no-such-user")
    assert refused.returncode == 2
    assert "--trial-user retia-no-such-user: no such user on this machine; create it" in refused.stderr


@needs_root
def test_a_worker_refuses_a_home_its_trial_user_cannot_pass_through(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    key = tmp_path / "cluster.key"
    key.write_text("k" * 64)
    key.chmod(0o600)
    refused = _start_worker(locked / "worker", "--key-file", str(key), "--trial-user", "nobody")
    assert refused.returncode == 2
    assert "--trial-user nobody cannot pass through" in refused.stderr and "choose a --home" in refused.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="runs as root here: the refusal is for a worker that is not")
def test_a_worker_that_is_not_root_refuses_a_trial_user(tmp_path: Path) -> None:
    refused = _start_worker(tmp_path / "worker", "--trial-user", "nobody")
    assert refused.returncode == 2
    assert "--trial-user nobody needs the worker to run as root" in refused.stderr
