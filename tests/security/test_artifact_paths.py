"""Artefact names are data, never paths until checked (issue 17, point 1).

A peer (or a trial, which could reach the key) names the files it sends home; before the check, a
name spelled ``//etc/x`` passed for relative and the dispatcher wrote at the file system's root. On
the worker's side, a link a trial left in its output directory shipped whatever it pointed to.
Running these tests on a build without the check writes only under ``tmp_path``: every absolute
name the strategies make points there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retia import FunctionalEvaluator, report_final_result
from retia.artifact_paths import MAX_COMPONENT_BYTES, MAX_NAME_BYTES, artifact_path
from retia.client.backend import connect
from retia.dispatcher.artifacts import ArtifactStore
from retia.dispatcher.config import DispatcherConfig
from retia.errors import UnsafePathError
from retia.protocol import (
    Ack,
    Done,
    DoneBatch,
    FileChunk,
    InlineFile,
    MsgType,
    Report,
    Run,
    TrialState,
    pack_metric,
)
from retia.session import Session
from retia.worker.trial import file_chunks, pick_artifacts

from ..clusters import fast_cluster
from ..dispatcher.fakes import KEY, done_frames, hello, receive, serving, worker_socket
from ..integration import fits

pytestmark = pytest.mark.timeout(120)

SECRET = b"the worker's key: 0123456789abcdef"


def _tree(top: Path, skip: Path) -> dict[str, tuple[str, bytes]]:
    """Everything under ``top`` but ``skip``: relative path -> (kind, contents or link target)."""
    found: dict[str, tuple[str, bytes]] = {}
    for directory, dirs, files in os.walk(top):
        if Path(directory) == skip or skip in Path(directory).parents:
            continue
        for name in dirs + files:
            path = Path(directory, name)
            if path == skip:
                continue
            rel = str(path.relative_to(top))
            if path.is_symlink():
                found[rel] = ("link", os.readlink(path).encode())
            elif path.is_dir():
                found[rel] = ("dir", b"")
            else:
                found[rel] = ("file", path.read_bytes())
    return found


# ---- the one check of a name ----

REFUSED = [
    "",
    "/x",
    "//x",
    "///x",
    "\\x",
    "\\\\server\\share\\x",
    "C:x",
    "C:\\x",
    "c:/x",
    "..",
    "../x",
    "a/../../b",
    "..\\x",
    "a/./b",
    ".",
    "a//b",
    "a/",
    "a\x00b",
    "a\nb",
    "a\x1bb",
    "a\x7fb",
    "\udcff.bin",  # a surrogate: not UTF-8
    "x" * (MAX_COMPONENT_BYTES + 1),
    "é" * (MAX_COMPONENT_BYTES // 2 + 1),  # 2 bytes a letter
    "/".join(["x" * 100] * 11),  # over MAX_NAME_BYTES in all
]
ACCEPTED = [
    "model.onnx",
    "logs/epoch-1/metrics.csv",
    "trial.log",
    "é/ü.txt",
    "%FF.bin",  # how the worker ships a name of raw bytes
    "ckpt 12:30.pt",
    "ab:c",  # not a drive: one letter makes one
    "..x",
    "x..",
    "x" * MAX_COMPONENT_BYTES,
    "/".join(["x" * 200] * 5),  # 1004 bytes
]


@pytest.mark.parametrize("name", REFUSED, ids=ascii)
def test_a_hostile_name_is_refused_with_a_reason(tmp_path: Path, name: str) -> None:
    with pytest.raises(UnsafePathError, match="artefact name"):
        artifact_path(str(tmp_path), name)


@pytest.mark.parametrize("name", ACCEPTED, ids=ascii)
def test_a_plain_relative_name_lands_inside(tmp_path: Path, name: str) -> None:
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert artifact_path(str(tmp_path), name) == os.path.join(tmp_path, *name.split("/"))


_PIECES = [
    "/",
    "//",
    "\\",
    "\\\\",
    "..",
    ".",
    "\x00",
    "\x01",
    "\n",
    "C:",
    "c:/",
    "Z:\\",
    "a",
    "é",
    "\u202e",
    "\ufeff",
    "\udcff",
    "%2e%2e",
    "~",
    "$HOME",
    "x" * 120,
    "x" * 256,
    "link",  # the links planted in the trial's directory below
    "file-link",
    "up",
]


def _names(outside: str) -> st.SearchStrategy[str]:
    """Hostile names: pieces and random text mixed; an absolute spelling always points at ``outside``
    (so a build without the check writes only under tmp_path), the rest is anything."""
    free = st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=12)), max_size=10).map("".join)
    relative = free.filter(lambda n: not n.startswith(("/", "\\")))
    absolute = st.builds(
        lambda lead, rest: lead + outside + rest,
        st.sampled_from(["/", "//", "///", "\\\\", "\\", "C:", "c:/", "C:\\"]),
        free,
    )
    return st.one_of(relative, absolute)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_name_ever_reaches_outside_the_root(tmp_path: Path, data: st.DataObject) -> None:
    root = tmp_path / "root"
    root.mkdir(exist_ok=True)
    name = data.draw(_names(str(tmp_path / "outside")))
    try:
        path = artifact_path(str(root), name)
    except UnsafePathError as refused:
        assert str(refused)
        return
    real = os.path.realpath(path)
    assert os.path.commonpath([real, str(root)]) == str(root) and real != str(root)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_no_write_ever_lands_outside_the_trials_directory(tmp_path: Path, data: st.DataObject) -> None:
    """Names through ArtifactStore.write into a trial directory holding links out: nothing outside changes."""
    store = ArtifactStore(tmp_path / "home" / "artifacts")
    trial_dir = Path(store.trial_path("client-1", "trial-1"))
    outside = tmp_path / "outside"
    if not trial_dir.exists():
        outside.mkdir()
        (outside / "victim").write_bytes(b"untouched")
        trial_dir.mkdir(parents=True)
        (trial_dir / "link").symlink_to(outside)  # planted before (a shared or reused directory)
        (trial_dir / "file-link").symlink_to(outside / "victim")
        (trial_dir / "up").symlink_to("../../../../outside")
    before = _tree(tmp_path, skip=trial_dir)
    name = data.draw(_names(str(outside)))
    offset = data.draw(st.sampled_from([0, 3]))
    reason = store.write("client-1", "trial-1", FileChunk(name, offset, b"pwned", True))
    assert _tree(tmp_path, skip=trial_dir) == before, f"{name!r} wrote outside ({reason or 'accepted'})"
    if reason:
        return
    written = Path(artifact_path(str(trial_dir), name))
    assert written.read_bytes()[offset:] == b"pwned" and not written.is_symlink()


def test_links_planted_in_a_trials_directory_are_not_followed(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home" / "artifacts")
    trial_dir = Path(store.trial_path("client-1", "trial-1"))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_bytes(b"untouched")
    trial_dir.mkdir(parents=True)
    (trial_dir / "link").symlink_to(outside)
    (trial_dir / "file-link").symlink_to(outside / "victim")
    (trial_dir / "logs").mkdir()
    (trial_dir / "logs" / "up").symlink_to("../../../../../outside")
    for name in ["link/new", "file-link", "logs/up/victim", "logs/up/deeper/new"]:
        reason = store.write("client-1", "trial-1", FileChunk(name, 0, b"pwned", True))
        assert "symbolic link" in reason, name
    assert sorted(p.name for p in outside.iterdir()) == ["victim"]
    assert (outside / "victim").read_bytes() == b"untouched"
    assert store.write("client-1", "trial-1", FileChunk("logs/fine.txt", 0, b"ok", True)) == ""
    assert (trial_dir / "logs" / "fine.txt").read_bytes() == b"ok"


# ---- the attack on a real dispatcher, by a hand-driven worker ----


def _acks_and_runs(
    sock: zmq.Socket[bytes],
    session: Session,
    done: Callable[[list[Ack], list[Run]], bool],
    timeout: float = 10,
) -> tuple[list[Ack], list[Run]]:
    """ACKs and RUNs that come until ``done(acks, runs)`` says enough (or the timeout)."""
    acks: list[Ack] = []
    runs: list[Run] = []
    deadline = time.monotonic() + timeout
    while not done(acks, runs) and time.monotonic() < deadline:
        if sock.poll(200):
            msg = session.parse(sock.recv_multipart())
            if msg.type is MsgType.ACKS:
                acks += msg.body.items
            elif msg.type is MsgType.RUNS:
                runs += msg.body.items
            sock.send_multipart(session.frames(MsgType.HEARTBEAT))
    return acks, runs


def test_a_worker_cannot_write_outside_with_a_double_slash_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    config = DispatcherConfig(bind="tcp://127.0.0.1:*", home=home, journal=Path(":memory:"))
    before = _tree(tmp_path, skip=home)
    with serving(config) as dispatcher, worker_socket(dispatcher.address) as worker:
        session = hello(worker)
        with connect(dispatcher.address, key=KEY) as client:
            first, second = (
                client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(2)
            )
            run = receive(worker, session, MsgType.RUNS)
            assert run is not None and run.trial == first.id
            by_file = "/" + str(tmp_path / "pwned-by-file")  # //tmp/...: passed the old check for "/"
            by_done = "/" + str(tmp_path / "pwned-by-done")
            chunk = FileChunk(by_file, 0, b"pwned", True)
            worker.send_multipart(session.frames(MsgType.FILE, chunk, trial=first.id, attempt=1, seq=1))
            final = Report(first.id, 1, 1, True, pack_metric(1.0))
            files = [InlineFile(by_done, b"pwned"), InlineFile("legit.txt", b"fine")]
            done = Done(first.id, 1, 2, TrialState.SUCCEEDED, reports=[final], files=files, report_count=1)
            worker.send_multipart(session.frames(MsgType.DONES, DoneBatch([done])))
            acks, runs = _acks_and_runs(worker, session, lambda acks, runs: len(acks) >= 2 and bool(runs))
            by_seq = {a.seq: a for a in acks if a.trial == first.id}
            assert not by_seq[1].ok and "absolute" in by_seq[1].reason  # the FILE: refused, saying why
            assert by_seq[2].ok  # the DONE: stored, its bad file skipped
            assert first.result(timeout=10) == 1.0 and first.output_dir is not None
            assert (first.output_dir / "legit.txt").read_bytes() == b"fine"
            assert [r.trial for r in runs] == [second.id]  # the dispatcher serves on
            worker.send_multipart(done_frames(session, second.id, (1, True, 2.0)))
            assert second.result(timeout=10) == 2.0
    assert _tree(tmp_path, skip=home) == before  # nothing written outside the dispatcher's home


# ---- the worker's side: a link out of the output directory ships nothing ----


def test_a_link_out_of_the_output_directory_is_not_read(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (tmp_path / "secret").write_bytes(SECRET)
    (out / "stolen").symlink_to(tmp_path / "secret")
    (out / "up").symlink_to("../secret")
    (out / "d" / "kept.txt").write_bytes(b"mine")
    (out / "copy.txt").symlink_to("d/kept.txt")  # a link inside ships its file, as before
    inline, streamed = pick_artifacts(str(out), budget=1 << 20, inline_limit=64 << 10)
    assert sorted((f.path, f.data) for f in inline) == [("copy.txt", b"mine"), ("d/kept.txt", b"mine")]
    assert streamed == []


def test_a_link_swapped_in_after_the_listing_is_not_followed(tmp_path: Path) -> None:
    """A trial's process still running after the listing replaces a directory with a link out."""
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    (out / "d").mkdir(parents=True)
    (out / "d" / "big.bin").write_bytes(b"a" * 4096)
    elsewhere.mkdir()
    (elsewhere / "big.bin").write_bytes(SECRET * 200)
    _, [(rel, path, size)] = pick_artifacts(str(out), budget=1 << 20, inline_limit=100)
    (out / "d").rename(out / "was-d")
    (out / "d").symlink_to(elsewhere)
    data = b"".join(c.data for c in file_chunks(rel, path, 1000, size))
    assert SECRET not in data and data == b""  # not opened: its chunks go empty, as for a file gone


