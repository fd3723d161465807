"""Reports are stored exactly once and in order whatever the timing, and an attempt is finished only
when the dispatcher holds every report it sent (issue 16, points 13 and 15).

A hand-driven worker decides the order in which the dispatcher sees things: a DONE before the
reports it follows, reports after later ones, an attempt given up while its worker still runs it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from retia import FunctionalEvaluator
from retia.client.backend import Backend, Trial, connect
from retia.dispatcher.config import DispatcherConfig
from retia.dispatcher.service import Dispatcher
from retia.errors import ReportsLostError
from retia.protocol import (
    Ack,
    Done,
    DoneBatch,
    Hello,
    MsgType,
    Report,
    ReportBatch,
    Role,
    Run,
    TrialAttempt,
    TrialState,
    pack_metric,
)
from retia.session import Session

from ..integration import fits
from .fakes import KEY, hello, join, receive, serving, worker_socket

pytestmark = pytest.mark.timeout(60)
EXPIRY = 1.0  # heartbeat 0.2 s x liveness 5


def _config(home: Path, journal: str = ":memory:") -> DispatcherConfig:
    return DispatcherConfig(
        bind="tcp://127.0.0.1:*", home=home, journal=Path(journal), heartbeat_interval=0.2, liveness=5
    )


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Dispatcher]:
    with serving(_config(tmp_path)) as service:
        yield service


@pytest.fixture
def client(dispatcher: Dispatcher) -> Iterator[Backend]:
    with connect(dispatcher.address, key=KEY) as backend:
        yield backend


def _reports(session: Session, trial: str, *seqs: int, final: int = 0) -> list[bytes]:
    items = [Report(trial, 1, seq, seq == final, pack_metric(float(seq))) for seq in seqs]
    return session.frames(MsgType.REPORTS, ReportBatch(items))


def _done(session: Session, trial: str, seq: int, count: int, *inline: int) -> list[bytes]:
    reports = [Report(trial, 1, s, s == count, pack_metric(float(s))) for s in inline]
    done = Done(trial, 1, seq, TrialState.SUCCEEDED, reports=reports, report_count=count)
    return session.frames(MsgType.DONES, DoneBatch([done]))


def _acks(sock: zmq.Socket[bytes], session: Session, seconds: float) -> list[Ack]:
    """Every acknowledgement that comes within ``seconds`` (heartbeating meanwhile)."""
    acks: list[Ack] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        msg = receive(sock, session, MsgType.ACKS, timeout_ms=int(left * 1000))
        if msg is not None:
            acks += msg.body.items
    return acks


def _keys(acks: list[Ack]) -> set[tuple[int, bool]]:
    return {(ack.seq, ack.ok) for ack in acks}


def _started(client: Backend, sock: zmq.Socket[bytes]) -> tuple[Session, Trial, Run]:
    session = hello(sock)
    trial = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
    run = receive(sock, session, MsgType.RUNS)
    assert run is not None and run.trial == trial.id
    return session, trial, run


def test_a_done_before_its_reports_is_finished_once_they_are_stored(
    dispatcher: Dispatcher, client: Backend
) -> None:
    with worker_socket(dispatcher.address) as sock:
        session, trial, _run = _started(client, sock)
        sock.send_multipart(_done(session, trial.id, 4, 3, 3))  # reports 1 and 2 were lost on the way
        assert (4, True) not in _keys(_acks(sock, session, 0.5))  # not acknowledged: it is sent again
        assert trial.state is TrialState.RUNNING
        sock.send_multipart(_reports(session, trial.id, 1, 2))  # the re-send, in the worker's order
        sock.send_multipart(_done(session, trial.id, 4, 3, 3))
        assert {(2, True), (4, True)} <= _keys(_acks(sock, session, 0.5))
        assert trial.result(timeout=5) == 3.0
        assert trial.intermediates == [1.0, 2.0]


def test_reports_that_come_after_later_ones_are_stored_in_order(
    dispatcher: Dispatcher, client: Backend
) -> None:
    with worker_socket(dispatcher.address) as sock:
        session, trial, _run = _started(client, sock)
        sock.send_multipart(_reports(session, trial.id, 3, 4))  # 1 and 2 are late
        assert (4, True) not in _keys(_acks(sock, session, 0.3))
        sock.send_multipart(_reports(session, trial.id, 1, 2))
        sock.send_multipart(_reports(session, trial.id, 3, 4))  # sent again, as it was not acknowledged
        sock.send_multipart(_done(session, trial.id, 6, 5, 5))
        assert {(2, True), (4, True), (6, True)} <= _keys(_acks(sock, session, 0.5))
        assert trial.result(timeout=5) == 5.0
        assert trial.intermediates == [1.0, 2.0, 3.0, 4.0]


def test_a_done_whose_reports_never_come_fails_naming_them(dispatcher: Dispatcher, client: Backend) -> None:
    with worker_socket(dispatcher.address) as sock:
        session, trial, _run = _started(client, sock)
        sock.send_multipart(_reports(session, trial.id, 1))
        deadline = time.monotonic() + 10 * EXPIRY
        while not trial.done() and time.monotonic() < deadline:  # as the agent re-sends what is not acked
            sock.send_multipart(_done(session, trial.id, 5, 4, 4))
            _acks(sock, session, 0.5)
        with pytest.raises(ReportsLostError, match="reports 2-4 of attempt 1 never reached the dispatcher"):
            trial.result(timeout=1)
        assert trial.intermediates == [1.0]


def test_a_given_up_attempt_holds_its_worker_until_it_has_stopped(
    dispatcher: Dispatcher, client: Backend
) -> None:
    """The worker went silent (SIGSTOP, a network partition) and was declared lost; its trial is
    queued again. When it comes back still running the old attempt, it is told to stop it, and the
    trial's next attempt does not go there until it has (a RUN then would find it busy)."""
    with worker_socket(dispatcher.address) as sock:
        session, trial, _run = _started(client, sock)
        time.sleep(1.5 * EXPIRY)  # silent: declared lost, the trial queued again
        assert trial.state is TrialState.QUEUED
        back = Hello(Role.WORKER, "w1", running=[TrialAttempt(trial.id, 1)])
        session = join(sock, back)
        cancel = receive(sock, session, MsgType.CANCEL)
        assert cancel is not None and (cancel.header.trial, cancel.header.attempt) == (trial.id, 1)
        assert receive(sock, session, MsgType.RUNS, timeout_ms=700) is None  # busy stopping it
        stopped = Done(trial.id, 1, 1, TrialState.CANCELLED, "this attempt was given up")
        sock.send_multipart(session.frames(MsgType.DONES, DoneBatch([stopped])))
        run = receive(sock, session, MsgType.RUNS)
        assert run is not None and (run.trial, run.attempt) == (trial.id, 2)


def test_the_adoption_window_after_a_restart_counts_from_when_it_serves(tmp_path: Path) -> None:
    """A restarted dispatcher waits for the workers of its RUNNING trials from when they can reach
    it, not from when it read its journal (a slow start must not give their trials up)."""
    journal = str(tmp_path / "journal.sqlite")
    with serving(_config(tmp_path, journal)) as first, worker_socket(first.address) as sock:
        with connect(first.address, key=KEY) as client:
            _session, trial, _run = _started(client, sock)
    restarted = Dispatcher(_config(tmp_path, journal), KEY)
    time.sleep(1.5 * EXPIRY)  # a slow start: longer than the window
    thread = threading.Thread(target=restarted.serve_forever, name="dispatcher")
    thread.start()
    try:
        with worker_socket(restarted.address) as sock:
            back = Hello(Role.WORKER, "w1", running=[TrialAttempt(trial.id, 1)])
            session = join(sock, back)
            assert receive(sock, session, MsgType.CANCEL, timeout_ms=500) is None  # adopted
            record = restarted.trials[trial.id]
            assert (record.state, record.attempt, record.worker) == (TrialState.RUNNING, 1, "w1")
    finally:
        restarted.stop()
        thread.join(timeout=10)
