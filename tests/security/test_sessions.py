"""Issue 17's attacks on sessions, done for real against a real cluster: a peer taking a worker's route
without a key, three replays of a captured session, clients reaching into each other's trials, a
credential used for another role, and a revoked credential. The legitimate peers carry on meanwhile."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq

from retia import FunctionalEvaluator, codec
from retia.client import Backend, connect
from retia.credentials import Credential, Role, issue
from retia.errors import AuthenticationError, ConfigError, CredentialRefusedError, RetiaError
from retia.keys import load_key
from retia.protocol import (
    VERSION,
    Cancel,
    FileChunk,
    Hello,
    MsgType,
    Submit,
    SubmitBatch,
    TrialState,
)
from retia.session import Opening, Session, peek_header

from ..clusters import fast_cluster, joined_workers, processes
from ..dispatcher.fakes import join, receive
from ..integration import fits
from ..netfaults import CuttableProxy, replay
from ..sockets import dealer, open_session, stop

pytestmark = pytest.mark.timeout(120)


def _types(messages: list[list[bytes]]) -> list[MsgType]:
    """The type each message says it is (read unchecked, as an attacker reads them)."""
    kinds = []
    for frames in messages:
        try:
            kinds.append(peek_header(frames).type)
        except RetiaError:
            pass
    return kinds


def _drain(sock: zmq.Socket[bytes], seconds: float) -> list[list[bytes]]:
    """Everything that reaches ``sock`` within ``seconds``."""
    got = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000)):
            got.append(sock.recv_multipart())
    return got


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Backend]:
    with fast_cluster(1, home=tmp_path / "c") as backend:
        yield backend


def _credential(backend: Backend, role: Role, name: str) -> Credential:
    """A credential issued by this cluster's head node (its address included)."""
    key = load_key(processes(backend).key_file)
    return issue(key, role, name, address=processes(backend).address)


def test_a_peer_with_a_workers_name_and_no_key_gets_no_run_and_the_worker_keeps_its_route(
    cluster: Backend,
) -> None:
    """Before: the dispatcher set ROUTER_HANDOVER and peers chose their routing ids, so connecting as
    ``worker-0`` took the worker's route: the next RUN (the user's code) went to the attacker."""
    (worker,) = joined_workers(cluster, 1)
    with dealer(processes(cluster).address, worker.worker_id.encode()) as attacker:
        stranger = Credential(Role.WORKER, "", 0, b"0" * 64)  # a guess at the key
        attacker.send_multipart(
            Opening(stranger, worker.worker_id).hello_frames(Hello(Role.WORKER, worker.worker_id))
        )
        trials = [cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(3)]
        assert [t.result(timeout=60) for t in trials] == [3.0, 3.0, 3.0]
        seen = _types(_drain(attacker, 1.0))
    assert MsgType.RUNS not in seen and MsgType.WELCOME not in seen, seen
    assert all(t.attempt == 1 for t in trials)  # the real worker was never declared lost
    (after,) = cluster.status().workers
    assert (after.worker_id, after.uptime >= worker.uptime) == (worker.worker_id, True)


