"""A refusal reaches the user: a refused submission or blob fails its trial at once, with the reason,
and a SUBMIT the dispatcher would drop for its size is refused at the call (issue 16, point 9)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from retia import FunctionalEvaluator
from retia.blobs import Blob, make_blob
from retia.client.backend import Backend, connect
from retia.credentials import Role, issue
from retia.errors import AuthenticationError, PayloadTooLarge, RetiaError, SubmissionRefusedError
from retia.protocol import (
    Ack,
    AckBatch,
    FileChunk,
    MsgType,
    TrialState,
    Welcome,
)
from retia.session import Session, peek_header, reset_frames

from ..clusters import fast_cluster
from ..integration import fits
from ..sockets import accept_session

pytestmark = pytest.mark.timeout(90)

KEY = b"refusal-test-key-0123456789abcdef"
CLIENT = issue(KEY, Role.CLIENT, "refusals")  # what `retia credential issue --role client` writes
NINE_MB = 9 * 1000 * 1000


@dataclass
class ScriptedDispatcher:
    """A real ROUTER socket that welcomes a client (with ``max_message_bytes``) and refuses every
    SUBMITS item with ``reason``: the client's side of a refusal, whatever the dispatcher's cause.
    It knows one credential's key, and one session at a time: what that session does not check (a
    HELLO again, say) is answered with a RESET, as the dispatcher does, and the next HELLO opens anew."""

    reason: str
    max_message_bytes: int = 8 << 20
    address: str = ""
    submits: list[str] = field(default_factory=list)  # trial ids it was sent, in order
    _stop: threading.Event = field(default_factory=threading.Event)
    _bound: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._bound.set()
        session: Session | None = None
        try:
            while not self._stop.is_set():
                if not sock.poll(50):
                    continue
                if session is None:  # something came: the welcome says the limit as it is now
                    welcome = Welcome(0.2, 5, "scripted", self.max_message_bytes)
                    try:
                        _identity, _hello, session = accept_session(
                            sock, CLIENT.key, welcome=welcome, timeout=1
                        )
                    except AuthenticationError:
                        pass  # no HELLO came
                    continue
                identity, *frames = sock.recv_multipart()
                try:
                    msg = session.parse(frames)
                except RetiaError:
                    session = None
                    sock.send_multipart([identity, *reset_frames(peek_header(frames).time)])
                    continue
                if msg.type is MsgType.HEARTBEAT:
                    sock.send_multipart([identity, *session.frames(MsgType.HEARTBEAT)])
                elif msg.type is MsgType.SUBMITS:
                    self.submits += [s.trial for s in msg.body.items]
                    acks = AckBatch([Ack(s.trial, 0, s.seq, False, self.reason) for s in msg.body.items])
                    sock.send_multipart([identity, *session.frames(MsgType.ACKS, acks)])
        finally:
            sock.close()

    def stop(self) -> None:
        self._stop.set()


@pytest.fixture
def scripted() -> Iterator[ScriptedDispatcher]:
    server = ScriptedDispatcher("trial id already used by client someone-else")
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    assert server._bound.wait(10)
    yield server
    server.stop()
    thread.join(10)


def test_a_refused_submission_fails_its_trial_with_the_dispatchers_reason(
    scripted: ScriptedDispatcher,
) -> None:
    with connect(scripted.address, credential=CLIENT, heartbeat_interval=0.2) as backend:
        heard: list[TrialState] = []
        backend.add_listener(lambda trial, event: heard.append(event.state.state) if event.state else None)
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), trial_id="taken")
        with pytest.raises(SubmissionRefusedError, match="already used by client someone-else") as info:
            trial.result(timeout=10)  # before: logged only, and the trial waited QUEUED forever
        assert info.value.reason == "trial id already used by client someone-else"
        assert info.value.trial_id == "taken"
        assert trial.state is TrialState.FAILED and trial.done()
        assert heard == [TrialState.FAILED]  # listeners (an Experiment) hear it like any failure
        again = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), trial_id="taken")
        # a refused id may be sent again: a new trial (its state is not checked here: the scripted
        # dispatcher may refuse it again before this line runs)
        assert again is not trial and backend.trials["taken"] is again
        with pytest.raises(SubmissionRefusedError):
            again.result(timeout=10)
        assert scripted.submits == ["taken", "taken"]


def test_the_size_limit_is_the_one_the_dispatcher_announces(scripted: ScriptedDispatcher) -> None:
    scripted.max_message_bytes = 64 << 10
    with connect(scripted.address, credential=CLIENT, heartbeat_interval=0.2) as backend:
        with pytest.raises(PayloadTooLarge, match="over the dispatcher's 0.1 MiB message limit"):
            backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.uses, thing="x" * 100_000))
        assert backend.trials == {} and scripted.submits == []


@pytest.fixture
def offline() -> Iterator[Backend]:
    """A backend whose dispatcher never answers: the size check must not need one."""
    client = Backend("tcp://127.0.0.1:9", KEY)
    yield client
    client.close()


@pytest.mark.parametrize("payload", ["x" * NINE_MB, ["y" * 1000] * 9000, {"k": "z" * NINE_MB}])
def test_an_argument_over_the_message_limit_is_refused_at_the_call(offline: Backend, payload: object) -> None:
    evaluator = FunctionalEvaluator(fits.uses, thing=payload)
    with pytest.raises(PayloadTooLarge, match=r"evaluator\.thing takes 8\.\d MiB inline") as info:
        offline.submit(fits.DigitsMLP, evaluator, name="big")  # before: accepted, then QUEUED forever
    text = str(info.value)
    assert "(big)" in text and "retia.trace" in text and "numpy array" in text
    assert info.value.path == "evaluator.thing" and info.value.size > 8 << 20
    with pytest.raises(PayloadTooLarge):
        offline.submit_many([fits.DigitsMLP] * 3, evaluator)
    assert offline.trials == {}  # nothing was queued, no blob sent


def test_a_large_array_travels_as_a_blob_and_runs(tmp_path: Path) -> None:
    data = np.arange(NINE_MB // 8, dtype=np.float64)  # 9 MB: over the limit inline, fine as a blob
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.tensor_stats, data=data))
        assert trial.result(timeout=60) == float(data[-1000:].sum())


def test_a_refused_blob_fails_the_trials_needing_it_and_is_uploaded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.arange(100_000, dtype=np.float64)  # 800 kB: a blob
    blob = make_blob(data)
    assert blob is not None
    evaluator = FunctionalEvaluator(fits.tensor_stats, data=data)
    with fast_cluster(workers=1, home=tmp_path / "c") as backend:
        # bytes that do not match the digest (an array changed while it was sent, a bad copy): the
        # dispatcher refuses the last chunk, and the trial that names the blob cannot run. The bad
        # upload is the submission's own, sent with it (one sent before it could be refused, and
        # the blob uploaded again, before the submission even started)
        garbage = FileChunk(blob.digest, 0, b"\0" * blob.size, True)
        upload = backend._upload

        def corrupted(sent: Blob) -> list[tuple[MsgType, Any, str]]:
            monkeypatch.setattr(backend, "_upload", upload)  # once
            backend._uploaded.add(sent.digest)
            return [(MsgType.BLOB_PUT, garbage, sent.digest)]

        monkeypatch.setattr(backend, "_upload", corrupted)
        doomed = backend.submit(fits.DigitsMLP, evaluator)
        with pytest.raises(SubmissionRefusedError, match="did not match its digest") as info:
            doomed.result(timeout=30)  # before: a worker tried, then BlobUnavailableError (or a wait)
        assert f"blob {blob.digest[:12]}" in str(info.value)
        assert doomed.state is TrialState.FAILED
        again = backend.submit(fits.DigitsMLP, evaluator)  # before: never uploaded again
        assert again.result(timeout=60) == float(data[-1000:].sum())
        assert doomed.state is TrialState.FAILED  # the dispatcher's later word on it does not revive it


def test_a_trial_id_another_client_uses_is_refused_and_the_first_runs_on(tmp_path: Path) -> None:
    """Issue 16, point 10: before, B's SUBMIT was acknowledged, every event went to A, and B's trial
    waited QUEUED forever."""
    with fast_cluster(1, home=tmp_path / "c", client_id="client-a") as a:
        with connect(a.address, credential=a.credential, client_id="client-b") as b:
            first = a.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), trial_id="shared")
            assert first.result(timeout=60) == 3.0
            second = b.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), trial_id="shared")
            with pytest.raises(SubmissionRefusedError, match="taken by another client"):
                second.result(timeout=30)
            again = a.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), trial_id="shared")
            assert again.result(timeout=10) == 3.0  # its own id: idempotent, not run again
