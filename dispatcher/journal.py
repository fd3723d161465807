"""The dispatcher's store: trials, reports and client events in SQLite (WAL).

A client's events are its trials' reports (each stored once, numbered as an event) and their
state changes, in one sequence per client (1, 2, 3, ...: a gap is a lost event) that a
reconnecting client replays from where it stopped.

Every state change and report is written here before it is acknowledged, so a dispatcher
killed with SIGKILL and restarted on the same file loses nothing. ``":memory:"`` gives the
same store without durability. Writes are grouped: the loop calls :meth:`Journal.commit`
once per batch of messages, then sends the acknowledgements. A commit appends to the WAL
and fsyncs it (``synchronous=FULL``: what was acknowledged survives a power loss too, for about
0.3 ms a commit on an ordinary disk, ``benchmarks/journal_sync.py``); copying the WAL into the
database (a checkpoint) happens on a thread of its own.

A write or a commit that fails (a full or read-only disk) takes the whole transaction with it:
SQLite rolls it back, so :meth:`Journal.commit` then raises :class:`StorageFault` instead of
committing what is left (nothing), and the caller must not acknowledge anything of that turn.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retia import codec
from retia.errors import ConfigError, StorageFault
from retia.failure import Failure
from retia.filemodes import private_file
from retia.protocol import BlobRef, DeviceFacts, Event, Report, StateChange, TrialState
from retia.seeding import trial_seed

from .storage import journal_fault

_log = logging.getLogger(__name__)

__all__ = [
    "TrialRecord",
    "Journal",
    "SCHEMA_VERSION",
    "JOURNAL_SUFFIXES",
    "secure_journal_files",
    "record_revocation",
]

JOURNAL_SUFFIXES = ("", "-wal", "-shm")  # SQLite's files of one journal in WAL mode

# PRAGMA user_version; 0 (unset) was the first schema, before the retia/2 protocol; 2 numbered all
# clients' events in one sequence, 3 numbers each client's own (a client sees a gap as its own loss);
# 4 adds which credential owns each peer id, and revoked credentials; 5 each trial's seed and how
# it may pack (a 3 or a 4 is upgraded in place: its trials keep the seed they ran under, trial_seed
# of their id, and ran alone); 6 the GPUs each trial asks for (an older one's asked for none in
# particular)
SCHEMA_VERSION = 6
_UPGRADABLE = {3, 4, 5}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS trials (
    id TEXT PRIMARY KEY, client TEXT NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL, max_retries INTEGER NOT NULL, timeout REAL, arch TEXT,
    worker TEXT NOT NULL DEFAULT '', reason TEXT NOT NULL DEFAULT '', failure BLOB,
    cancel_requested INTEGER NOT NULL DEFAULT 0, queue_seq INTEGER NOT NULL,
    created REAL NOT NULL, updated REAL NOT NULL, blobs TEXT NOT NULL DEFAULT '[]', seed INTEGER,
    pack INTEGER NOT NULL DEFAULT 1, pack_key TEXT NOT NULL DEFAULT '', gpus INTEGER
);
CREATE TABLE IF NOT EXISTS payloads (id TEXT PRIMARY KEY, evaluator BLOB NOT NULL, model BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS reports (
    trial TEXT NOT NULL, attempt INTEGER NOT NULL, seq INTEGER NOT NULL, final INTEGER NOT NULL,
    value BLOB NOT NULL, time REAL NOT NULL, client TEXT NOT NULL, event INTEGER NOT NULL,
    PRIMARY KEY (trial, attempt, seq)
);
CREATE INDEX IF NOT EXISTS reports_by_client ON reports (client, event);
CREATE TABLE IF NOT EXISTS states (
    client TEXT NOT NULL, seq INTEGER NOT NULL, trial TEXT NOT NULL, attempt INTEGER NOT NULL,
    body BLOB NOT NULL, PRIMARY KEY (client, seq)
);
CREATE TABLE IF NOT EXISTS checkpoints (
    trial TEXT PRIMARY KEY, attempt INTEGER NOT NULL, digest TEXT NOT NULL, size INTEGER NOT NULL,
    time REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS owners (peer TEXT PRIMARY KEY, credential TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS revoked (
    name TEXT PRIMARY KEY, before INTEGER NOT NULL, at REAL NOT NULL, serial INTEGER NOT NULL
);
"""

