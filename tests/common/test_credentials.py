"""Credentials: derived from the cluster key by role, name and issue time; files only their owner reads."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from retia.credentials import Credential, Role, cluster_credential, derive_key, issue, resolve_credential
from retia.errors import ConfigError

KEY = b"k" * 64


def test_the_key_depends_on_role_name_and_issue_time() -> None:
    base = derive_key(KEY, Role.WORKER, "pool", 1)
    assert len(base) == 64 and base == derive_key(KEY, Role.WORKER, "pool", 1)
    others = {
        derive_key(KEY, Role.CLIENT, "pool", 1),  # the same name as a client: another key
        derive_key(KEY, Role.WORKER, "pool2", 1),
        derive_key(KEY, Role.WORKER, "pool", 2),
        derive_key(b"x" * 64, Role.WORKER, "pool", 1),
    }
    assert base not in others and len(others) == 4


def test_a_saved_credential_is_its_owners_alone_and_loads_back(tmp_path: Path) -> None:
    cred = issue(KEY, Role.CLIENT, "alice", address="tcp://head:5555", server_key="z" * 40)
    path = tmp_path / "alice.cred"
    cred.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Credential.load(path) == cred
    with pytest.raises(ConfigError, match="--force"):
        cred.save(path)  # never overwritten by accident
    assert cred.key.decode() not in repr(cred) and "alice" in repr(cred)


def test_a_credential_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "open.cred"
    issue(KEY, Role.WORKER, "pool").save(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        Credential.load(path)


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        '{"retia_credential": 2}',
        '{"retia_credential": 1, "role": "root", "name": "a", "issued": 1, "key": "' + "k" * 64 + '"}',
        '{"retia_credential": 1, "role": "client", "name": "a", "issued": -1, "key": "' + "k" * 64 + '"}',
        '{"retia_credential": 1, "role": "client", "name": "a", "issued": 1, "key": "short"}',
        '{"retia_credential": 1, "role": "client", "name": 5, "issued": 1, "key": "' + "k" * 64 + '"}',
    ],
)
def test_a_file_that_is_no_credential_is_refused_by_name(text: str) -> None:
    with pytest.raises(ConfigError, match="not a valid retia credential"):
        Credential.from_json(text, "that file")


def test_a_name_that_cannot_name_files_is_refused_at_issue() -> None:
    with pytest.raises(ConfigError, match="credential name"):
        issue(KEY, Role.CLIENT, "../alice")


def test_without_a_credential_the_cluster_key_is_the_admins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RETIA_CREDENTIAL", raising=False)
    monkeypatch.setenv("RETIA_KEY", KEY.decode())
    assert resolve_credential() == cluster_credential(KEY)
    assert cluster_credential(KEY).role is Role.ADMIN and cluster_credential(KEY).label == "the cluster key"
    path = tmp_path / "w.cred"
    issue(KEY, Role.WORKER, "pool").save(path)
    monkeypatch.setenv("RETIA_CREDENTIAL", str(path))
    assert resolve_credential().name == "pool"  # the credential's file wins over the key
