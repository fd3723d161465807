"""What a trial can do to its agent and what it leaves behind (issue 16, points 6, 8, 17, 19).

A trial that writes its own pipe, raises a huge exception, leaves processes running (in its
group, or escaped with setsid and a double fork), or changes its environment and working
directory: it fails or ends alone, the worker goes on, and nothing of it outlives it.
Under both a fresh process per trial and ``--reuse-process``.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from retia import FunctionalEvaluator, report_final_result
from retia.client.backend import Backend
from retia.errors import TrialFailedError

from ..clusters import fast_cluster, processes
from ..integration import fits

pytestmark = pytest.mark.timeout(240)

HUGE = 9_000_000  # characters of an exception message: far over any message limit


@pytest.fixture(scope="module", params=[[], ["--reuse-process"]], ids=["fresh process", "reused process"])
def cluster_home(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Backend, Path]]:
    home = tmp_path_factory.mktemp("cluster")
    with fast_cluster(workers=1, home=home, worker_args=request.param) as backend:
        yield backend, home


@pytest.fixture
def reused(cluster_home: tuple[Backend, Path], request: pytest.FixtureRequest) -> bool:
    """The cluster's worker runs --reuse-process."""
    return "reused" in request.node.callspec.id


@pytest.fixture
def backend(cluster_home: tuple[Backend, Path]) -> Backend:
    return cluster_home[0]


def _pipe_fd() -> int:
    """The trial's end of its message pipe (its reporter writes there)."""
    from retia.reporting import _current  # imported here: fits travel by value, with their globals

    reporter: Any = _current.get()
    fd: int = reporter.conn.fileno()
    return fd


def writes_a_header_and_sleeps(model_cls: Any) -> None:
    os.write(_pipe_fd(), struct.pack("!i", 1000))  # a frame of 1000 bytes, none of which come
    time.sleep(1000)


def writes_an_oversized_header(model_cls: Any) -> None:
    os.write(_pipe_fd(), struct.pack("!i", 1 << 30))
    time.sleep(1000)


def writes_half_a_message_and_exits(model_cls: Any) -> None:
    os.write(_pipe_fd(), struct.pack("!i", 100) + b"\x93\x01")
    os._exit(0)


def raises_a_huge_exception(model_cls: Any) -> None:
    raise ValueError("x" * HUGE)


def swaps_its_log(model_cls: Any, kind: str, target: str) -> None:
    """Replaces its trial.log with a FIFO nobody writes to, or a link to ``target``, then raises."""
    log = os.path.join(os.environ["RETIA_OUTPUT_DIR"], "trial.log")
    os.unlink(log)
    if kind == "fifo":
        os.mkfifo(log)
    else:
        os.symlink(target, log)
    raise RuntimeError("swapped its log")


def leaves_processes(model_cls: Any, pids: str, end: str) -> None:
    """Starts a child in its group and one that escapes it (setsid, then a double fork), then ends."""
    in_group = subprocess.Popen(["sleep", "1000"])
    # sh runs in a new session, starts sleep in the background, says its pid and exits: an orphan
    subprocess.run(["sh", "-c", f"sleep 1000 & echo $! > {pids}/escaped"], start_new_session=True, check=True)
    with open(os.path.join(pids, "in_group"), "w") as f:
        f.write(str(in_group.pid))
    if end == "os._exit":
        os._exit(0)
    if end == "raise":
        raise RuntimeError("fit gave up")
    report_final_result(1.0)


def changes_its_environment(model_cls: Any, where: str) -> None:
    os.environ["RETIA_TEST_LEFT_BEHIND"] = "1"
    del os.environ["PATH"]
    os.chdir(where)
    report_final_result(1.0)


def reports_its_environment(model_cls: Any, where: str) -> None:
    left = ["RETIA_TEST_LEFT_BEHIND" in os.environ, "PATH" not in os.environ, os.getcwd() == where]
    report_final_result(float(sum(bit << i for i, bit in enumerate(left))))


BIG = 40 << 20  # bytes of one artefact: 40 FILE chunks


def writes_a_big_file(model_cls: Any) -> None:
    with open(os.path.join(os.environ["RETIA_OUTPUT_DIR"], "big.bin"), "wb") as f:
        f.write(bytes(range(256)) * (BIG // 256))
    report_final_result(1.0)


def _peak_rss(pid: int) -> int:
    """The most memory the process ever held (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        [line] = [line for line in f if line.startswith("VmHWM:")]
    return int(line.split()[1]) << 10


def _running(pid: int) -> bool:
    """Alive and not a zombie (one waiting for its parent to reap it has ended)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _succeeds_next(backend: Backend) -> None:
    """The same (only) worker runs the next trial: it is free and well."""
    after = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=2))
    assert after.result(timeout=60) == 2.0


# ---- point 6: the pipe never blocks the agent ----


def test_a_header_without_its_bytes_leaves_the_agent_free_and_the_timeout_fires(backend: Backend) -> None:
    hung = backend.submit(fits.DigitsMLP, FunctionalEvaluator(writes_a_header_and_sleeps), timeout=2.0)
    with pytest.raises(TrialFailedError, match="timed out"):
        hung.result(timeout=60)
    assert hung.attempt == 1  # the agent heartbeated on: its worker was never declared lost
    _succeeds_next(backend)


