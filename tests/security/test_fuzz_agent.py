"""A fake dispatcher (a ROUTER in the test) plays the handshake with a real agent, then sends it
signed messages of every type it may receive inside that session, with fuzzed fields; it also sends
what reaches an agent without a session (unsigned frames that look like a RESET, WELCOMEs with a
wrong signature or for an earlier HELLO, junk). The agent drops and logs the bad ones, stays
connected, and then runs a real trial to success. It also starts with its open-file limit raised to
the hard one.

``RETIA_FUZZ_EXAMPLES`` sets the examples per message type (default 150; the issue's bar is 10,000).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retia import FunctionalEvaluator, codec
from retia.client.backend import _model_recipe
from retia.errors import ProtocolError, RetiaError
from retia.keys import create_key_file, load_key
from retia.protocol import (
    Ack,
    AckBatch,
    Message,
    MsgType,
    Run,
    RunBatch,
    TrialState,
    Welcome,
)
from retia.serializer import dump
from retia.session import Greeting, Session, accept, peek_header, read_hello, reset_frames, welcome_frames

from ..integration import fits
from ..sockets import accept_session, stop
from .fuzzing import EXAMPLES, body, burned, header, signed, unsigned

pytestmark = pytest.mark.timeout(max(240, EXAMPLES * 2))

# everything a dispatcher may send an agent, but what it obeys: SHUTDOWN, and REFUSED (the dispatcher
# will not serve it: it stops), which only the session's other end can sign
KINDS = [k for k in MsgType if k not in (MsgType.SHUTDOWN, MsgType.REFUSED)]
HEARTBEAT, LIVENESS = 0.2, 5
_FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
_WELCOME = Welcome(HEARTBEAT, LIVENESS, "fake")


def _is_hello(frames: list[bytes]) -> bool:
    try:
        return peek_header(frames).type is MsgType.HELLO
    except ProtocolError:
        return False


@dataclass
class FakeDispatcher:
    """Plays the handshake (again, whenever the agent says HELLO), acknowledges what the agent keeps,
    heartbeats; collects DONEs."""

    sock: zmq.Socket[bytes]
    key: bytes  # the cluster key the agent signs its HELLO with
    session: Session = field(default_factory=lambda: Session(b"-", "fake"))
    agent: bytes = b""
    dones: dict[str, list[TrialState]] = field(default_factory=dict)
    hellos: int = 0
    _beat: float = 0.0

    def handshake(self, timeout: float = 10.0) -> None:
        """Answer the agent's next HELLO: the session from now on."""
        self.agent, _, self.session = accept_session(self.sock, self.key, welcome=_WELCOME, timeout=timeout)
        self.hellos += 1

    def reset(self) -> None:
        """Send the unsigned RESET that makes the agent say HELLO (again)."""
        self.sock.send_multipart([self.agent, *reset_frames(time.time())])

    def await_hello(self, timeout: float = 10.0) -> Greeting:
        """Ask for a HELLO and wait for it, unanswered (what comes meanwhile is handled)."""
        self.reset()
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0 and self.sock.poll(int(left * 1000)):
            identity, *frames = self.sock.recv_multipart()
            if _is_hello(frames):
                self.agent = identity
                return read_hello(frames)
            self._read(frames)
        raise AssertionError(f"no HELLO within {timeout}s")

    def pump(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                identity, *frames = self.sock.recv_multipart()
                if _is_hello(frames):  # it lost its session (a RESET, a silence): that HELLO is spent,
                    self.agent = identity
                    self.reset()  # so ask again, and answer that one
                    self.handshake()
                else:
                    self._read(frames)
            now = time.monotonic()
            if now - self._beat > HEARTBEAT:
                self.send(MsgType.HEARTBEAT)
                self._beat = now
            if now >= deadline and not self.sock.poll(0):
                return

    def send(self, kind: MsgType, body: object = None, **header: object) -> None:
        self.sock.send_multipart([self.agent, *self.session.frames(kind, body, **header)])  # type: ignore[arg-type]

    def _read(self, frames: list[bytes]) -> None:
        try:
            msg = self.session.parse(frames)
        except RetiaError:
            return  # signed in the session before the last handshake
        self._answer(msg)

    def _answer(self, msg: Message) -> None:
        if msg.type is MsgType.DONES:
            for done in msg.body.items:
                self.dones.setdefault(done.trial, []).append(done.state)
            acks = [Ack(d.trial, d.attempt, d.seq) for d in msg.body.items]
            self.send(MsgType.ACKS, AckBatch(acks))
        elif msg.type in (MsgType.REPORTS, MsgType.FILE):
            h = msg.header
            self.send(MsgType.ACKS, AckBatch([Ack(h.trial, h.attempt, h.seq)]))


def _lowered_soft_limit() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))


