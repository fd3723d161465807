"""An item the dispatcher fails to handle is refused with the reason, and the dispatcher serves on."""

from __future__ import annotations

import time

import pytest
import zmq

from retia import FunctionalEvaluator
from retia.client.backend import connect
from retia.dispatcher.service import Dispatcher
from retia.errors import TrialFailedError
from retia.protocol import (
    Ack,
    Done,
    DoneBatch,
    Hello,
    InlineFile,
    MsgType,
    Report,
    Role,
    Run,
    Submit,
    SubmitBatch,
    TrialState,
    pack_metric,
)

from ..integration import fits
from .fakes import KEY, hello, join, receive

pytestmark = pytest.mark.timeout(60)


def test_a_done_whose_files_cannot_be_written_is_refused_and_the_next_trial_runs(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker)
    with connect(dispatcher.address, key=KEY) as client:
        broken, fine = (client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(2))
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == broken.id
        # a regular file where the client's artefact directory must go: writing the trial's files fails
        client_dir = dispatcher.artifacts.root / client.client_id
        client_dir.parent.mkdir(parents=True, exist_ok=True)
        client_dir.write_text("in the way")
        final = Report(broken.id, 1, 1, True, pack_metric(1.0))
        done = Done(
            broken.id, 1, 2, TrialState.SUCCEEDED, reports=[final], files=[InlineFile("out.txt", b"x")]
        )
        worker.send_multipart(session.frames(MsgType.DONES, DoneBatch([done])))
        refusals: list[Ack] = []
        runs: list[Run] = []
        deadline = time.monotonic() + 10
        while not (refusals and runs) and time.monotonic() < deadline:  # RUNS go out before ACKS
            if worker.poll(200):
                msg = session.parse(worker.recv_multipart())
                if msg.type is MsgType.ACKS:
                    refusals += [a for a in msg.body.items if a.trial == broken.id]
                elif msg.type is MsgType.RUNS:
                    runs += msg.body.items
        [refusal] = refusals
        assert not refusal.ok and "NotADirectoryError" in refusal.reason
        assert [r.trial for r in runs] == [fine.id]  # the dispatcher still serves: the next trial came
        client_dir.unlink()
        good = Done(
            fine.id, 1, 2, TrialState.SUCCEEDED, reports=[Report(fine.id, 1, 1, True, pack_metric(2.0))]
        )
        worker.send_multipart(session.frames(MsgType.DONES, DoneBatch([good])))
        assert fine.result(timeout=10) == 2.0
        deadline = time.monotonic() + 5
        while broken.final is None and time.monotonic() < deadline:  # its report was stored first
            time.sleep(0.02)
        assert broken.final == 1.0


def test_a_signed_submission_over_the_size_limit_is_refused_by_name(dispatcher: Dispatcher) -> None:
    """A client that ignores the limit in the WELCOME (another version, another tool) is answered:
    before, the message was dropped unanswered and its trial waited forever."""
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as sock:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(dispatcher.address)
        me = join(sock, Hello(Role.CLIENT, "big-client"))
        big = Submit("big-trial", 1, b"e" * (9 << 20), b"m")
        sock.send_multipart(me.frames(MsgType.SUBMITS, SubmitBatch([big])))
        acks = receive(sock, me, MsgType.ACKS)
        assert acks is not None
        (ack,) = acks.body.items
        assert (ack.trial, ack.seq, ack.ok) == ("big-trial", 1, False)
        assert "exceeds the 8388608-byte limit" in ack.reason and "blobs" in ack.reason


def test_a_done_over_the_size_limit_fails_its_trial_saying_why(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker)
    with connect(dispatcher.address, key=KEY) as client:
        trial = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == trial.id
        done = Done(trial.id, 1, 1, TrialState.SUCCEEDED, files=[InlineFile("big.bin", b"x" * (9 << 20))])
        worker.send_multipart(session.frames(MsgType.DONES, DoneBatch([done])))
        acks = receive(worker, session, MsgType.ACKS)
        assert acks is not None and [(a.trial, a.seq, a.ok) for a in acks.body.items] == [(trial.id, 1, True)]
        with pytest.raises(TrialFailedError, match="its DONE was too large"):
            trial.result(timeout=10)
