"""The dispatcher's scheduling rules, driven by a hand-written worker speaking the real protocol."""

from __future__ import annotations

import time

import pytest
import zmq

from retia import FunctionalEvaluator
from retia.client.backend import connect
from retia.dispatcher.service import Dispatcher
from retia.errors import WorkerLostError
from retia.protocol import (
    Done,
    DoneBatch,
    Hello,
    MsgType,
    Ready,
    Report,
    ReportBatch,
    Role,
    Submit,
    SubmitBatch,
    TrialState,
    pack_metric,
)

from ..integration import fits
from .fakes import KEY, done_frames, hello, join, receive

pytestmark = pytest.mark.timeout(60)


def test_a_stale_ready_does_not_take_a_running_trial_away(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker)
    with connect(dispatcher.address, key=KEY) as client:
        first = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        second = client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting))
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == first.id
        worker.send_multipart(session.frames(MsgType.READY, Ready("")))  # sent before the RUN arrived
        assert receive(worker, session, MsgType.RUNS, timeout_ms=1000) is None  # no second RUN while busy
        assert second.state is TrialState.QUEUED and first.attempt == 1
        worker.send_multipart(
            done_frames(session, first.id, (1, False, 0.25), (2, True, 0.5))
        )  # no READY after it
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == second.id  # DONE alone made the worker free
        assert first.result(timeout=10) == 0.5 and first.intermediates == [0.25] and first.attempt == 1


def test_a_repeated_done_is_stored_once_and_frees_nothing(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker)
    finals: list[str] = []
    with connect(dispatcher.address, key=KEY) as client:
        client.add_listener(
            lambda trial, event: finals.append(trial.id) if event.report is not None else None
        )
        trials = [client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(3)]
        assert receive(worker, session, MsgType.RUNS) is not None
        done = done_frames(session, trials[0].id, (1, True, 1.0))
        worker.send_multipart(done)
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == trials[1].id
        worker.send_multipart(done_frames(session, trials[0].id, (1, True, 2.0)))  # re-sent after a lost ACK
        assert receive(worker, session, MsgType.RUNS, timeout_ms=1000) is None  # still busy with the second
        assert trials[0].result(timeout=10) == 1.0 and trials[2].state is TrialState.QUEUED
        assert finals == [trials[0].id]


def test_a_prefetching_worker_holds_exactly_one_more_trial(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker, prefetch=1)  # (the trials it is given at once come in one RUNS message)
    with connect(dispatcher.address, key=KEY) as client:
        a, b, c = (client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(3))
        runs = [receive(worker, session, MsgType.RUNS) for _ in range(2)]
        assert [r.trial for r in runs if r is not None] == [a.id, b.id]  # the second one before a ends
        assert receive(worker, session, MsgType.RUNS, timeout_ms=1000) is None  # never a third
        worker.send_multipart(done_frames(session, a.id, (1, True, 1.0)))
        run = receive(worker, session, MsgType.RUNS)
        assert run is not None and run.trial == c.id  # the freed slot takes the next one
        worker.send_multipart(done_frames(session, b.id, (1, True, 2.0)))
        worker.send_multipart(done_frames(session, c.id, (1, True, 3.0)))
        assert [t.result(timeout=10) for t in (a, b, c)] == [1.0, 2.0, 3.0]
        assert [t.attempt for t in (a, b, c)] == [1, 1, 1]


def test_a_prefetching_worker_that_leaves_gives_back_both_trials(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker, prefetch=1)
    with connect(dispatcher.address, key=KEY) as client:
        a, b = (client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(2))
        assert all(receive(worker, session, MsgType.RUNS) is not None for _ in range(2))
        worker.send_multipart(session.frames(MsgType.BYE))
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as other:
            other.setsockopt(zmq.LINGER, 0)
            other.connect(dispatcher.address)
            second = hello(other, "w2")
            for expected, value in ((a, 1.0), (b, 2.0)):
                run = receive(other, second, MsgType.RUNS)
                assert run is not None and (run.trial, run.attempt) == (expected.id, 2)
                other.send_multipart(done_frames(second, expected.id, (1, True, value), attempt=2))
            assert [a.result(timeout=10), b.result(timeout=10)] == [1.0, 2.0]


