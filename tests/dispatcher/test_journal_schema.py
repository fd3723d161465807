"""A journal carries its schema version; one written by another schema is refused, not half read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from retia.dispatcher.journal import SCHEMA_VERSION, Journal
from retia.errors import ConfigError


def test_a_new_journal_records_its_schema_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    Journal(path).close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    Journal(path).close()


@pytest.mark.parametrize("version", [0, SCHEMA_VERSION + 1])
def test_a_journal_of_another_schema_is_refused_with_what_to_do(tmp_path: Path, version: int) -> None:
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as db:  # the first schema's reports table, without client and event
        db.execute(
            "CREATE TABLE reports (trial TEXT, attempt INTEGER, seq INTEGER, final INTEGER, value BLOB)"
        )
        db.execute(f"PRAGMA user_version={version}")
    with pytest.raises(
        ConfigError, match=r"journal .*journal\.sqlite was written by .*start this one on a new"
    ):
        Journal(path)