@pytest.fixture(scope="module")
def fake(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FakeDispatcher, subprocess.Popen[bytes]]]:
    home = tmp_path_factory.mktemp("fuzzed-agent")
    key_file = home / "cluster.key"
    create_key_file(key_file)
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind("tcp://127.0.0.1:*")
        address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        command = [sys.executable, "-m", "retia.worker", "--connect", address, "--key-file", str(key_file)]
        command += ["--home", str(home / "worker"), "--name", "fuzzed-agent", "--heartbeat", str(HEARTBEAT)]
        command += ["--liveness", str(LIVENESS), "--preload", "retia.worker.runner,retia.serializer"]
        with (home / "worker.log").open("wb") as log:
            agent = subprocess.Popen(command, stderr=log, preexec_fn=_lowered_soft_limit)
        fake = FakeDispatcher(sock, load_key(key_file))
        try:
            fake.handshake(timeout=60)
            yield fake, agent
        finally:
            stop(agent, timeout=20)


def _log(agent: subprocess.Popen[bytes]) -> str:
    command = agent.args
    assert isinstance(command, list)
    return (Path(str(command[command.index("--home") + 1])).parent / "worker.log").read_text()


def test_the_agent_raises_its_open_file_limit_to_the_hard_limit(
    fake: tuple[FakeDispatcher, subprocess.Popen[bytes]],
) -> None:
    _, agent = fake
    limits = Path(f"/proc/{agent.pid}/limits").read_text().splitlines()
    soft, hard = next(line for line in limits if line.startswith("Max open files")).split()[3:5]
    assert soft == hard and f"open-file limit {hard}" in _log(agent)


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_fuzzed_signed_messages_leave_the_agent_running(
    fake: tuple[FakeDispatcher, subprocess.Popen[bytes]], kind: MsgType
) -> None:
    dispatcher, agent = fake

    @_FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        head = data.draw(header(kind, "fake"), label="header")
        payload = data.draw(body(kind), label="payload")
        frames = signed(dispatcher.session, head, payload)
        dispatcher.sock.send_multipart([dispatcher.agent, *frames])
        if burned(dispatcher.session, frames):  # the agent now refuses our numbers: a new session
            dispatcher.reset()
            dispatcher.handshake()
        dispatcher.pump()

    fuzz()
    dispatcher.pump(0.2)
    assert agent.poll() is None, _log(agent)[-6000:]


_SIGNATURE = st.one_of(st.just(b""), st.binary(max_size=40))
_UNSIGNED = {  # what reaches an agent that no session signed
    "reset": st.builds(
        unsigned,
        st.sampled_from(list(MsgType)).flatmap(lambda k: header(k, "")),
        body(MsgType.RESET),
        _SIGNATURE,
    ),
    "junk": st.lists(st.binary(max_size=64), min_size=1, max_size=6),
}


