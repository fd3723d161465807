"""The SQLite journal: trials, reports stored exactly once, events replayed in order, durable."""

from __future__ import annotations

from pathlib import Path

from retia.protocol import MsgType, TrialState
from retia.dispatcher.journal import Journal, TrialRecord


def _record(trial_id: str) -> TrialRecord:
    return TrialRecord(trial_id, "client-a", "n", TrialState.QUEUED, 0, 2, None, {"width": 8})


def test_trials_survive_reopen_and_resubmits_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    journal = Journal(path)
    assert journal.add_trial(_record("t1"), b"ev", b"model")
    assert not journal.add_trial(_record("t1"), b"other", b"other")
    rec = journal.trials()[0]
    rec.state, rec.attempt = TrialState.RUNNING, 1
    journal.update_trial(rec)
    journal.close()

    reopened = Journal(path)
    [back] = reopened.trials()
    assert (back.id, back.state, back.attempt, back.arch) == ("t1", TrialState.RUNNING, 1, {"width": 8})
    assert reopened.payload("t1") == (b"ev", b"model")
    reopened.close()


def test_reports_are_stored_once_per_trial_attempt_seq(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    assert journal.add_report("t", 1, 1, False, b"a")
    assert not journal.add_report("t", 1, 1, False, b"a")  # a re-send after reconnect
    assert journal.add_report("t", 2, 1, False, b"b")  # the same seq of a new attempt is new
    assert [(a, s) for a, s, _f, _v in journal.reports("t")] == [(1, 1), (2, 1)]
    journal.close()


def test_events_replay_in_order_per_client(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite")
    seqs = [journal.add_event("a", "t", 1, int(MsgType.REPORT), bytes([i])) for i in range(5)]
    journal.add_event("b", "u", 1, int(MsgType.STATE), b"x")
    assert seqs == sorted(seqs)
    replay = list(journal.events_after("a", seqs[1]))
    assert [e.body for e in replay] == [b"\x02", b"\x03", b"\x04"]
    assert all(e.client == "a" for e in replay)
    journal.close()
