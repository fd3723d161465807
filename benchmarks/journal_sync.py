"""What SQLite's ``synchronous=FULL`` costs the journal beside ``NORMAL``, on the report-flood path.

The real :class:`~retia.dispatcher.journal.Journal` (WAL, its checkpoint thread) stores what one
turn of the dispatcher's loop stores during a report flood: a batch of reports, each an event
of its client, then one commit; ``--commits`` turns per setting. With NORMAL a commit appends to
the WAL without an fsync (a process crash loses nothing; a power loss can take the commits since
the last checkpoint); with FULL every commit fsyncs the WAL (a power loss loses nothing
acknowledged). Measured on this machine's disk (``--disk-dir``) and on tmpfs (``/dev/shm``, where
fsync costs nothing: the yardstick), side by side. Numbers only, never assertions.

    .venv/bin/python benchmarks/journal_sync.py [--commits 3000] [--batch 1 --batch 64] \
        [--disk-dir /var/tmp] [--markdown]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from retia.dispatcher.journal import Journal, TrialRecord
from retia.protocol import Report, TrialState, pack_metric

try:
    from _tables import to_markdown
except ImportError:  # run as a module from the repository root
    from benchmarks._tables import to_markdown


def run(directory: Path, synchronous: str, commits: int, batch: int) -> tuple[float, float, float]:
    """p50 and p99 of one turn (its reports stored and committed) in ms, and reports stored per second."""
    path = directory / f"journal-{synchronous}-{batch}.sqlite"
    journal = Journal(path, synchronous=synchronous)
    trial = "t" * 32
    journal.add_trial(
        TrialRecord(trial, "client", "flood", TrialState.RUNNING, 1, 2, None, None, 0),
        b"e" * 4096,
        b"m" * 4096,
    )
    journal.commit()
    turns: list[float] = []
    seq = 0
    start = time.perf_counter()
    for _ in range(commits):
        began = time.perf_counter()
        for _ in range(batch):
            seq += 1
            journal.add_report("client", Report(trial, 1, seq, False, pack_metric(seq * 0.001)))
        journal.commit()
        turns.append(time.perf_counter() - began)
    elapsed = time.perf_counter() - start
    journal.close()
    for leftover in directory.glob(f"{path.name}*"):
        leftover.unlink()
    turns.sort()
    p99 = turns[min(len(turns) - 1, int(len(turns) * 0.99))]
    return statistics.median(turns) * 1e3, p99 * 1e3, seq / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--commits", type=int, default=3000, help="loop turns per setting (default %(default)s)"
    )
    parser.add_argument(
        "--batch", type=int, action="append", help="reports per turn (repeatable; default 1 and 64)"
    )
    parser.add_argument("--disk-dir", type=Path, default=Path("/var/tmp"), help="a directory on the disk")
    parser.add_argument("--tmpfs-dir", type=Path, default=Path("/dev/shm"), help="a directory on tmpfs")
    parser.add_argument("--markdown", action="store_true", help="also print the table as Markdown")
    args = parser.parse_args()
    batches = args.batch or [1, 64]
    table = Table(title=f"journal commit cost, synchronous NORMAL vs FULL ({args.commits} turns each)")
    for header in ("where", "reports/turn", "NORMAL p50/p99 ms", "NORMAL reports/s"):
        table.add_column(header)
    for header in ("FULL p50/p99 ms", "FULL reports/s", "FULL / NORMAL (time)"):
        table.add_column(header)
    for label, root in (("disk", args.disk_dir), ("tmpfs", args.tmpfs_dir)):
        directory = Path(tempfile.mkdtemp(prefix="retia-journal-sync-", dir=root))
        try:
            for batch in batches:
                normal = run(directory, "NORMAL", args.commits, batch)
                full = run(directory, "FULL", args.commits, batch)
                table.add_row(
                    f"{label} ({root})",
                    str(batch),
                    f"{normal[0]:.3f} / {normal[1]:.3f}",
                    f"{normal[2]:,.0f}",
                    f"{full[0]:.3f} / {full[1]:.3f}",
                    f"{full[2]:,.0f}",
                    f"{normal[2] / full[2]:.2f}x",
                )
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    Console().print(table)
    if args.markdown:
        print(to_markdown(table))


if __name__ == "__main__":
    main()