def _welcome(dispatcher: FakeDispatcher, greeting: Greeting, data: st.DataObject) -> list[bytes]:
    """A fuzzed WELCOME for ``greeting``: with a wrong signature, or (when its body decodes) validly
    signed for that HELLO, as only the dispatcher can."""
    head = data.draw(header(MsgType.WELCOME, "fake"), label="header")
    payload = data.draw(body(MsgType.WELCOME), label="payload")
    forger = data.draw(st.sampled_from(["guessed key", "cluster key", "signature", "dispatcher"]), label="by")
    if forger == "dispatcher":
        try:
            welcome = codec.unpack(Welcome, payload)
        except ProtocolError:
            forger = "signature"
        else:
            return welcome_frames(greeting, dispatcher.key, "fake", welcome)
    if forger == "signature":
        return unsigned(head, payload, data.draw(_SIGNATURE, label="signature"))
    key = dispatcher.key if forger == "cluster key" else b"guessed-key-guessed-key-guessed-"
    return signed(Session(key, "fake"), head, payload)


def test_unsigned_and_forged_frames_leave_the_agent_running(
    fake: tuple[FakeDispatcher, subprocess.Popen[bytes]],
) -> None:
    dispatcher, agent = fake

    @_FUZZ
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(["reset", "junk", "welcome"]), label="kind")
        if kind == "welcome":  # while the agent waits for the answer to its HELLO
            frames = _welcome(dispatcher, dispatcher.await_hello(), data)
        else:
            frames = data.draw(_UNSIGNED[kind], label="frames")
        dispatcher.sock.send_multipart([dispatcher.agent, *frames])
        if kind == "welcome":
            dispatcher.reset()
            dispatcher.handshake()
        dispatcher.pump()

    fuzz()
    dispatcher.pump(0.2)
    assert agent.poll() is None, _log(agent)[-6000:]


def test_a_welcome_for_an_earlier_hello_opens_no_session(
    fake: tuple[FakeDispatcher, subprocess.Popen[bytes]],
) -> None:
    dispatcher, agent = fake
    earlier = dispatcher.await_hello()
    dispatcher.await_hello()  # it says HELLO again: the earlier one is spent
    _, nonce = accept(earlier, dispatcher.key, "fake")
    welcome = welcome_frames(earlier, dispatcher.key, "fake", replace(_WELCOME, nonce=nonce))
    dispatcher.sock.send_multipart([dispatcher.agent, *welcome])
    sent = []  # waiting for its WELCOME it sends nothing but HELLOs; had it taken that one, it would
    deadline = time.monotonic() + 1.0  # heartbeat in the session it opened at once
    while (left := deadline - time.monotonic()) > 0 and dispatcher.sock.poll(int(left * 1000) + 1):
        _, *frames = dispatcher.sock.recv_multipart()
        sent.append(frames)
    assert all(_is_hello(frames) for frames in sent), "a WELCOME for an earlier HELLO opened a session"
    dispatcher.reset()
    dispatcher.handshake()
    dispatcher.pump(0.2)
    assert agent.poll() is None, _log(agent)[-6000:]


def test_after_the_fuzz_the_agent_runs_a_real_trial(
    fake: tuple[FakeDispatcher, subprocess.Popen[bytes]],
) -> None:
    dispatcher, agent = fake
    evaluator = dump(FunctionalEvaluator(fits.counting, steps=2), name="evaluator")
    model = dump(_model_recipe(fits.DigitsMLP, None), name="model")
    deadline = time.monotonic() + 120
    for attempt in range(1, 1000):  # a fuzzed RUN may still hold it: "worker was busy" until it ends
        run = Run("real-trial", attempt, evaluator, model, timeout=60.0)
        dispatcher.send(MsgType.RUNS, RunBatch([run]))
        while "real-trial" not in dispatcher.dones and time.monotonic() < deadline:
            dispatcher.pump(0.2)
        states = dispatcher.dones.pop("real-trial", [])
        if TrialState.SUCCEEDED in states or time.monotonic() > deadline:
            break
    assert TrialState.SUCCEEDED in states, _log(agent)[-6000:]
    assert agent.poll() is None
    assert "Traceback" not in _log(agent), _log(agent)[-6000:]
