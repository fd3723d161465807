"""Home 0700, journal 0600, checked at start (issue 17, "Files and defaults").

The journal holds every payload and result; the homes hold the key. A real cluster started on a
home someone left open (0755, a journal 0644, an artefact directory 0755, a worker home 0755)
closes each, says which in its log, and serves; a journal created afresh is 0600 from its first
byte, its -wal and -shm too.
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from retia import FunctionalEvaluator
from retia.dispatcher.journal import Journal

from ..clusters import fast_cluster
from ..integration import fits

pytestmark = pytest.mark.timeout(120)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_open_home_and_journal_are_closed_at_start_and_the_logs_say_which(tmp_path: Path) -> None:
    home = tmp_path / "cluster"
    home.mkdir(mode=0o755)
    Journal(home / "journal.sqlite").close()  # a journal from an earlier run, under umask 022
    (home / "journal.sqlite").chmod(0o644)
    (home / "artifacts").mkdir(mode=0o755)
    (home / "worker-0").mkdir(mode=0o755)
    for path in (home, home / "artifacts", home / "worker-0"):
        path.chmod(0o755)  # (mkdir's mode passes through the umask)
    with fast_cluster(workers=1, home=home) as backend:
        trial = backend.submit(fits.DigitsMLP, FunctionalEvaluator(fits.counting, steps=2))
        assert trial.result(timeout=60) == 2.0  # it serves on the same journal
        modes = {path.name: _mode(path) for path in home.iterdir() if path.name != "logs"}
    assert modes["cluster.key"] == modes["journal.sqlite"] == 0o600
    assert modes["journal.sqlite-wal"] == modes["journal.sqlite-shm"] == 0o600  # SQLite's, while it ran
    assert modes["artifacts"] == modes["worker-0"] == 0o700
    assert _mode(home) == 0o700
    dispatcher_log = (home / "logs" / "dispatcher.log").read_text()
    assert f"dispatcher home {home} was mode 0755 (group and others could reach it); changed to 0700" in (
        dispatcher_log
    )
    assert f"journal file {home / 'journal.sqlite'} was mode 0644 (group and others" in dispatcher_log
    assert f"artifacts directory {home / 'artifacts'} was mode 0755" in dispatcher_log
    worker_log = (home / "logs" / "worker-0.log").read_text()
    assert f"worker home {home / 'worker-0'} was mode 0755 (group and others could reach it)" in worker_log


def test_a_new_journal_and_its_wal_and_shm_are_the_owners_alone(tmp_path: Path) -> None:
    path = tmp_path / "state" / "journal.sqlite"
    journal = Journal(path)
    try:
        journal.commit()
        files = {p.name: _mode(p) for p in path.parent.iterdir()}
    finally:
        journal.close()
    assert files == {"journal.sqlite": 0o600, "journal.sqlite-wal": 0o600, "journal.sqlite-shm": 0o600}