def test_a_length_over_the_limit_fails_the_trial_at_once(backend: Backend) -> None:
    bad = backend.submit(fits.DigitsMLP, FunctionalEvaluator(writes_an_oversized_header))
    with pytest.raises(TrialFailedError, match="over"):
        bad.result(timeout=60)  # no timeout set: only the agent's refusal ends it
    _succeeds_next(backend)


def test_half_a_message_left_at_exit_fails_the_trial_as_partial(backend: Backend) -> None:
    torn = backend.submit(fits.DigitsMLP, FunctionalEvaluator(writes_half_a_message_and_exits))
    with pytest.raises(TrialFailedError, match="partial message"):
        torn.result(timeout=60)
    _succeeds_next(backend)


# ---- point 8: DONE carries a bounded failure; the full text stays in trial.log ----


def test_a_huge_exception_message_is_cut_in_done_and_kept_whole_in_the_log(
    cluster_home: tuple[Backend, Path],
) -> None:
    backend, home = cluster_home
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(raises_a_huge_exception))
    with pytest.raises(TrialFailedError) as caught:
        trial.result(timeout=120)
    failure = caught.value.failure
    assert failure is not None and failure.exc_type == "ValueError"
    assert (
        failure.message.startswith("xxxx") and "bytes cut; the full text is in trial.log" in failure.message
    )
    assert len(failure.message) < 9 << 10 and len(failure.reason) < 9 << 10
    assert len(failure.traceback) < 65 << 10 and failure.traceback.startswith("Traceback")
    assert len(failure.log_tail) <= 17 << 10
    log = home / "worker-0" / "trials" / f"{trial.id}-1" / "trial.log"
    assert log.read_text().count("x" * HUGE) == 1  # the whole traceback, message and all
    _succeeds_next(backend)


@pytest.mark.parametrize("kind", ["fifo", "link"])
def test_a_log_swapped_for_a_fifo_or_a_link_neither_hangs_the_agent_nor_is_read(
    backend: Backend, tmp_path: Path, kind: str
) -> None:
    """The agent reads a failed trial's log for its tail: before, a FIFO there blocked the agent's
    open() for good (no heartbeat, every trial on it lost), and a link was read through."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the-secret-line\n")
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(swaps_its_log, kind=kind, target=str(secret)))
    with pytest.raises(TrialFailedError, match="swapped its log") as caught:
        trial.result(timeout=60)
    assert trial.attempt == 1  # its worker was never lost
    assert caught.value.failure is not None and "the-secret-line" not in caught.value.failure.log_tail
    _succeeds_next(backend)


# ---- point 17: every process a trial starts dies with it ----


@pytest.mark.parametrize("end", ["return", "raise", "os._exit"])
def test_no_process_a_trial_started_outlives_it(backend: Backend, tmp_path: Path, end: str) -> None:
    pids = tmp_path / "pids"
    pids.mkdir()
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(leaves_processes, pids=str(pids), end=end))
    try:
        if end == "return":
            assert trial.result(timeout=60) == 1.0
        else:
            with pytest.raises(TrialFailedError):
                trial.result(timeout=60)
        started = [int((pids / name).read_text()) for name in ("in_group", "escaped")]
        deadline = time.monotonic() + 5
        while any(_running(pid) for pid in started) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [pid for pid in started if _running(pid)] == []
    finally:  # before the fix, they would run on for 1000 s
        for name in ("in_group", "escaped"):
            if (pids / name).exists() and _running(pid := int((pids / name).read_text())):
                os.kill(pid, 9)
    _succeeds_next(backend)


# ---- point 19: a reused process starts each trial from the same environment ----


def test_a_reused_process_restores_the_environment_and_working_directory(
    backend: Backend, reused: bool, tmp_path: Path
) -> None:
    if not reused:
        pytest.skip("a fresh process per trial starts from the fork server's environment anyway")
    first = backend.submit(fits.DigitsMLP, FunctionalEvaluator(changes_its_environment, where=str(tmp_path)))
    second = backend.submit(fits.DigitsMLP, FunctionalEvaluator(reports_its_environment, where=str(tmp_path)))
    assert first.result(timeout=60) == 1.0
    assert second.result(timeout=60) == 0.0  # bits: the variable set, PATH removed, the directory


# ---- point 19: artefacts stream under a window ----


def test_a_big_artefact_streams_under_a_window_and_arrives_whole_before_done(backend: Backend) -> None:
    _succeeds_next(backend)  # the agent has run a trial: its memory is what one costs
    [agent] = processes(backend).worker_procs
    before = _peak_rss(agent.pid)
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(writes_a_big_file))
    assert trial.result(timeout=120) == 1.0 and trial.output_dir is not None
    # the DONE came after every chunk was stored
    assert (trial.output_dir / "big.bin").read_bytes() == bytes(range(256)) * (BIG // 256)
    grew = _peak_rss(agent.pid) - before
    assert grew < 24 << 20, f"the agent grew by {grew >> 20} MiB for a {BIG >> 20} MiB artefact"
    _succeeds_next(backend)