_TRIAL_COLUMNS = (
    "id, client, name, state, attempt, max_retries, timeout, arch, worker, reason, failure, "
    "cancel_requested, queue_seq, created, updated, blobs, seed, pack, pack_key, gpus"
)

_LAST_EVENTS_SQL = """
SELECT client, MAX(last) FROM (
    SELECT client, MAX(event) AS last FROM reports GROUP BY client
    UNION ALL SELECT client, MAX(seq) FROM states GROUP BY client
) GROUP BY client
"""

_UPDATE_SQL = (  # what changes after a SUBMIT; the rest (arch, blobs, ...) is written once
    "UPDATE trials SET state = ?, attempt = ?, worker = ?, reason = ?, failure = ?, "
    "cancel_requested = ?, queue_seq = ?, updated = ? WHERE id = ?"
)

# A client's events in order: its reports (each stored once, in reports) and its state changes.
_EVENTS_AFTER_SQL = """
SELECT event, trial, attempt, seq, final, value FROM reports WHERE client = ? AND event > ?
UNION ALL
SELECT seq, trial, attempt, -1, 0, body FROM states WHERE client = ? AND seq > ?
ORDER BY 1
"""


@dataclass
class TrialRecord:
    """One trial as the dispatcher tracks it (payloads stay on disk until dispatched)."""

    id: str
    client: str
    name: str
    state: TrialState
    attempt: int
    max_retries: int
    timeout: float | None
    arch: Any
    seed: int  # every attempt runs under it (the client's, or trial_seed of the id)
    worker: str = ""
    reason: str = ""
    failure: Failure | None = None
    cancel_requested: bool = False
    queue_seq: int = 0
    created: float = 0.0
    updated: float = 0.0
    blobs: list[BlobRef] = field(default_factory=list)
    pack: int = 1  # the most trials it may train with in one process, itself included
    pack_key: str = ""  # what trials it packs with share: their client's and their evaluator's digest
    gpus: int | None = None  # it runs on a worker with at least this many GPUs and sees that many
    checkpoint: BlobRef | None = None  # the latest complete one an attempt sent (a blob): the next resumes
    reports: int = 0  # of the live attempt, stored: seqs 1..reports (in memory; recovered by count)
    devices: DeviceFacts | None = None  # what its last attempt's GPUs did (in memory; its event keeps it)


class _Checkpointer(threading.Thread):
    """Checkpoints the WAL every ``interval`` seconds from its own connection (SQLite allows it)."""

    def __init__(self, path: str, interval: float) -> None:
        super().__init__(name="journal-checkpoint", daemon=True)
        self.path, self.interval = path, interval
        self._stopped = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=1.0)
        try:
            while not self._stopped.wait(self.interval):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # busy or locked: the next turn tries again
                    _log.debug("journal checkpoint skipped: %s", exc)
        finally:
            db.close()

    def stop(self) -> None:
        self._stopped.set()
        self.join()


