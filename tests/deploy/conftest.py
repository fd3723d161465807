"""Processes started by a deploy test are killed at its end, whatever happened."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
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
