"""An attacker on the wire: nothing unsigned is ever decoded, and the cluster keeps serving.

The proof of "never deserialized" is a payload whose unpickling would create a marker file:
it is sent forged, replayed, fuzzed and even correctly signed to the dispatcher, and the file
never appears.
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
from retia.errors import AuthenticationError, ProtocolError
from retia.protocol import (
    VERSION,
    Hello,
    MsgType,
    Report,
    ReportBatch,
    Role,
    Submit,
    SubmitBatch,
    pack_metric,
)
from retia.session import Session

from ..clusters import fast_cluster, processes
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


def _attacker(
    address: str, identity: bytes = b"mallory"
) -> contextlib.AbstractContextManager[zmq.Socket[bytes]]:
    """A raw DEALER; what was sent is delivered on close (a failed test waits 5 s at most)."""
    return dealer(address, identity, linger_ms=5000)


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


def test_every_kind_of_bad_message_is_dropped_logged_and_never_decoded(target: Backend, marker: Path) -> None:
    with _attacker(target.address) as sock:
        good = Session(target.key, "mallory")
        wrong = Session(b"guessed-key-guessed-key-guessed", "mallory")
        frames = _evil_submit(good, marker, "evil-1")
        attacks = {
            "wrong key": _evil_submit(wrong, marker, "evil-2"),
            "no signature": [frames[0], b"", *frames[2:]],
            "flipped bit": [*frames[:3], frames[3][:-1] + bytes([frames[3][-1] ^ 1])],
            "wrong version": [b"retia/0", *frames[1:]],
            "truncated": frames[:2],
            "random bytes": [os.urandom(64) for _ in range(4)],
        }
        for attack in attacks.values():
            sock.send_multipart(attack)
        header = msgpack.packb([99, "", 0, 0, "mallory", 0.0])
        payload = pickle.dumps(_Marker(marker))
        sock.send_multipart([VERSION, good.sign(header, payload), header, payload])  # signed, unknown type
        big = good.frames(MsgType.REPORTS, ReportBatch([Report("t", 1, 1, True, pack_metric(1.0))]))
        big[3] = b"\x00" * (100 << 20)  # a 100 MB frame
        sock.send_multipart(big)

    _still_serves(target)
    log = _log(target)
    for needle in ("bad signature", "protocol version", "expected 4 frames", "undecodable", "exceeds"):
        assert needle in log
    assert "b'mallory'" in log
    assert "evil-2" not in log  # the forged trial was never queued


def test_a_replayed_message_is_refused(target: Backend) -> None:
    with _attacker(target.address, b"replayer") as sock:
        frames = Session(target.key, "replayer").frames(MsgType.STATUS)
        sock.send_multipart(frames)
        assert sock.poll(10_000), "the first STATUS got no answer"
        sock.recv_multipart()
        sock.send_multipart(frames)  # the very same signed bytes again
        assert not sock.poll(1_500), "a replayed message was answered"
    assert "replayed message" in _log(target)
    _still_serves(target)


def test_the_dispatcher_never_unpickles_even_signed_payloads(target: Backend, marker: Path) -> None:
    with _attacker(target.address, b"insider") as sock:
        insider = Session(target.key, "insider")
        sock.send_multipart(insider.frames(MsgType.HELLO, Hello(Role.CLIENT, "insider")))
        sock.send_multipart(_evil_submit(insider, marker, "signed-evil"))
        replies = []
        while sock.poll(2_000):
            replies.append(Session(target.key, "x").parse(sock.recv_multipart()))
        acked = {ack.trial for m in replies if m.type is MsgType.ACKS for ack in m.body.items}
        assert "signed-evil" in acked  # stored, opaque
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
    for candidate in (
        frames,
        [VERSION, session.sign(signed_header, signed_payload), signed_header, signed_payload],
    ):
        try:
            session.parse(candidate)
        except (ProtocolError, AuthenticationError):
            pass


def test_pickles_inside_signed_payloads_are_not_loaded_by_the_decoder(marker: Path) -> None:
    session = Session(b"k" * 32, "w")
    poisoned = pickle.dumps(_Marker(marker))
    for body in (msgpack.packb([poisoned, True]), poisoned, msgpack.packb(msgpack.ExtType(4, poisoned))):
        header = msgpack.packb([int(MsgType.REPORTS), "t", 1, 1, "w", 0.0])
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
        with pytest.raises(RetiaError, match="no answer from a dispatcher"):
            connect(backend.address, key=backend.key, timeout=3)  # right HMAC key, no Curve certificate
        stranger = Path(tmp_path / "other")
        from retia.encryption import server_certificate

        wrong_public, _ = server_certificate(stranger)  # someone else's dispatcher certificate
        with pytest.raises(RetiaError, match="no answer from a dispatcher"):
            connect(backend.address, key=backend.key, timeout=3, curve_server_key=wrong_public)
