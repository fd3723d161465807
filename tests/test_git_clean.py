"""The plugin of tests/git_clean.py sees what a test run leaves in the checkout, and fails the run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .git_clean import changes, repository_root, snapshot

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, timeout=60)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout with one commit, one uncommitted change and one untracked file."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("__pycache__/\n.pytest_cache/\nignored/\n")
    (repo / "tracked.txt").write_text("one\n")
    (repo / "edited.txt").write_text("one\n")
    _git(repo, "add", ".")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "start")
    (repo / "edited.txt").write_text("two\n")  # a developer's work in progress
    (repo / "notes.txt").write_text("draft\n")
    return repo


def test_snapshot_lists_uncommitted_and_untracked_paths(repo: Path) -> None:
    state = snapshot(repo)
    assert state is not None
    assert sorted(state) == ["edited.txt", "notes.txt"]
    assert state["edited.txt"].startswith(" M ")
    assert state["notes.txt"].startswith("?? ")


def test_only_what_changed_during_the_run_is_reported(repo: Path) -> None:
    before = snapshot(repo)
    assert before is not None
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "out.json").write_text("{}")
    (repo / "tracked.txt").write_text("changed\n")
    (repo / "notes.txt").write_text("draft, rewritten by a test\n")
    (repo / "ignored").mkdir()
    (repo / "ignored" / "scratch").write_text("ignored by .gitignore")
    after = snapshot(repo)
    assert after is not None
    assert changes(before, after) == [
        "?? new/deep/out.json",
        "?? notes.txt  (already uncommitted at the start; changed again)",
        " M tracked.txt",
    ]
    assert changes(before, before) == []


def test_outside_a_checkout_or_without_git_there_is_nothing_to_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))  # git looks no higher up
    (tmp_path / "plain").mkdir()
    assert repository_root(tmp_path / "plain") is None
    assert snapshot(tmp_path / "plain") is None
    monkeypatch.setenv("PATH", str(tmp_path / "plain"))  # no git at all
    assert repository_root(ROOT) is None


def _run_pytest(repo: Path, test_body: str, *args: str) -> subprocess.CompletedProcess[str]:
    (repo / "test_inner.py").write_text(textwrap.dedent(test_body))
    _git(repo, "add", "test_inner.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "test")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.git_clean", *args],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


LEAKY = """
    from pathlib import Path

    def test_writes_into_the_checkout():
        Path(__file__).with_name("leak.txt").write_text("left behind")
"""


def test_a_run_that_leaves_a_file_fails_and_names_it(repo: Path) -> None:
    proc = _run_pytest(repo, LEAKY)
    assert proc.returncode == pytest.ExitCode.TESTS_FAILED, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert "git status changed by this test run" in proc.stdout
    assert "?? leak.txt" in proc.stdout
    assert "notes.txt" not in proc.stdout and "edited.txt" not in proc.stdout


def test_allow_dirty_tree_lists_without_failing(repo: Path) -> None:
    proc = _run_pytest(repo, LEAKY, "--allow-dirty-tree")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout + proc.stderr
    assert "?? leak.txt" in proc.stdout


def test_a_clean_run_passes_and_says_nothing(repo: Path) -> None:
    proc = _run_pytest(repo, "def test_nothing():\n    pass\n")
    assert proc.returncode == pytest.ExitCode.OK, proc.stdout + proc.stderr
    assert "git status" not in proc.stdout
