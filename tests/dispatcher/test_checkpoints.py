"""A trial's checkpoint: kept only whole and true to its digest, and given to the next attempt."""

from __future__ import annotations

import zmq

from retia import FunctionalEvaluator
from retia.blobs import bytes_blob
from retia.client.backend import connect
from retia.dispatcher.service import Dispatcher
from retia.protocol import CHECKPOINT_SEQ, BlobRef, FileChunk, MsgType, Ready
from retia.session import Session

from ..integration import fits
from .fakes import KEY, hello, receive
from .test_refusals import _acks


def _send(
    worker: zmq.Socket[bytes], session: Session, trial: str, attempt: int, seq: int, chunk: FileChunk
) -> None:
    frames = session.frames(MsgType.CHECKPOINT, chunk, trial=trial, attempt=attempt, seq=CHECKPOINT_SEQ + seq)
    worker.send_multipart(frames)


def test_only_a_whole_true_checkpoint_is_kept_and_the_next_attempt_resumes_from_it(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker)
    good, torn, forged = (bytes_blob(bytes([n]) * 3000) for n in (1, 2, 3))
    with connect(dispatcher.address, key=KEY) as client:
        trial = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == trial.id and run.resume is None
        _send(worker, session, trial.id, 1, 1, FileChunk(good.digest, 0, b"\x01" * 3000, True))
        [ack] = _acks(worker, session, trial.id)
        assert ack.ok, ack.reason
        # the next one torn (its worker died after its first chunk), one that is not what its name says
        _send(worker, session, trial.id, 1, 2, FileChunk(torn.digest, 0, b"\x02" * 1000, False))
        [ack] = _acks(worker, session, trial.id)
        _send(worker, session, trial.id, 1, 3, FileChunk(forged.digest, 0, b"\x04" * 3000, True))
        [ack] = _acks(worker, session, trial.id)
        assert not ack.ok and "did not match its digest" in ack.reason
        # not the live attempt: refused
        _send(worker, session, trial.id, 7, 4, FileChunk(forged.digest, 0, b"\x03" * 3000, True))
        [ack] = _acks(worker, session, trial.id)
        assert not ack.ok and "is not running on this worker" in ack.reason
        # the worker comes back ready without finishing it: the attempt is lost, the next one runs
        worker.send_multipart(session.frames(MsgType.READY, Ready(trial.id)))
        again = receive(worker, session, MsgType.RUNS)
        assert again is not None and again.attempt == 2
        assert again.resume == BlobRef(good.digest, 3000) and again.resume in again.blobs
        assert dispatcher.blobs.read(good.digest, 0, 4000) == b"\x01" * 3000
