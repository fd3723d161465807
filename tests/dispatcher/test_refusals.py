"""An item the dispatcher fails to handle is refused with the reason, and the dispatcher serves on."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import zmq

from retia import FunctionalEvaluator
from retia.blobs import bytes_blob
from retia.client.backend import connect
from retia.dispatcher.config import DispatcherConfig
from retia.dispatcher.service import Dispatcher
from retia.errors import TrialFailedError
from retia.protocol import (
    Ack,
    Done,
    DoneBatch,
    FileChunk,
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
from retia.session import Session

from ..integration import fits
from ..sockets import dealer
from .fakes import KEY, hello, join, receive, serving

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


def _acks(sock: zmq.Socket[bytes], session: Session, trial: str) -> list[Ack]:
    """The acknowledgements of ``trial``'s messages that come within five seconds."""
    acks: list[Ack] = []
    deadline = time.monotonic() + 5
    while not acks and (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000)):
        msg = session.parse(sock.recv_multipart())
        if msg.type is MsgType.ACKS:
            acks += [a for a in msg.body.items if a.trial == trial]
    return acks


def test_a_blob_chunk_past_the_blobs_end_is_refused_not_written_as_a_hole(dispatcher: Dispatcher) -> None:
    """A client's BLOB_PUT at offset 2**40, marked last: before, the dispatcher wrote a 1 TiB sparse
    file and hashed all of it to verify the digest, answering nobody meanwhile (a fuzzed message did
    this in CI). A chunk goes where the blob's bytes end (or before: one sent again)."""
    digest = bytes_blob(b"x").digest
    with dealer(dispatcher.address) as sock:
        session = join(sock, Hello(Role.CLIENT, "c1"))
        for offset, last in ((1 << 40, True), (1 << 20, False)):
            chunk = FileChunk(digest, offset, b"x", last)
            sock.send_multipart(session.frames(MsgType.BLOB_PUT, chunk, trial=digest))
            [ack] = _acks(sock, session, digest)
            assert (
                not ack.ok and f"a chunk at offset {offset} of blob {digest[:12]}, which has 0" in ack.reason
            )
        assert not dispatcher.blobs.path(digest).with_suffix(".partial").exists()
        for offset, data, last in ((0, b"", False), (0, b"x", True)):  # in order: stored
            chunk = FileChunk(digest, offset, data, last)
            sock.send_multipart(session.frames(MsgType.BLOB_PUT, chunk, trial=digest))
            [ack] = _acks(sock, session, digest)
            assert ack.ok, ack.reason
        assert dispatcher.blobs.path(digest).read_bytes() == b"x"


def test_a_blob_larger_than_the_store_is_refused(tmp_path: Path) -> None:
    config = DispatcherConfig(
        bind="tcp://127.0.0.1:*", home=tmp_path, journal=Path(":memory:"), blob_budget_bytes=1000
    )
    digest = bytes_blob(b"\0" * 1001).digest
    with serving(config) as dispatcher, dealer(dispatcher.address) as sock:
        session = join(sock, Hello(Role.CLIENT, "c1"))
        for offset, data in ((0, b"\0" * 1000), (1000, b"\0")):
            sock.send_multipart(
                session.frames(MsgType.BLOB_PUT, FileChunk(digest, offset, data, offset > 0), trial=digest)
            )
            [ack] = _acks(sock, session, digest)
            assert ack.ok is (offset == 0), ack.reason
        assert "more than the dispatcher's blob store holds (1000)" in ack.reason


def test_an_artefact_chunk_past_the_files_end_is_refused(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    """A worker's FILE at offset 2**40: before, a 1 TiB sparse artefact for whoever reads it."""
    session = hello(worker)
    with connect(dispatcher.address, key=KEY) as client:
        trial = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == trial.id
        for seq, (offset, data) in enumerate(((0, b"head"), (1 << 40, b"x"), (4, b"tail")), start=1):
            chunk = FileChunk("out.bin", offset, data, False)
            worker.send_multipart(session.frames(MsgType.FILE, chunk, trial=trial.id, attempt=1, seq=seq))
            [ack] = _acks(worker, session, trial.id)
            assert ack.ok is (offset < 1 << 40), ack.reason
            if not ack.ok:
                assert "a chunk at offset 1099511627776, past its 4 bytes" in ack.reason
        path = Path(dispatcher.artifacts.trial_path(client.client_id, trial.id)) / "out.bin"
        assert path.read_bytes() == b"headtail"
