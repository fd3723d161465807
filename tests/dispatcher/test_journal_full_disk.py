"""The journal on a real full disk: a failed transaction is lost whole, and says so."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from retia.dispatcher.journal import Journal
from retia.errors import StorageFault, StorageKind
from retia.protocol import Report

from ..disks import fill, small_disk

pytestmark = pytest.mark.timeout(60)


def test_a_commit_that_fails_loses_its_whole_transaction_and_commits_nothing_after(tmp_path: Path) -> None:
    with small_disk(tmp_path / "disk", "4m") as disk:
        journal = Journal(disk / "journal.sqlite")
        first = journal.add_report("c", Report("t", 1, 1, False, b"kept"))
        journal.commit()
        filler = fill(disk)
        try:
            for seq in range(2, 60):
                journal.add_report("c", Report("t", 1, seq, False, os.urandom(100_000)))
        except StorageFault:
            pass  # a write may fail already; then the commit says the transaction is lost
        with pytest.raises(StorageFault, match="disk is full") as caught:
            journal.commit()
        assert str(disk / "journal.sqlite") in caught.value.reason
        journal.commit()  # nothing is left to commit (before, this empty commit was taken for success)
        filler.unlink()
        assert [r.seq for r in journal.reports("t")] == [1]
        # the event numbers of the lost transaction are handed out again: a client sees no gap
        assert journal.add_report("c", Report("t", 1, 2, False, b"after")) == first + 1
        journal.close()
        reopened = Journal(disk / "journal.sqlite")
        assert [r.value for r in reopened.reports("t")] == [b"kept", b"after"]
        reopened.close()


def test_a_write_lost_with_its_artefact_fails_the_commit(tmp_path: Path) -> None:
    """An artefact of the turn could not be stored: the turn's journal writes are not committed."""
    journal = Journal(tmp_path / "journal.sqlite")
    journal.add_report("c", Report("t", 1, 1, False, b"x"))
    journal.fail(
        StorageFault(StorageKind.FULL, "an artefact", str(tmp_path / "a"), OSError(28, "No space left"))
    )
    with pytest.raises(StorageFault, match="an artefact"):
        journal.commit()
    assert journal.reports("t") == []
    journal.close()