def plants_links(model_cls: Any, secret: str, big_secret: str) -> None:
    """A trial that links files outside its output directory (the worker's key, say) into it."""
    root = Path(os.environ["RETIA_OUTPUT_DIR"])
    (root / "normal.txt").write_text("a result")
    (root / "stolen.txt").symlink_to(secret)  # small: would ride inside DONE
    (root / "stolen.bin").symlink_to(big_secret)  # large: would stream in FILE chunks
    (root / "copy.txt").symlink_to(root / "normal.txt")
    report_final_result(1.0)


@pytest.fixture
def secrets(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    small, big = tmp_path / "worker.key", tmp_path / "big.key"
    small.write_bytes(SECRET)
    big.write_bytes(SECRET * 10_000)  # 340 KB
    yield small, big


def test_a_trial_cannot_send_home_a_file_it_links_to(tmp_path: Path, secrets: tuple[Path, Path]) -> None:
    small, big = secrets
    with fast_cluster(workers=1, home=tmp_path / "home") as backend:
        evaluator = FunctionalEvaluator(plants_links, secret=str(small), big_secret=str(big))
        trial = backend.submit(fits.DigitsMLP, evaluator)
        assert trial.result(timeout=60) == 1.0 and trial.output_dir is not None
        assert (trial.output_dir / "normal.txt").read_text() == "a result"
        assert (trial.output_dir / "copy.txt").read_text() == "a result"
        assert (
            not (trial.output_dir / "stolen.txt").exists() and not (trial.output_dir / "stolen.bin").exists()
        )
        artifacts = tmp_path / "home" / "artifacts"
        leaked = [p for p in artifacts.rglob("*") if p.is_file() and SECRET in p.read_bytes()]
        assert leaked == []
