"""Signed messages of every type with fuzzed fields, to a real dispatcher: inside real sessions, as a
worker, a client and an admin would send them (what a credential's holder can send), and from a
route without a session (a stranger, who holds no key). Nothing stops the dispatcher or its
worker, the bad ones are dropped and logged (type, sender, field), and a real trial then succeeds.
HELLOs that may not open a session (a bad signature, a credential that is not the signer's, no
nonce, a routing id the peer chose) get no WELCOME.

``RETIA_FUZZ_EXAMPLES`` sets the examples per message type (default 150; the issue's bar is 10,000).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retia import codec
from retia.client.backend import Backend
from retia.credentials import Credential, Role, derive_key, issue
from retia.errors import AuthenticationError, ProtocolError
from retia.keys import load_key
from retia.protocol import Hello, MsgType
from retia.session import NONCE_BYTES, Opening, Session, read_reset

from ..clusters import fast_cluster, processes
from ..dispatcher.fakes import receive
from ..sockets import dealer, open_session
from .fuzzing import EXAMPLES, body, burned, header, signed
from .test_attacker import _log, _still_serves

pytestmark = pytest.mark.timeout(max(240, EXAMPLES * 2))

_FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
_GUESSED = b"guessed-key-guessed-key-guessed-"
_BEAT = 0.1  # a fuzzer heartbeats this often: its session outlives the dispatcher's 1 s liveness


@dataclass
class Fuzzer:
    """A DEALER in one role. With a credential it holds a real session, opened again whenever a fuzzed
    message may have ended it (a HELLO, a BYE, a number past the session's, a RESET); without one
    it is a stranger, whose messages no session signed."""

    name: str
    role: Role
    credential: Credential | None
    cluster_key: bytes
    sock: zmq.Socket[bytes]
    session: Session
    _beat: float = 0.0

    def open(self) -> None:
        """A new session, proven at once (a worker or a client joins)."""
        if self.credential is None:
            return
        self.session = open_session(self.sock, self.credential, Hello(self.role, self.name))
        self.sock.send_multipart(self.session.frames(MsgType.HEARTBEAT))
        self._beat = time.monotonic()

    def frames(self, kind: MsgType, data: st.DataObject) -> list[bytes]:
        """A fuzzed message of ``kind``: signed in the session, or (a HELLO, half the time) as a new HELLO
        with the key its body names (the head node's cluster key can sign for any credential)."""
        head = data.draw(header(kind, self.name), label="header")
        payload = data.draw(body(kind), label="payload")
        signer = self.session
        if kind is MsgType.HELLO and self.credential is not None and data.draw(st.booleans(), label="new"):
            signer = Session(self._hello_key(payload), self.name)
        return signed(signer, head, payload)

    def _hello_key(self, payload: bytes) -> bytes:
        assert self.credential is not None
        try:
            hello = codec.unpack(Hello, payload)
        except ProtocolError:
            return self.credential.key
        if not hello.credential:
            return self.cluster_key
        return derive_key(self.cluster_key, hello.role, hello.credential, hello.issued)

    def ended(self, kind: MsgType, frames: list[bytes]) -> bool:
        return self.credential is not None and (
            kind in (MsgType.HELLO, MsgType.BYE) or burned(self.session, frames)
        )

    def drain(self) -> None:
        """Read what came back (a reply the session cannot check is from one it replaced); heartbeat;
        a RESET says the dispatcher lost the session: open another."""
        lost = False
        while self.sock.poll(0):
            frames = self.sock.recv_multipart()
            if read_reset(frames) is not None:
                lost = True
                continue
            with contextlib.suppress(AuthenticationError):
                self.session.parse(frames)  # a ProtocolError: the dispatcher signed what it cannot frame
        if lost:
            self.open()
        elif self.credential is not None and time.monotonic() - self._beat > _BEAT:
            self.sock.send_multipart(self.session.frames(MsgType.HEARTBEAT))
            self._beat = time.monotonic()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with fast_cluster(workers=1, home=tmp_path_factory.mktemp("fuzzed")) as backend:
        yield backend


def _cluster_key(cluster: Backend) -> bytes:
    return load_key(processes(cluster).key_file)


@pytest.fixture(scope="module")
def fuzzers(cluster: Backend) -> Iterator[list[Fuzzer]]:
    key = _cluster_key(cluster)
    with contextlib.ExitStack() as stack:
        made = []
        for name, role, credential in (
            ("fuzz-worker", Role.WORKER, issue(key, Role.WORKER, "fuzz-worker")),
            ("fuzz-client", Role.CLIENT, issue(key, Role.CLIENT, "fuzz-client")),
            ("fuzz-admin", Role.ADMIN, issue(key, Role.ADMIN, "fuzz-admin")),
            ("fuzz-stranger", Role.CLIENT, None),
        ):
            sock = stack.enter_context(dealer(cluster.address))
            sock.setsockopt(zmq.SNDHWM, 0)
            fuzzer = Fuzzer(name, role, credential, key, sock, Session(_GUESSED, name))
            fuzzer.open()
            made.append(fuzzer)
        yield made
        _leave(made)


def _leave(fuzzers: list[Fuzzer]) -> None:
    """Every fuzzer says BYE in its session: no fake worker may hold a trial."""
    for fuzzer in fuzzers:
        if fuzzer.credential is not None:
            fuzzer.sock.send_multipart(fuzzer.session.frames(MsgType.BYE))
    time.sleep(0.5)


def _answers(sock: zmq.Socket[bytes], seconds: float = 1.0) -> list[list[bytes]]:
    answers, deadline = [], time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000) + 1):
        answers.append(sock.recv_multipart())
    return answers


