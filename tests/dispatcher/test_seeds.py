"""Every trial has a seed (issue 21): journaled with it, sent in each of its RUNs, the same on a retry;
a trial of a journal written before seeds existed runs under the one it would have had then."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from retia.dispatcher.config import DispatcherConfig
from retia.dispatcher.journal import SCHEMA_VERSION, Journal, TrialRecord
from retia.protocol import Hello, MsgType, Role, Run, Submit, SubmitBatch, TrialState
from retia.seeding import SEED_MAX, trial_seed

from ..sockets import dealer
from .fakes import hello, join, receive, serving, worker_socket

pytestmark = pytest.mark.timeout(60)

# The journal's schema 3, as retia wrote it before credentials (0c2243f~1:dispatcher/journal.py)
_SCHEMA_3 = """
CREATE TABLE trials (
    id TEXT PRIMARY KEY, client TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL, max_retries INTEGER NOT NULL, timeout REAL, arch TEXT,
    worker TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', failure BLOB,
    cancel_requested INTEGER NOT NULL DEFAULT 0, queue_seq INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, blobs TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE payloads (id TEXT PRIMARY KEY, evaluator BLOB NOT NULL, model BLOB NOT NULL);
CREATE TABLE reports (
    trial TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL, final INTEGER NOT NULL,
    value BLOB NOT NULL, time REAL NOT NULL, client TEXT NOT NULL, event INTEGER NOT NULL,
    PRIMARY KEY (trial, attempt, seq)
);
CREATE INDEX reports_by_client ON reports (client, event);
CREATE TABLE states (
    client TEXT NOT NULL, seq INTEGER NOT NULL, trial TEXT NOT NULL, attempt INTEGER NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (client, seq)
);
"""
# schema 4 added these (main~1:dispatcher/journal.py, the last before seeds)
_SCHEMA_4 = (
    _SCHEMA_3
    + """
CREATE TABLE checkpoints (
    trial TEXT PRIMARY KEY, attempt INTEGER NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE owners (peer TEXT PRIMARY KEY, credential TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE revoked (
    name TEXT PRIMARY KEY, before INTEGER NOT NULL, at REAL NOT NULL, serial INTEGER NOT NULL
);
"""
)
# schema 5 added the seed and pack columns (b6abcae:dispatcher/journal.py, the last before gpus)
_SCHEMA_5 = _SCHEMA_4.replace(
    "blobs TEXT NOT NULL DEFAULT '[]'",
    "blobs TEXT NOT NULL DEFAULT '[]', seed INTEGER, "
    "pack INTEGER NOT NULL DEFAULT 1, pack_key TEXT NOT NULL DEFAULT ''",
)
_SCHEMAS = {3: _SCHEMA_3, 4: _SCHEMA_4, 5: _SCHEMA_5}


def _old_journal(path: Path, version: int, trial: str) -> None:
    """A journal of schema ``version`` holding one QUEUED trial, as that schema's dispatcher left it."""
    with sqlite3.connect(path) as db:
        db.executescript(_SCHEMAS[version])
        db.execute(
            "INSERT INTO trials (id, client, name, state, attempt, max_retries, timeout, arch, worker, "
            "reason, failure, cancel_requested, queue_seq, created, updated, blobs) VALUES "
            "(?, 'c1', 'old', 'QUEUED', 0, 2, NULL, 'null', '', '', NULL, 0, 1, 1.0, 1.0, '[]')",
            (trial,),
        )
        db.execute("INSERT INTO payloads VALUES (?, ?, ?)", (trial, b"evaluator", b"model"))
        db.execute(f"PRAGMA user_version={version}")
    db.close()


def _config(home: Path, journal: Path | str = ":memory:") -> DispatcherConfig:
    return DispatcherConfig(
        bind="tcp://127.0.0.1:*", home=home, journal=Path(journal), heartbeat_interval=0.2, liveness=5
    )


@pytest.mark.parametrize("version", [3, 4, 5])
def test_an_older_journal_is_upgraded_in_place_and_its_trial_runs_under_its_derived_seed(
    tmp_path: Path, version: int
) -> None:
    path = tmp_path / "journal.sqlite"
    _old_journal(path, version, "old-trial")
    journal = Journal(path)
    [rec] = journal.trials()
    assert (rec.id, rec.state, rec.seed) == ("old-trial", TrialState.QUEUED, trial_seed("old-trial"))
    assert (rec.pack, rec.gpus) == (1, None)  # it runs alone, on any worker
    assert journal.payload("old-trial") == (b"evaluator", b"model")
    journal.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 6
    db.close()
    with serving(_config(tmp_path, path)) as dispatcher, worker_socket(dispatcher.address) as worker:
        session = hello(worker)
        run = receive(worker, session, MsgType.RUNS)
        assert isinstance(run, Run) and run.trial == "old-trial"
        assert run.seed == trial_seed("old-trial") and run.gpus is None


def test_a_journal_keeps_a_trials_seed(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    for trial, seed in (("zero", 0), ("top", SEED_MAX), ("given", 11)):
        assert journal.add_trial(
            TrialRecord(trial, "c", "", TrialState.QUEUED, 0, 2, None, None, seed), b"e", b"m"
        )
    journal.close()
    reopened = Journal(path)
    assert {rec.id: rec.seed for rec in reopened.trials()} == {"zero": 0, "top": SEED_MAX, "given": 11}
    reopened.close()


def test_each_attempt_runs_under_the_trials_seed_given_or_derived(tmp_path: Path) -> None:
    """A SUBMIT without a seed gets trial_seed of its id, one with a seed keeps it; the attempt
    that replaces one lost with its worker runs under the same seed."""
    with (
        serving(_config(tmp_path)) as dispatcher,
        worker_socket(dispatcher.address) as first,
        dealer(dispatcher.address) as client,
    ):
        me = join(client, Hello(Role.CLIENT, "c1"))
        session = hello(first, "w1", prefetch=1)
        submits = [Submit("derived", 1, b"e", b"m"), Submit("given", 2, b"e", b"m", seed=12345)]
        client.send_multipart(me.frames(MsgType.SUBMITS, SubmitBatch(submits)))
        runs = [receive(first, session, MsgType.RUNS) for _ in range(2)]
        assert [(r.trial, r.attempt, r.seed) for r in runs] == [
            ("derived", 1, trial_seed("derived")),
            ("given", 1, 12345),
        ]
        first.send_multipart(session.frames(MsgType.BYE))  # the worker is lost: both run elsewhere
        with worker_socket(dispatcher.address) as second:
            session = hello(second, "w2", prefetch=1)
            again = {r.trial: r for r in (receive(second, session, MsgType.RUNS) for _ in range(2))}
            assert {trial: run.seed for trial, run in again.items()} == {
                "derived": trial_seed("derived"),
                "given": 12345,
            }
            assert again["derived"].attempt == 2  # a retry, not the lost attempt again
