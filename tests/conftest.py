"""Shared fixtures: every test must leave no child process and no changed environment behind."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retia.client.backend import Backend

from .clusters import fast_cluster
from .nvml import FakeNvml, build_fake_nvml

# The run must leave `git status` as it found it (tests/git_clean.py; --allow-dirty-tree lists only).
pytest_plugins = ["tests.git_clean"]

# Set by libraries on first import (scikit-learn sets the KMP ones), or by pytest itself.
# torch sets TORCHINDUCTOR_CACHE_DIR when it builds its first optimizer.
_ENV_SET_BY_OTHERS = {
    "PYTEST_CURRENT_TEST",
    "KMP_DUPLICATE_LIB_OK",
    "KMP_INIT_AT_FORK",
    "TORCHINDUCTOR_CACHE_DIR",
    "PYTORCH_NVML_BASED_CUDA_CHECK",  # set by pytorch_lightning on import
}


def pytest_configure(config: pytest.Config) -> None:
    """One torch thread per test process: two cores are shared by the suite's processes."""
    import torch

    torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a slow test first (each file's own order kept): with two test processes (make
    test), the longest files start early instead of running alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)


def _children() -> set[int]:
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state != "Z":
            pids.add(int(entry.name))
    return pids


@pytest.fixture(autouse=True)
def _no_leaks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """Fail a test that leaves child processes running or changes the environment."""
    before_env = dict(os.environ)
    monkeypatch.setenv("RETIA_RUNS_DIR", str(tmp_path / "runs"))
    before = _children()
    yield
    deadline = time.monotonic() + 5
    leaked = _children() - before
    while leaked and time.monotonic() < deadline:
        time.sleep(0.05)
        leaked = _children() - before
    monkeypatch.undo()  # the test's own monkeypatch.setenv/delenv (same instance) are not leaks
    changed = {k for k in set(os.environ) | set(before_env) if os.environ.get(k) != before_env.get(k)}
    changed -= _ENV_SET_BY_OTHERS
    assert not leaked, f"test leaked child processes {sorted(leaked)}"
    assert not changed, f"test changed environment variables {sorted(changed)}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """Two CPU workers shared by a test module (do not kill its processes: use fresh_cluster)."""
    with fast_cluster(workers=2, home=tmp_path_factory.mktemp("cluster")) as backend:
        yield backend


@pytest.fixture
def fresh_cluster(tmp_path: Path) -> Iterator[Backend]:
    """A private two-worker cluster for tests that kill, stop or restart its processes."""
    with fast_cluster(workers=2, home=tmp_path / "cluster") as backend:
        yield backend


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> FakeNvml:
    """The fake NVML library, built once; each test sets its devices' state (tests/nvml.py)."""
    return build_fake_nvml(tmp_path_factory.mktemp("nvml"))
