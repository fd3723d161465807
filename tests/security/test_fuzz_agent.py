"""A fake dispatcher (a ROUTER in the test) sends a real agent signed messages of every type it may
receive, with fuzzed fields: the agent drops and logs the bad ones, stays connected, and then runs
a real trial to success. It also starts with its open-file limit raised to the hard one.

``RETIA_FUZZ_EXAMPLES`` sets the examples per message type (default 150; the issue's bar is 10,000).
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retia import FunctionalEvaluator
from retia.client.backend import _model_recipe
from retia.keys import create_key_file, resolve_key
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
from retia.session import Session

from ..integration import fits
from ..sockets import stop
from .fuzzing import EXAMPLES, body, header, signed

pytestmark = pytest.mark.timeout(max(240, EXAMPLES * 2))

# everything a dispatcher may send an agent, and what it should not (SHUTDOWN is obeyed: not fuzzed)
KINDS = [k for k in MsgType if k is not MsgType.SHUTDOWN]
HEARTBEAT, LIVENESS = 0.2, 5


@dataclass
class FakeDispatcher:
    """Answers HELLO with WELCOME, acknowledges what the agent keeps, heartbeats; collects DONEs."""

    sock: zmq.Socket[bytes]
    session: Session
    agent: bytes = b""
    dones: dict[str, list[TrialState]] = field(default_factory=dict)
    hellos: int = 0
    _beat: float = 0.0

    def pump(self, seconds: float = 0.0) -> None:
        deadline = time.monotonic() + seconds
        while True:
            if self.sock.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                identity, *frames = self.sock.recv_multipart()
                self._answer(identity, self.session.parse(frames))
            now = time.monotonic()
            if self.agent and now - self._beat > HEARTBEAT:
                self.send(MsgType.HEARTBEAT)
                self._beat = now
            if now >= deadline and not self.sock.poll(0):
                return

    def send(self, kind: MsgType, body: object = None, **header: object) -> None:
        self.sock.send_multipart([self.agent, *self.session.frames(kind, body, **header)])  # type: ignore[arg-type]

    def _answer(self, identity: bytes, msg: Message) -> None:
        self.agent = identity
        if msg.type is MsgType.HELLO:
            self.hellos += 1
            self.send(MsgType.WELCOME, Welcome(HEARTBEAT, LIVENESS, "fake"))
        elif msg.type is MsgType.DONES:
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
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
        sock.bind("tcp://127.0.0.1:*")
        address = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        command = [sys.executable, "-m", "retia.worker", "--connect", address, "--key-file", str(key_file)]
        command += ["--home", str(home / "worker"), "--name", "fuzzed-agent", "--heartbeat", str(HEARTBEAT)]
        command += ["--liveness", str(LIVENESS), "--preload", "retia.worker.runner,retia.serializer"]
        with (home / "worker.log").open("wb") as log:
            agent = subprocess.Popen(command, stderr=log, preexec_fn=_lowered_soft_limit)
        fake = FakeDispatcher(sock, Session(resolve_key(key_file=key_file), "fake"))
        try:
            deadline = time.monotonic() + 60
            while not fake.hellos:
                assert agent.poll() is None and time.monotonic() < deadline, (home / "worker.log").read_text()
                fake.pump(0.2)
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

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        head = data.draw(header(kind, "fake"), label="header")
        payload = data.draw(body(kind), label="payload")
        dispatcher.sock.send_multipart([dispatcher.agent, *signed(dispatcher.session, head, payload)])
        dispatcher.pump()

    fuzz()
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