@pytest.mark.parametrize("when", ["after a dispatcher restart", "after 131,072 later messages"])
def test_a_captured_client_session_replayed_gets_no_events(tmp_path: Path, when: str) -> None:
    """An eavesdropper records a client's whole TCP stream (its HELLO, its submissions) and replays it
    byte for byte on a connection of its own. Before: the replayed HELLO was accepted (the digest
    history was in memory and bounded to 131,072 messages) and the replayer got WELCOME and the
    victim's event history. Now the replay opens a session the replayer cannot use: it gets the
    WELCOME (nonce, limits: nothing of the victim's) and nothing more."""
    with fast_cluster(1, home=tmp_path / "c") as backend, CuttableProxy(processes(backend).address) as proxy:
        cred = _credential(backend, Role.CLIENT, "alice")
        with connect(proxy.address, credential=cred) as victim:
            trial = victim.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), name="secret-name")
            assert trial.result(timeout=60) == 3.0
        captured = bytes(proxy.sent[0])
        assert b"secret-name" in captured  # the capture holds the victim's submission
        if when == "after a dispatcher restart":
            processes(backend).kill_dispatcher()
            processes(backend).start_dispatcher()
        else:
            with dealer(processes(backend).address) as busy:
                session = join(
                    busy, Hello(Role.CLIENT, "chatty"), credential=_credential(backend, Role.CLIENT, "bob")
                )
                for _ in range(131_072):
                    busy.send_multipart(session.frames(MsgType.HEARTBEAT))
                assert receive(busy, session, MsgType.HEARTBEAT, timeout_ms=20_000) is not None
        got = replay(processes(backend).address, captured, listen=2.0)
        kinds = _types(got)
        assert MsgType.EVENTS not in kinds and MsgType.ACKS not in kinds, kinds
        assert not any(b"secret-name" in frame or trial.id.encode() in frame for m in got for frame in m)
        with connect(processes(backend).address, credential=cred) as again:  # the victim carries on
            assert again.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)).result(timeout=60) == 3.0


def test_a_hello_signed_an_hour_ago_opens_nothing(cluster: Backend) -> None:
    """Before, the header time was never checked: an old HELLO got WELCOME and the event history."""
    cred = _credential(cluster, Role.CLIENT, "carol")
    with connect(processes(cluster).address, credential=cred, client_id="carol-1") as victim:
        assert victim.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)).result(timeout=60) == 3.0
    hello = Hello(Role.CLIENT, "carol-1", credential=cred.name, issued=cred.issued, nonce=os.urandom(32))
    payload = codec.pack(hello)
    header = msgpack.packb([int(MsgType.HELLO), "", 0, 0, "carol-1", time.time() - 3600, 1])
    old = [VERSION, Session(cred.key, "carol-1").sign(header, payload), header, payload]
    with dealer(processes(cluster).address) as attacker:
        attacker.send_multipart(old)
        kinds = _types(_drain(attacker, 1.0))
        attacker.send_multipart(old)  # and again, on the same route
        kinds += _types(_drain(attacker, 1.0))
    assert MsgType.EVENTS not in kinds, kinds


def test_a_message_replayed_inside_its_session_is_refused(cluster: Backend) -> None:
    cred = _credential(cluster, Role.CLIENT, "dave")
    with dealer(processes(cluster).address) as sock:
        session = join(sock, Hello(Role.CLIENT, "dave-1"), credential=cred)
        frames = session.frames(MsgType.SUBMITS, SubmitBatch([Submit("dave-t", 1, b"e", b"m")]))
        sock.send_multipart(frames)
        first = receive(sock, session, MsgType.ACKS)
        assert first is not None and [a.seq for a in first.body.items] == [1]
        sock.send_multipart(frames)  # the very same frames: its number is not above the last one
        assert receive(sock, session, MsgType.ACKS, timeout_ms=1000) is None


def test_clients_are_kept_apart(cluster: Backend, tmp_path: Path) -> None:
    """Before: any key holder could cancel another client's trial, read its events by saying HELLO with
    its client id, and write into its artefacts."""
    alice = _credential(cluster, Role.CLIENT, "alice")
    mallory = _credential(cluster, Role.CLIENT, "mallory")
    with connect(credential=alice, client_id="alice-1") as owner:
        trial = owner.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=4, delay=0.5))
        next(trial.reports(timeout=30))  # it runs
        # a worker that does not run the attempt cannot write its artefacts
        worker = _credential(cluster, Role.WORKER, "rogue-workers")
        with dealer(processes(cluster).address) as sock:
            session = join(sock, Hello(Role.WORKER, "rogue-0"), credential=worker)
            chunk = FileChunk("planted.txt", 0, b"planted", True)
            sock.send_multipart(session.frames(MsgType.FILE, chunk, trial=trial.id, attempt=1, seq=1))
            acks = receive(sock, session, MsgType.ACKS)
            assert acks is not None
            assert not acks.body.items[0].ok and "not running on this worker" in acks.body.items[0].reason
        with dealer(processes(cluster).address) as sock:
            session = join(sock, Hello(Role.CLIENT, "mallory-1"), credential=mallory)
            sock.send_multipart(session.frames(MsgType.CANCEL, Cancel("mine now"), trial=trial.id, seq=1))
            acks = receive(sock, session, MsgType.ACKS)
            assert acks is not None
            (ack,) = acks.body.items
            assert not ack.ok and "not this client's" in ack.reason
        with pytest.raises(CredentialRefusedError, match="belongs to another credential"):
            connect(credential=mallory, client_id="alice-1")  # alice's events: refused, not replayed
        assert trial.result(timeout=60) == 4.0 and trial.state is TrialState.SUCCEEDED
    assert trial.output_dir is not None and not (trial.output_dir / "planted.txt").exists()


