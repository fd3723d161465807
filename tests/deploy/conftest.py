"""Processes started by a deploy test are killed at its end, whatever happened; a worker home trials
run as another user can reach."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[Any]]]:
    """Started processes, killed at the end of the test whatever happened."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for proc in reversed(started):
        if proc.poll() is None:
            proc.kill()
        with proc:  # waits, and closes the pipes a test did not (an unclosed one is a ResourceWarning)
            pass


@pytest.fixture
def passable_dir() -> Iterator[Path]:
    """A directory every user may pass through (0711, under /tmp), for a worker home whose trials
    run as another user (--trial-user): pytest's own tmp_path is its owner's alone."""
    path = Path(tempfile.mkdtemp(prefix="retia-deploy-"))
    path.chmod(0o711)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