def secure_journal_files(path: str) -> None:
    """The journal holds every payload and result: its files are the owner's alone (0600).

    A missing journal is created 0600 here, before SQLite opens it (SQLite gives the -wal and
    -shm it creates the main file's mode); existing files group or others could read are
    fixed, with a warning."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for suffix in JOURNAL_SUFFIXES:
        private_file(Path(path + suffix), what="journal file")


class Journal:
    """The store; ``synchronous`` is SQLite's: FULL (each commit fsynced: a power loss loses nothing
    committed) or NORMAL (a process crash loses nothing, a power loss or OS crash may roll back the
    commits since the last checkpoint, acknowledged ones included)."""

    def __init__(
        self,
        path: str | Path = ":memory:",
        *,
        checkpoint_interval: float = 1.0,
        backstop_pages: int = 16384,
        synchronous: str = "FULL",
    ) -> None:
        if synchronous not in ("NORMAL", "FULL"):
            raise ConfigError(f"synchronous must be NORMAL or FULL (got {synchronous!r})")
        self.path = str(path)
        self._checkpointer: _Checkpointer | None = None
        self._broken: StorageFault | None = None  # a write of this transaction failed: it is lost
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            secure_journal_files(self.path)
        self._db = sqlite3.connect(self.path, isolation_level="DEFERRED", check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._check_version()
        self._upgrade()
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self._db.commit()
        self._queue_seq = 0
        self._event_seq: dict[str, int] = {}  # per client: the last event numbered
        self._read_counters()
        if self.path != ":memory:":
            # The thread checkpoints; the loop does it itself only when the thread falls behind a busy
            # writer (a checkpoint overtaken by new commits cannot restart the WAL): 64 MiB by default.
            self._db.execute(f"PRAGMA wal_autocheckpoint={int(backstop_pages)}")
            self._checkpointer = _Checkpointer(self.path, checkpoint_interval)
            self._checkpointer.start()

    def _check_version(self) -> None:
        """A journal written by another schema is refused, never half read."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        has_tables = self._db.execute("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        if has_tables and version != SCHEMA_VERSION and version not in _UPGRADABLE:
            self._db.close()
            written_by = f"schema {version}" if version else "retia 0.1 before the retia/2 protocol"
            raise ConfigError(
                f"the journal {self.path} was written by {written_by}; this dispatcher reads schema "
                f"{SCHEMA_VERSION}. Finish that cluster's trials with the retia that wrote it, or start "
                "this one on a new journal (--journal PATH, or move the old file away)"
            )

    def _upgrade(self) -> None:
        """A schema-3, 4 or 5 journal gets the seed column (NULL: a trial that ran as trial_seed of its
        id, what the dispatcher that wrote it would have run it under), the pack columns (its trials
        run alone) and the gpus column (NULL: any worker); the rest is CREATE IF NOT EXISTS."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(trials)")}
        if columns and "seed" not in columns:
            self._db.execute("ALTER TABLE trials ADD COLUMN seed INTEGER")
        if columns and "pack" not in columns:
            self._db.execute("ALTER TABLE trials ADD COLUMN pack INTEGER NOT NULL DEFAULT 1")
            self._db.execute("ALTER TABLE trials ADD COLUMN pack_key TEXT NOT NULL DEFAULT ''")
        if columns and "gpus" not in columns:
            self._db.execute("ALTER TABLE trials ADD COLUMN gpus INTEGER")

    def _read_counters(self) -> None:
        """The last queue position and each client's last event number the journal holds (at open,
        after a rollback)."""
        self._queue_seq = self._db.execute("SELECT COALESCE(MAX(queue_seq), 0) FROM trials").fetchone()[0]
        self._event_seq = dict(self._db.execute(_LAST_EVENTS_SQL).fetchall())

    def close(self) -> None:
        """Commit what is pending (unless that transaction failed), checkpoint and close; a disk that
        refuses the commit or the checkpoint loses only what was never acknowledged."""
        try:
            self.commit()
        except StorageFault as fault:
            _log.warning("journal closed without its last, unacknowledged changes: %s", fault.reason)
        if self._checkpointer is not None:
            self._checkpointer.stop()
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error as exc:  # the WAL stays; the next open reads it
                _log.warning("journal %s not checkpointed at close: %s", self.path, exc)
        self._db.close()

    def commit(self) -> None:
        """Make this transaction durable, or raise :class:`StorageFault` if it is lost (a write or the
        commit itself failed): it is rolled back whole, and nothing of it may be acknowledged."""
        if self._broken is None:
            try:
                self._db.commit()
                return
            except sqlite3.Error as exc:
                self._broken = journal_fault(exc, self.path)
        fault, self._broken = self._broken, None
        self.rollback()
        assert fault is not None
        raise fault

    def fail(self, fault: StorageFault) -> None:
        """Something this transaction stands for could not be stored (an artefact on a full disk):
        the next :meth:`commit` rolls it back and raises ``fault``."""
        if self._broken is None:
            self._broken = fault

    def rollback(self) -> None:
        """Forget this transaction (SQLite may have done so already) and the numbers it handed out."""
        try:
            self._db.rollback()
        except sqlite3.Error as exc:
            _log.warning("journal rollback failed: %s", exc)
        self._read_counters()

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """Execute a change; one that fails raises :class:`StorageFault` and marks the transaction
        lost (SQLite may have rolled it back already)."""
        try:
            return self._db.execute(sql, params)
        except sqlite3.Error as exc:
            fault = journal_fault(exc, self.path)
            self.fail(fault)
            raise fault from exc

    # ---- trials ----

    def add_trial(self, rec: TrialRecord, evaluator: bytes, model: bytes) -> bool:
        """Insert a new trial; False if the id exists already (a re-sent SUBMIT)."""
        self._queue_seq += 1
        rec.queue_seq = self._queue_seq
        rec.created = rec.updated = time.time()
        cur = self._write(
            f"INSERT OR IGNORE INTO trials ({_TRIAL_COLUMNS}) VALUES ({', '.join('?' * 20)})", self._row(rec)
        )
        if cur.rowcount == 0:
            return False
        self._write("INSERT INTO payloads VALUES (?, ?, ?)", (rec.id, evaluator, model))
        return True

    def update_trial(self, rec: TrialRecord, *, requeue: bool = False) -> None:
        if requeue:
            self._queue_seq += 1
            rec.queue_seq = self._queue_seq
        rec.updated = time.time()
        failure = None if rec.failure is None else codec.pack(rec.failure)
        self._write(
            _UPDATE_SQL,
            (
                rec.state.value,
                rec.attempt,
                rec.worker,
                rec.reason,
                failure,
                int(rec.cancel_requested),
                rec.queue_seq,
                rec.updated,
                rec.id,
            ),
        )

    def payload(self, trial_id: str) -> tuple[bytes, bytes]:
        row = self._db.execute("SELECT evaluator, model FROM payloads WHERE id = ?", (trial_id,)).fetchone()
        if row is None:
            raise KeyError(trial_id)
        return bytes(row[0]), bytes(row[1])

    def drop_payload(self, trial_id: str) -> None:
        """Finished trials need their payload no more; keep the journal small."""
        self._write("DELETE FROM payloads WHERE id = ?", (trial_id,))

    def trials(self) -> list[TrialRecord]:
        rows = self._db.execute(f"SELECT {_TRIAL_COLUMNS} FROM trials ORDER BY queue_seq").fetchall()
        records = [self._record(r) for r in rows]
        checkpoints = {
            trial: BlobRef(digest, size)
            for trial, digest, size in self._db.execute("SELECT trial, digest, size FROM checkpoints")
        }
        for rec in records:
            rec.checkpoint = checkpoints.get(rec.id)
        return records

    def set_checkpoint(self, trial: str, attempt: int, checkpoint: BlobRef) -> None:
        """The trial's latest complete checkpoint (a blob in the dispatcher's store), for its next attempt."""
        self._write(
            "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?, ?)",
            (trial, attempt, checkpoint.digest, checkpoint.size, time.time()),
        )

    # ---- reports and events ----

    def add_report(self, client: str, report: Report) -> int:
        """Store a report once, as an event of ``client``; its event seq, or 0 if it was stored before."""
        seq = self._event_seq.get(client, 0) + 1
        cur = self._write(
            "INSERT OR IGNORE INTO reports VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                report.trial,
                report.attempt,
                report.seq,
                int(report.final),
                report.value,
                time.time(),
                client,
                seq,
            ),
        )
        if cur.rowcount != 1:
            return 0
        self._event_seq[client] = seq
        return seq

    def add_state(self, client: str, change: StateChange) -> int:
        """Store a state change as the next event of ``client``; its event seq."""
        seq = self._event_seq.get(client, 0) + 1
        self._write(
            "INSERT INTO states VALUES (?, ?, ?, ?, ?)",
            (client, seq, change.trial, change.attempt, codec.pack(change)),
        )
        self._event_seq[client] = seq
        return seq

    def report_count(self, trial: str, attempt: int) -> int:
        """How many reports of this attempt are stored (always its seqs 1..N: they are stored in order)."""
        row = self._db.execute(
            "SELECT COUNT(*) FROM reports WHERE trial = ? AND attempt = ?", (trial, attempt)
        ).fetchone()
        count: int = row[0]
        return count

    def has_final(self, trial: str, attempt: int) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM reports WHERE trial = ? AND attempt = ? AND final = 1 LIMIT 1", (trial, attempt)
        ).fetchone()
        return row is not None

    def reports(self, trial: str) -> list[Report]:
        rows = self._db.execute(
            "SELECT attempt, seq, final, value FROM reports WHERE trial = ? ORDER BY attempt, seq", (trial,)
        ).fetchall()
        return [Report(trial, a, s, bool(f), bytes(v)) for a, s, f, v in rows]

    def events_after(self, client: str, seq: int) -> Iterator[Event]:
        """The events of ``client`` after ``seq``, in order (a reconnecting client asks for them)."""
        cur = self._db.execute(_EVENTS_AFTER_SQL, (client, seq, client, seq))
        for event, trial, attempt, report_seq, final, body in cur:
            if report_seq >= 0:
                yield Event(event, report=Report(trial, attempt, report_seq, bool(final), bytes(body)))
            else:
                yield Event(event, state=codec.unpack(StateChange, bytes(body)))

    # ---- who owns what ----

    def owner(self, peer: str) -> str | None:
        """The credential that first used the peer id ``peer`` ("" the cluster key), or None."""
        row = self._db.execute("SELECT credential FROM owners WHERE peer = ?", (peer,)).fetchone()
        return None if row is None else str(row[0])

    def bind_owner(self, peer: str, credential: str) -> None:
        """``peer`` belongs to ``credential`` from now on (its trials and events with it)."""
        self._write("INSERT OR IGNORE INTO owners VALUES (?, ?, ?)", (peer, credential, time.time()))

    def revoke(self, name: str, before: int) -> None:
        """Refuse the credentials named ``name`` issued up to ``before`` (ns)."""
        self._write(
            "INSERT OR REPLACE INTO revoked "
            "VALUES (?, ?, ?, (SELECT COALESCE(MAX(serial), 0) + 1 FROM revoked))",
            (name, before, time.time()),
        )

    def revoked_after(self, serial: int) -> list[tuple[str, int, int]]:
        """Revocations recorded after ``serial``: (name, issued before, serial), oldest first."""
        cur = self._db.execute(
            "SELECT name, before, serial FROM revoked WHERE serial > ? ORDER BY serial", (serial,)
        )
        return [(str(name), int(before), int(s)) for name, before, s in cur]

    # ---- rows ----

    @staticmethod
    def _row(rec: TrialRecord) -> tuple[Any, ...]:
        return (
            rec.id,
            rec.client,
            rec.name,
            rec.state.value,
            rec.attempt,
            rec.max_retries,
            rec.timeout,
            json.dumps(rec.arch),
            rec.worker,
            rec.reason,
            None if rec.failure is None else codec.pack(rec.failure),
            int(rec.cancel_requested),
            rec.queue_seq,
            rec.created,
            rec.updated,
            json.dumps([[b.digest, b.size] for b in rec.blobs]),
            rec.seed,
            rec.pack,
            rec.pack_key,
            rec.gpus,
        )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> TrialRecord:
        (id_, client, name, state, attempt, retries, timeout, arch, worker, reason, failure, cancel) = row[
            :12
        ]
        queue_seq, created, updated, blobs, seed, pack, pack_key, gpus = row[12:]
        return TrialRecord(
            id_,
            client,
            name,
            TrialState(state),
            attempt,
            retries,
            timeout,
            json.loads(arch) if arch else None,
            trial_seed(id_) if seed is None else seed,
            worker,
            reason,
            None if failure is None else codec.unpack(Failure, bytes(failure)),
            bool(cancel),
            queue_seq,
            created,
            updated,
            [BlobRef(digest, size) for digest, size in json.loads(blobs)],
            pack=pack,
            pack_key=pack_key,
            gpus=gpus,
        )


def record_revocation(path: str | Path, name: str, before: int) -> None:
    """Refuse every credential named ``name`` issued up to ``before`` (ns), from now on: written to
    the journal at ``path`` directly (a running dispatcher reads it within a heartbeat)."""
    journal = Journal(path, checkpoint_interval=3600.0)
    try:
        journal.revoke(name, before)
        journal.commit()
    finally:
        journal.close()
