"""Cluster key files: created 0600, refused when group or others can read them."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from retia.errors import ConfigError
from retia.keys import create_key_file, load_key, resolve_key


def test_created_key_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "home" / "cluster.key"
    key = create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_key(path) == key and len(key) == 64


def test_readable_key_file_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    create_key_file(path)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_key(path)


def test_resolve_order_and_creation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETIA_KEY", "from-the-environment-0123456789")
    assert resolve_key(b"explicit") == b"explicit"
    assert resolve_key() == b"from-the-environment-0123456789"
    monkeypatch.delenv("RETIA_KEY")
    path = tmp_path / "new.key"
    created = resolve_key(key_file=path, create=True)
    assert resolve_key(key_file=path) == created
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_key(key_file=tmp_path / "missing.key")