def test_an_idle_worker_gets_back_a_trial_another_holds_unstarted(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker, prefetch=2)
    with connect(dispatcher.address, key=KEY) as client:
        a, b, c = (client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting)) for _ in range(3))
        runs = [receive(worker, session, MsgType.RUNS) for _ in range(3)]
        assert [r.trial for r in runs if r is not None] == [
            a.id,
            b.id,
            c.id,
        ]  # one runs, two wait there
        with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as other:
            other.setsockopt(zmq.LINGER, 0)
            other.connect(dispatcher.address)
            second = hello(other, "w2")
            cancel = receive(worker, session, MsgType.CANCEL)
            assert (
                cancel is not None and cancel.header.trial == c.id and cancel.body.give_back
            )  # the last one
            assert (
                receive(worker, session, MsgType.CANCEL, timeout_ms=500) is None
            )  # one idle worker, one trial
            given_back = Done(c.id, 1, 1, TrialState.QUEUED, cancel.body.reason)
            worker.send_multipart(session.frames(MsgType.DONES, DoneBatch([given_back])))
            run = receive(other, second, MsgType.RUNS)
            assert run is not None and (run.trial, run.attempt) == (c.id, 1)  # no attempt spent
            other.send_multipart(done_frames(second, c.id, (1, True, 3.0)))
            assert c.result(timeout=10) == 3.0 and c.attempt == 1


def test_submit_many_travels_as_one_message_and_each_trial_runs_once(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker, prefetch=4)
    with connect(dispatcher.address, key=KEY) as client:
        evaluator = FunctionalEvaluator(fits.counting)
        with pytest.raises(ValueError, match="one entry per model"):
            client.submit_many([fits.DigitsMLP] * 2, evaluator, names=["only one"])
        before = dispatcher.messages_handled
        ids = [f"batch-{i}" for i in range(5)]
        trials = client.submit_many([fits.DigitsMLP] * 5, evaluator, names=ids, trial_ids=ids)
        runs = [receive(worker, session, MsgType.RUNS) for _ in range(5)]
        assert [r.trial for r in runs if r is not None] == ids  # in order, to the one worker
        assert (
            dispatcher.messages_handled - before < 5
        )  # one SUBMITS (and a heartbeat or two), not five SUBMITs
        assert [t.name for t in trials] == ids
        again = client.submit_many([fits.DigitsMLP] * 5, evaluator, trial_ids=ids)  # idempotent, as submit is
        assert [t.id for t in again] == ids and receive(worker, session, MsgType.RUNS, timeout_ms=500) is None
        for i, trial in enumerate(trials):
            worker.send_multipart(done_frames(session, trial.id, (1, True, float(i))))
        assert [t.result(timeout=10) for t in trials] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_a_lost_workers_held_trials_do_not_spend_their_retries(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker, prefetch=1)
    with connect(dispatcher.address, key=KEY) as client:
        running, held = (
            client.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting), max_retries=0) for _ in range(2)
        )
        assert all(receive(worker, session, MsgType.RUNS) is not None for _ in range(2))
        worker.send_multipart(session.frames(MsgType.BYE))
        with pytest.raises(WorkerLostError):  # it ran there, and it may not run again
            running.result(timeout=10)
        deadline = time.monotonic() + 10
        while held.state is not TrialState.QUEUED:  # it only waited there: queued again
            assert time.monotonic() < deadline, held
            time.sleep(0.02)
        assert held.attempt == 1 and not held.done()


def test_a_burst_of_events_reaches_a_client_in_bounded_batches_in_order(
    dispatcher: Dispatcher, worker: zmq.Socket[bytes]
) -> None:
    session = hello(worker)
    with zmq.Context() as ctx, ctx.socket(zmq.DEALER) as client:
        client.setsockopt(zmq.LINGER, 0)
        client.connect(dispatcher.address)
        me = join(client, Hello(Role.CLIENT, "c1"))
        submit = Submit("t1", 1, b"evaluator", b"model")
        client.send_multipart(me.frames(MsgType.SUBMITS, SubmitBatch([submit])))
        assert receive(worker, session, MsgType.RUNS) is not None
        n = 3000
        items = [Report("t1", 1, i + 1, False, pack_metric(float(i))) for i in range(n)]
        worker.send_multipart(session.frames(MsgType.REPORTS, ReportBatch(items)))
        worker.send_multipart(done_frames(session, "t1", (n + 1, True, -1.0)))
        values: list[float] = []
        sizes: list[int] = []
        seqs: list[int] = []
        deadline = time.monotonic() + 30
        while len(values) < n + 1:
            assert time.monotonic() < deadline, f"{len(values)} of {n + 1} reports arrived"
            if not client.poll(1000):
                continue
            msg = me.parse(client.recv_multipart())
            events = msg.body.items if msg.type is MsgType.EVENTS else []
            if msg.type is MsgType.EVENTS:
                sizes.append(len(events))
            for event in events:
                if event.report is not None:
                    values.append(event.report.metric)
                seqs.append(event.seq)
        assert values == [float(i) for i in range(n)] + [-1.0]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        assert max(sizes) == 1024  # 3,000 events of one batch: split in messages of at most 1,024
