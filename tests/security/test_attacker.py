"""An attacker on the wire: nothing unsigned is ever decoded, and the cluster keeps serving.

The proof of "never deserialized" is a payload whose unpickling would create a marker file:
it is sent forged, replayed, fuzzed and even correctly signed in a client's session to the
dispatcher, and the file never appears.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retia import FunctionalEvaluator
from retia.client.backend import Backend
from retia.credentials import Role, cluster_credential, issue
from retia.errors import AuthenticationError, ProtocolError
from retia.keys import load_key
from retia.protocol import (
    VERSION,
    Hello,
    MsgType,
    Report,
    ReportBatch,
    Submit,
    SubmitBatch,
    pack_metric,
)
from retia.session import Opening, Session, peek_header, read_hello, read_reset

from ..clusters import fast_cluster, processes
from ..dispatcher.fakes import join, receive
from ..integration import fits
from ..sockets import dealer

pytestmark = pytest.mark.timeout(240)


class _Marker:
    """Unpickling this creates ``path``: if the file exists, someone deserialized it."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with fast_cluster(workers=1, home=tmp_path_factory.mktemp("attacked")) as backend:
        yield backend


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "deserialized.marker"
    yield path
    assert not path.exists(), "a payload was deserialized"


def _attacker(address: str) -> contextlib.AbstractContextManager[zmq.Socket[bytes]]:
    """A raw DEALER; what was sent is delivered on close (a failed test waits 5 s at most)."""
    return dealer(address, linger_ms=5000)


def _client_session(target: Backend, sock: zmq.Socket[bytes], name: str) -> Session:
    """A session of a client credential ``name`` (issued on the head node), proven: it has joined."""
    credential = issue(load_key(processes(target).key_file), Role.CLIENT, name)
    return join(sock, Hello(Role.CLIENT, name), credential)


def _still_serves(backend: Backend) -> None:
    trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=2))
    assert trial.result(timeout=60) == 2.0


def _log(backend: Backend) -> str:
    return (processes(backend).home / "logs" / "dispatcher.log").read_text()


def _evil_submit(session: Session, marker: Path, trial: str) -> list[bytes]:
    poisoned = pickle.dumps(_Marker(marker))
    return session.frames(
        MsgType.SUBMITS, SubmitBatch([Submit(trial, 1, poisoned, poisoned, None, None, 0, "evil")])
    )


def test_a_replayed_message_is_refused(target: Backend) -> None:
    with _attacker(target.address) as sock:  # (first: the log's budget of drops in full is not spent)
        session = join(sock, Hello(Role.ADMIN, "replayer"), issue(_key(target), Role.ADMIN, "replayer"))
        frames = session.frames(MsgType.STATUS)
        sock.send_multipart(frames)
        assert receive(sock, session, MsgType.STATUS_REPLY, 10_000) is not None, (
            "the first STATUS got no answer"
        )
        sock.send_multipart(frames)  # the very same signed bytes again
        assert receive(sock, session, MsgType.STATUS_REPLY, 1_500) is None, "a replayed message was answered"
    assert "replayed message" in _log(target)
    _still_serves(target)


def _key(target: Backend) -> bytes:
    return load_key(processes(target).key_file)


def test_every_kind_of_bad_message_is_dropped_logged_and_never_decoded(target: Backend, marker: Path) -> None:
    with _attacker(target.address) as sock:
        good = _client_session(target, sock, "mallory")  # a client credential's holder: in a session
        wrong = Session(b"guessed-key-guessed-key-guessed", "mallory")
        outside = Session(_key(target), "mallory")  # the cluster key itself, but in no session
        frames = _evil_submit(good, marker, "evil-1")
        attacks = {
            "wrong key": _evil_submit(wrong, marker, "evil-2"),
            "cluster key, no session": _evil_submit(outside, marker, "evil-3"),
            "no signature": [frames[0], b"", *frames[2:]],
            "flipped bit": [*frames[:3], frames[3][:-1] + bytes([frames[3][-1] ^ 1])],
            "wrong version": [b"retia/0", *frames[1:]],
            "truncated": frames[:2],
            "random bytes": [os.urandom(64) for _ in range(4)],
        }
        for attack in attacks.values():
            sock.send_multipart(attack)
        poisoned = pickle.dumps(_Marker(marker))
        good.sent += 1
        header = msgpack.packb([99, "", 0, 0, "mallory", 0.0, good.sent])
        sock.send_multipart([VERSION, good.sign(header, poisoned), header, poisoned])  # signed, unknown type
        good.sent += 1
        header = msgpack.packb([int(MsgType.SUBMITS), "", 0, 0, "mallory", 0.0, good.sent])
        sock.send_multipart([VERSION, good.sign(header, poisoned), header, poisoned])  # signed, a pickle body
        big = good.frames(MsgType.REPORTS, ReportBatch([Report("t", 1, 1, True, pack_metric(1.0))]))
        big[3] = b"\x00" * (100 << 20)  # a 100 MB frame
        sock.send_multipart(big)
    for attack in attacks.values():  # and all of it again from routes without a session
        with _attacker(target.address) as stranger:
            stranger.send_multipart(attack)

    _still_serves(target)
    log = _log(target)
    for needle in ("bad signature", "protocol version", "expected 4 frames", "undecodable", "exceeds"):
        assert needle in log
    assert "undecodable SUBMITS from 'mallory'" in log  # the drop names what it was and who sent it
    for forged in ("evil-1", "evil-2", "evil-3"):
        assert forged not in log  # no forged trial was queued


