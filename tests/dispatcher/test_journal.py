"""The SQLite journal: trials, reports stored exactly once, events replayed in order, durable."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from retia.dispatcher.journal import Journal, TrialRecord
from retia.protocol import Report, StateChange, TrialState


def _record(trial_id: str) -> TrialRecord:
    return TrialRecord(trial_id, "client-a", "n", TrialState.QUEUED, 0, 2, None, {"width": 8}, 5)


def test_trials_survive_reopen_and_resubmits_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    assert journal.add_trial(_record("t1"), b"ev", b"model")
    assert not journal.add_trial(_record("t1"), b"other", b"other")
    for trial_id, gpus in (("cpu", 0), ("two", 2)):
        wanting = _record(trial_id)
        wanting.gpus = gpus
        assert journal.add_trial(wanting, b"ev", b"model")
    rec = journal.trials()[0]
    rec.state, rec.attempt = TrialState.RUNNING, 1
    journal.update_trial(rec)
    journal.close()

    reopened = Journal(path)
    back, *asking = reopened.trials()
    assert (back.id, back.state, back.attempt, back.arch) == ("t1", TrialState.RUNNING, 1, {"width": 8})
    assert [(rec.id, rec.gpus) for rec in [back, *asking]] == [("t1", None), ("cpu", 0), ("two", 2)]
    assert reopened.payload("t1") == (b"ev", b"model")
    reopened.close()


def test_reports_are_stored_once_per_trial_attempt_seq(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    assert journal.add_report("c", Report("t", 1, 1, False, b"a"))
    assert not journal.add_report("c", Report("t", 1, 1, False, b"a"))  # a re-send after reconnect
    assert journal.add_report("c", Report("t", 2, 1, False, b"b"))  # the same seq of a new attempt is new
    assert [(r.attempt, r.seq) for r in journal.reports("t")] == [(1, 1), (2, 1)]
    journal.close()


def test_events_replay_in_order_per_client(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    seqs = [journal.add_report("a", Report("t", 1, i, False, bytes([i]))) for i in range(4)]
    seqs.append(journal.add_state("a", StateChange("t", 1, TrialState.SUCCEEDED)))
    journal.add_state("b", StateChange("u", 1, TrialState.RUNNING))
    assert seqs == sorted(seqs)
    replay = list(journal.events_after("a", seqs[1]))
    assert [e.report.value for e in replay if e.report] == [b"\x02", b"\x03"]
    assert [e.state.state for e in replay if e.state] == [TrialState.SUCCEEDED]
    assert all(e.trial == "t" for e in replay)  # client b's event is not among them
    journal.close()


def test_a_report_is_stored_once_and_replayed_from_there(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    journal.add_report("a", Report("t", 1, 1, True, b"\xcb" + bytes(8)))
    db = journal._db
    assert db.execute("SELECT COUNT(*) FROM reports").fetchone()[0] == 1
    assert db.execute("SELECT COUNT(*) FROM states").fetchone()[0] == 0
    [event] = journal.events_after("a", 0)
    assert event.report == Report("t", 1, 1, True, b"\xcb" + bytes(8))
    journal.close()


def test_event_seqs_go_on_after_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    first = journal.add_report("a", Report("t", 1, 1, False, b"x"))
    journal.close()
    reopened = Journal(path)
    assert reopened.add_state("a", StateChange("t", 1, TrialState.SUCCEEDED)) == first + 1
    reopened.close()


def _write_rounds(
    journal: Journal, rounds: int, after_round: Callable[[int], object] = lambda n: None
) -> int:
    """``rounds`` x 1000 events of 4 KiB, committed every 100; returns the bytes of one round."""
    body = b"x" * 4096
    for n in range(rounds):
        for i in range(1000):
            journal.add_report("a", Report("t", n, i, False, body))
            if i % 100 == 99:
                journal.commit()
        after_round(n)
    return 1000 * len(body)


def test_the_wal_is_checkpointed_by_a_thread_not_by_commits(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, checkpoint_interval=0.05, backstop_pages=1 << 30)  # only the thread checkpoints

    def wait_for_pages(n: int) -> None:
        deadline = time.monotonic() + 20
        while path.stat().st_size < (n + 1) * 4_000_000:  # the pages reached the database file
            assert time.monotonic() < deadline, "the checkpointer never copied the WAL into the database"
            time.sleep(0.05)

    _write_rounds(journal, 2, wait_for_pages)
    wal = path.with_name(path.name + "-wal")
    journal.close()
    assert not wal.exists() or wal.stat().st_size == 0  # closing leaves nothing to replay


def test_a_writer_the_thread_cannot_keep_up_with_checkpoints_itself(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path, checkpoint_interval=3600, backstop_pages=256)  # the thread never gets a turn
    round_bytes = _write_rounds(journal, 4)
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size < round_bytes  # restarted at the 1 MiB backstop, not grown to 16 MB
    assert path.stat().st_size > 3 * round_bytes
    journal.close()
