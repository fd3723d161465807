"""Pytest plugin: a test run leaves ``git status`` as it found it.

At session start it records ``git status --porcelain`` (untracked files one by one, ignored
files left out) with each listed path's size and modification time; at session end it compares.
A path that is new in the list, or listed with another status, size or time, was created or
changed while the tests ran: the run fails (exit status 1, even when every test passed) and the
terminal summary names each path. What was already uncommitted at the start is not a failure
unless the run changes it again. Outside a git checkout, or without git, it does nothing.

``--allow-dirty-tree`` still lists the paths but does not fail the run (for a developer who
edits files while the tests run: their edits show up here too).

Loaded by tests/conftest.py (``pytest_plugins``); ``-p tests.git_clean`` loads it elsewhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

__all__ = ["changes", "repository_root", "snapshot"]

_BEFORE = pytest.StashKey[dict[str, str]]()
_CHANGED = pytest.StashKey[list[str]]()
_ROOT = pytest.StashKey[Path]()

# git status must not take .git/index.lock: a developer (or another run) may be using git meanwhile
_GIT = ("git", "--no-optional-locks")


def _git(cwd: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            [*_GIT, *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "LC_ALL": "C"},
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def repository_root(start: Path) -> Path | None:
    """The top of the git work tree holding ``start``; None outside one (or without git)."""
    out = _git(start, "rev-parse", "--show-toplevel")
    return Path(out.strip()) if out and out.strip() else None


def _fingerprint(path: Path) -> str:
    try:
        stat = path.lstat()
    except OSError:
        return "absent"
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def snapshot(root: Path) -> dict[str, str] | None:
    """``path -> "XY size:mtime"`` for every path ``git status`` lists in ``root``; None if git fails."""
    out = _git(root, "status", "--porcelain=v1", "-z", "--ignored=no", "--untracked-files=all")
    if out is None:
        return None
    entries: dict[str, str] = {}
    fields = iter(out.split("\0"))
    for field in fields:
        if not field:
            continue
        code, path = field[:2], field[3:]
        if "R" in code or "C" in code:
            next(fields, None)  # the original path of a rename or copy
        entries[path] = f"{code} {_fingerprint(root / path)}"
    return entries


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """``git status`` lines (``XY path``) for what is new or different in ``after``."""
    return [
        f"{state[:2]} {path}"
        + ("" if path not in before else "  (already uncommitted at the start; changed again)")
        for path, state in sorted(after.items())
        if before.get(path) != state
    ]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--allow-dirty-tree",
        action="store_true",
        help="list files the test run created or changed in the git checkout, but do not fail the run",
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: the controller checks
        return
    root = repository_root(session.config.rootpath)
    if root is None:
        return
    before = snapshot(root)
    if before is not None:
        session.config.stash[_ROOT] = root
        session.config.stash[_BEFORE] = before


@pytest.hookimpl(trylast=True)  # after session-scoped fixtures are torn down (they may clean up)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    before = config.stash.get(_BEFORE, None)
    if before is None:
        return
    after = snapshot(config.stash[_ROOT])
    if after is None:
        return
    changed = changes(before, after)
    if not changed:
        return
    config.stash[_CHANGED] = changed
    if not config.getoption("allow_dirty_tree") and session.exitstatus in (
        pytest.ExitCode.OK,
        pytest.ExitCode.NO_TESTS_COLLECTED,
    ):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if config.pluginmanager.get_plugin("terminalreporter") is None:
        print(_message(config, changed), file=sys.stderr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    changed = config.stash.get(_CHANGED, None)
    if changed:
        terminalreporter.section("git status changed by this test run", sep="=", red=True, bold=True)
        terminalreporter.line(_message(config, changed), red=not config.getoption("allow_dirty_tree"))


def _message(config: pytest.Config, changed: list[str]) -> str:
    root = config.stash[_ROOT]
    verdict = (
        "listed only (--allow-dirty-tree)"
        if config.getoption("allow_dirty_tree")
        else "the run FAILS: tests must write under tmp_path, not into the checkout"
    )
    lines = [f"the test run created or changed {len(changed)} path(s) in {root}: {verdict}"]
    lines += [f"  {line}" for line in changed]
    lines.append("(files you edited yourself while the tests ran are listed too; --allow-dirty-tree)")
    return "\n".join(lines)