def test_the_dispatcher_never_unpickles_even_signed_payloads(target: Backend, marker: Path) -> None:
    with _attacker(target.address) as sock:
        insider = _client_session(target, sock, "insider")  # a client credential's holder
        sock.send_multipart(_evil_submit(insider, marker, "signed-evil"))
        acks = receive(sock, insider, MsgType.ACKS, 10_000)
        assert acks is not None and "signed-evil" in {ack.trial for ack in acks.body.items}  # stored, opaque
    # The worker runs it: raw pickle is not a retia payload, so retia.load refuses it unread.
    deadline = time.monotonic() + 60
    while "signed-evil FAILED" not in _log(target):
        assert time.monotonic() < deadline, "the poisoned trial never finished"
        time.sleep(0.1)
    _still_serves(target)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    frames=st.lists(st.binary(max_size=64), min_size=0, max_size=6),
    signed_header=st.binary(max_size=48),
    signed_payload=st.binary(max_size=96),
)
def test_fuzzed_frames_raise_only_protocol_or_authentication_errors(
    frames: list[bytes], signed_header: bytes, signed_payload: bytes, tmp_path_factory: pytest.TempPathFactory
) -> None:
    session = Session(b"k" * 32, "fuzz", max_message_bytes=4096)
    opening = Opening(cluster_credential(b"k" * 32), "fuzz")
    for candidate in (
        frames,
        [VERSION, session.sign(signed_header, signed_payload), signed_header, signed_payload],
        [VERSION, b"", signed_header, signed_payload],  # what a RESET looks like: unsigned
    ):
        read_reset(candidate)  # what reads frames without a session raises nothing else either
        for read in (session.parse, opening.answer, read_hello, peek_header):
            try:
                read(candidate)
            except (ProtocolError, AuthenticationError):
                pass


def test_pickles_inside_signed_payloads_are_not_loaded_by_the_decoder(marker: Path) -> None:
    session = Session(b"k" * 32, "w")
    poisoned = pickle.dumps(_Marker(marker))
    bodies = (msgpack.packb([poisoned, True]), poisoned, msgpack.packb(msgpack.ExtType(4, poisoned)))
    for number, body in enumerate(bodies, 1):  # numbered: a number not above the last is refused unread
        header = msgpack.packb([int(MsgType.REPORTS), "t", 1, 1, "w", 0.0, number])
        try:
            session.parse([VERSION, session.sign(header, body), header, body])
        except ProtocolError:
            pass


def test_a_group_readable_key_file_is_refused_by_the_dispatcher(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(key, 0o640)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "retia.dispatcher",
            "--bind",
            "tcp://127.0.0.1:*",
            "--home",
            str(tmp_path),
            "--key-file",
            str(key),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "chmod 600" in proc.stderr and "group or others" in proc.stderr


def test_a_generated_key_file_is_private(tmp_path: Path) -> None:
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        key_file = processes(backend).key_file
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_with_curve_only_peers_holding_the_public_certificate_connect(tmp_path: Path) -> None:
    from retia.client.backend import connect
    from retia.errors import RetiaError

    with fast_cluster(workers=1, home=tmp_path / "c", curve=True) as backend:
        _still_serves(backend)  # workers and this client hold the certificate: trials run encrypted
        key = _key(backend)
        with pytest.raises(RetiaError, match="no answer from a dispatcher"):
            connect(backend.address, key=key, timeout=3)  # the cluster key itself, no Curve certificate
        stranger = Path(tmp_path / "other")
        from retia.encryption import server_certificate

        wrong_public, _ = server_certificate(stranger)  # someone else's dispatcher certificate
        with pytest.raises(RetiaError, match="no answer from a dispatcher"):
            connect(backend.address, key=key, timeout=3, curve_server_key=wrong_public)