def test_a_worker_credential_cannot_act_as_a_client_nor_a_client_as_a_worker(
    cluster: Backend, tmp_path: Path
) -> None:
    worker = _credential(cluster, Role.WORKER, "pool")
    client = _credential(cluster, Role.CLIENT, "erin")
    with pytest.raises(ConfigError, match="not worker credential 'pool'"):
        connect(credential=worker)
    with dealer(processes(cluster).address) as sock:  # by hand: the dispatcher refuses it as well
        with pytest.raises(AuthenticationError, match="no WELCOME"):
            open_session(sock, worker, Hello(Role.CLIENT, "pool-as-client"), timeout=1.5)
        with pytest.raises(AuthenticationError, match="no WELCOME"):
            open_session(sock, client, Hello(Role.WORKER, "erin-as-worker"), timeout=1.5)
    path = tmp_path / "erin.cred"
    client.save(path)
    run = subprocess.run(
        [sys.executable, "-m", "retia.worker", "--credential", str(path), "--home", str(tmp_path / "w")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 2 and "not client credential 'erin'" in run.stderr
    assert len(joined_workers(cluster, 1)) == 1  # the local one only


def test_a_revoked_credential_is_refused_from_then_on(cluster: Backend, tmp_path: Path) -> None:
    """``retia credential revoke`` writes the journal; the running dispatcher cuts the sessions of
    that name within a heartbeat (a worker stops, a client's waits raise), refuses new ones, and a
    credential of the same name issued afterwards works."""
    home = processes(cluster).home
    frank = _credential(cluster, Role.CLIENT, "frank")
    pool = _credential(cluster, Role.WORKER, "spare-pool")
    pool.save(tmp_path / "pool.cred")
    log = (tmp_path / "worker.log").open("wb")
    spare = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "retia.worker",
            "--credential",
            str(tmp_path / "pool.cred"),
            "--home",
            str(tmp_path / "spare"),
            "--name",
            "spare-0",
            "--heartbeat",
            "0.2",
            "--liveness",
            "5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with connect(credential=frank) as client:
            joined_workers(cluster, 2)
            for name in ("frank", "spare-pool"):
                subprocess.run(
                    [sys.executable, "-m", "retia", "credential", "--home", str(home), "revoke", name],
                    check=True,
                    capture_output=True,
                    timeout=60,
                )
            assert spare.wait(timeout=30) == 2  # told REFUSED: it stops, and says so
            deadline = time.monotonic() + 10
            while client.lost is None:  # told REFUSED as well (the same beat)
                assert time.monotonic() < deadline
                time.sleep(0.05)
            with pytest.raises(CredentialRefusedError, match="revoked"):
                client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)).result(timeout=30)
        with pytest.raises(CredentialRefusedError, match="revoked"):
            connect(credential=frank, timeout=10)
        again = _credential(cluster, Role.CLIENT, "frank")  # issued after the revocation
        with connect(credential=again) as client:
            assert client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)).result(timeout=60) == 3.0
        assert cluster.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)).result(timeout=60) == 3.0
    finally:
        if spare.poll() is None:
            stop(spare)
        log.close()
    assert "refused" in (tmp_path / "worker.log").read_text()