def test_hellos_that_may_not_open_a_session_get_no_welcome(cluster: Backend) -> None:
    key = _cluster_key(cluster)
    cred = issue(key, Role.WORKER, "hello-probe")
    hello = Hello(Role.WORKER, "hello-probe", credential=cred.name, issued=cred.issued)
    nonce = b"n" * NONCE_BYTES
    # before the fuzz (this test runs first): the dispatcher logs 20 drops a minute in full, then counts
    refused: dict[str, tuple[Session, Hello, str | None]] = {  # the HELLO, as signed, and its log line
        "a bad signature": (
            Session(_GUESSED, "p"),
            replace(hello, nonce=nonce),
            "not credential 'hello-probe'",
        ),
        "another credential's name": (
            Session(cred.key, "p"),
            replace(hello, credential="local-workers", nonce=nonce),
            "not credential 'local-workers'",
        ),
        "another issue time": (
            Session(cred.key, "p"),
            replace(hello, issued=cred.issued + 1, nonce=nonce),
            "not credential 'hello-probe'",
        ),
        "another role": (
            Session(cred.key, "p"),
            replace(hello, role=Role.CLIENT, nonce=nonce),
            "not credential 'hello-probe''s, as a client",
        ),
        "no nonce": (Session(cred.key, "p"), hello, None),
        "a short nonce": (Session(cred.key, "p"), replace(hello, nonce=nonce[:16]), None),
    }
    for case, (signer, body_, logged) in refused.items():
        with dealer(cluster.address) as sock:
            sock.send_multipart(signer.frames(MsgType.HELLO, body_))
            answers = _answers(sock)
            assert all(read_reset(a) is not None for a in answers), f"{case}: answered {answers}"
        assert logged is None or logged in _log(cluster), case  # (a HELLO it cannot read gets a RESET)
    # the right HELLO, from a routing id the peer chose: it would take over whoever had that id
    with dealer(cluster.address, b"hello-probe") as sock:
        sock.send_multipart(Opening(cred, "hello-probe").hello_frames(hello))
        assert not _answers(sock), "a HELLO from a peer-chosen routing id was answered"
    assert "a HELLO from a peer-chosen routing id" in _log(cluster)
    with dealer(cluster.address) as sock:  # and from a route the socket assigned, it opens a session
        session = open_session(sock, cred, hello)
        sock.send_multipart(session.frames(MsgType.BYE))


@pytest.mark.parametrize("kind", list(MsgType), ids=lambda k: k.name)
def test_fuzzed_signed_messages_of_every_type_leave_the_dispatcher_serving(
    cluster: Backend, fuzzers: list[Fuzzer], kind: MsgType
) -> None:
    @_FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        fuzzer = data.draw(st.sampled_from(fuzzers), label="sender")
        frames = fuzzer.frames(kind, data)
        fuzzer.sock.send_multipart(frames)
        if fuzzer.ended(kind, frames):
            fuzzer.open()
        fuzzer.drain()

    fuzz()
    for fuzzer in fuzzers:
        fuzzer.drain()
    dispatcher = processes(cluster).dispatcher
    assert dispatcher is not None and dispatcher.poll() is None, "the dispatcher died"
    assert all(w.poll() is None for w in processes(cluster).worker_procs), "the worker died"
    _answers_status(cluster)


def _answers_status(cluster: Backend) -> None:
    """Alive is not serving: a new admin session is welcomed and its STATUS answered, within seconds."""
    credential = issue(_cluster_key(cluster), Role.ADMIN, "status-probe")
    with dealer(cluster.address) as sock:
        try:
            session = open_session(sock, credential, Hello(Role.ADMIN, "status-probe"), timeout=10.0)
            sock.send_multipart(session.frames(MsgType.STATUS))
            answered = receive(sock, session, MsgType.STATUS_REPLY, 10_000) is not None
        except AuthenticationError:
            answered = False
        assert answered, "the dispatcher stopped serving; its log ends:\n" + _log(cluster)[-6000:]
        sock.send_multipart(session.frames(MsgType.BYE))


def test_after_the_fuzz_a_real_trial_succeeds_and_the_drops_were_logged(
    cluster: Backend, fuzzers: list[Fuzzer]
) -> None:
    admin = next(f for f in fuzzers if f.role is Role.ADMIN)
    admin.open()  # the fuzzed route still serves a session: STATUS is answered in it
    admin.sock.send_multipart(admin.session.frames(MsgType.STATUS))
    assert receive(admin.sock, admin.session, MsgType.STATUS_REPLY) is not None
    _leave(fuzzers)
    _still_serves(cluster)
    log = _log(cluster)
    assert "Traceback" not in log, log[log.index("Traceback") - 2000 :][:6000]
    assert "undecodable SUBMITS from 'fuzz-client'" in log or "further drops are counted" in log
