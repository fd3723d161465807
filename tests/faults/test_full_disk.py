"""Acknowledged means stored, on a real full or read-only filesystem (a small tmpfs, mounted as root).

The dispatcher's journal, artefacts and blobs live on it; a real dispatcher, worker and client run
against it while it fills up (or goes read-only) and frees again."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import zmq

from retia import FunctionalEvaluator
from retia.client.backend import Backend, Trial
from retia.credentials import Credential
from retia.peer import Peer, PeerTiming
from retia.protocol import Ack, Hello, MsgType, Outgoing, Role, Submit, TrialState

from ..clusters import HEARTBEAT_INTERVAL, LIVENESS, fast_cluster, processes
from ..disks import fill, small_disk
from ..integration import fits

pytestmark = pytest.mark.timeout(150)


class _Submitter:
    """A client on the real connection code (``retia.peer``) that keeps each SUBMIT's answer,
    refusals with their reason (the public client turns those into failed trials)."""

    def __init__(self, address: str, credential: Credential, client_id: str = "raw-client") -> None:
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.peer = Peer(
            self.ctx,
            address,
            credential,
            client_id,
            lambda: Hello(Role.CLIENT, client_id),
            timing=PeerTiming(HEARTBEAT_INTERVAL, LIVENESS),
        )
        self.peer.connect()
        self.answers: dict[str, Ack] = {}
        self.sent: list[str] = []

    def submit(self, trial: str, payload: bytes) -> None:
        seq = len(self.sent) + 1
        self.sent.append(trial)
        submit = Submit(trial, seq, b"not a pickle: never run", payload, name=trial)
        self.peer.keep([Outgoing(MsgType.SUBMITS, submit, trial, 0, seq)])

    def pump(self, until: float) -> None:
        """Serve the connection (heartbeats, RESETs, re-sends) until every SUBMIT is answered or ``until``."""
        while len(self.answers) < len(self.sent) and time.monotonic() < until:
            sock = self.peer.sock
            if sock is not None and sock.poll(50):
                for msg in self.peer.receive():
                    if msg.type is MsgType.ACKS:
                        self.answers.update({ack.trial: ack for ack in msg.body.items})
                    elif msg.type is MsgType.RESET:  # as the client does: HELLO, then re-send
                        self.peer.reset(msg.body)
            self.peer.tick(time.monotonic())

    def close(self) -> None:
        self.peer.close()
        self.ctx.term()


def _started(trial: Trial, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not trial.intermediates:
        assert time.monotonic() < deadline, f"trial {trial.id} did not start reporting"
        time.sleep(0.02)


def _stored(journal: Path) -> set[str]:
    """The trial ids the journal holds, read as a restarted dispatcher would."""
    with contextlib.closing(sqlite3.connect(f"file:{journal}?mode=ro", uri=True)) as db:
        return {row[0] for row in db.execute("SELECT id FROM trials")}


def _log_lines(backend: Backend, words: str) -> int:
    log = processes(backend).home / "logs" / "dispatcher.log"
    return sum(words in line for line in log.read_text(errors="replace").splitlines())


def test_a_full_disk_refuses_new_trials_loses_nothing_acknowledged_and_resumes(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "16m") as disk:
        home = tmp_path / "cluster"
        home.mkdir()
        for name in ("artifacts", "blobs"):  # journal, artefacts and blobs on the small disk
            (disk / name).mkdir()
            (home / name).symlink_to(disk / name)
        journal = disk / "journal.sqlite"
        with fast_cluster(workers=1, home=home, journal=str(journal)) as backend:
            running = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=40, delay=0.1))
            _started(running)
            filler = fill(disk)
            submitter = _Submitter(backend.address, backend.credential)
            try:
                for i in range(20):
                    submitter.submit(f"full-{i:02d}", os.urandom(200_000))
                    submitter.pump(until=time.monotonic() + 0.2)
                submitter.pump(until=time.monotonic() + 30)
            finally:
                submitter.close()
            accepted = sorted(t for t, ack in submitter.answers.items() if ack.ok)
            assert set(accepted) <= _stored(journal), "acknowledged, then lost"
            dispatcher = processes(backend).dispatcher
            assert dispatcher is not None and dispatcher.poll() is None, (
                "the dispatcher exited on a full disk"
            )
            assert backend.status().counts["RUNNING"] == 1  # it still serves
            assert set(submitter.answers) == set(submitter.sent), "every SUBMIT is answered"
            refusals = [ack.reason for ack in submitter.answers.values() if not ack.ok]
            assert refusals, "a full disk refuses new trials"
            for reason in refusals:
                assert "disk is full" in reason and str(journal) in reason, reason
            assert running.state is TrialState.RUNNING  # its DONE cannot be stored yet: it waits

            filler.unlink()  # space returns: the dispatcher resumes by itself
            assert running.result(timeout=60) == 40.0
            assert running.intermediates == [float(i) for i in range(40)]  # each once, in order
            after = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
            assert after.result(timeout=60) == 3.0
            assert _log_lines(backend, "degraded:") >= 1
            assert _log_lines(backend, "degraded:") == _log_lines(backend, "resumed")  # once each way

            cluster = processes(backend)
            cluster.kill_dispatcher()  # and restart it on the same journal
            assert set(accepted) <= _stored(journal)
            with contextlib.closing(sqlite3.connect(journal)) as db:
                reports = db.execute(
                    "SELECT COUNT(*), SUM(final) FROM reports WHERE trial = ?", (running.id,)
                ).fetchone()
            assert tuple(reports) == (41, 1)  # its reports and its final, each stored once
            cluster.start_dispatcher()
            counts = backend.status().counts
            assert sum(counts.values()) == 2 + len(accepted)


def test_read_only_artefacts_hold_a_done_back_until_remounted(tmp_path: Path) -> None:
    """Artefacts on a disk remounted read-only: the DONE that ships files is not refused (the worker
    would drop it) but waits unacknowledged; new trials are refused meanwhile; rw again, it lands."""
    with small_disk(tmp_path / "disk", "8m") as disk:
        home = tmp_path / "cluster"
        home.mkdir()
        (home / "artifacts").symlink_to(disk)
        with fast_cluster(workers=1, home=home) as backend:
            running = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=10, delay=0.1))
            _started(running)
            subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
            submitter = _Submitter(backend.address, backend.credential)
            refused: Ack | None = None
            try:
                deadline = time.monotonic() + 30
                while refused is None and time.monotonic() < deadline:  # until its DONE hits the disk
                    submitter.submit(f"probe-{len(submitter.sent)}", b"m")
                    submitter.pump(until=time.monotonic() + 5)
                    time.sleep(0.2)
                    refused = next((a for a in submitter.answers.values() if not a.ok), None)
                time.sleep(1.0)  # its DONE is re-sent in between: still not stored, not refused
            finally:
                submitter.close()
            assert refused is not None and "read-only" in refused.reason, refused
            assert running.state is TrialState.RUNNING
            subprocess.run(["mount", "-o", "remount,rw", str(disk)], check=True)
            assert running.result(timeout=60) == 10.0
            assert running.output_dir is not None
            assert "fit pid " in (running.output_dir / "trial.log").read_text()  # its files landed too
