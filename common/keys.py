"""The cluster key: generated once on the head node, kept there in a 0600 file (peers hold credentials)."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from .errors import ConfigError
from .filemodes import read_secret

__all__ = ["DEFAULT_HOME", "default_key_file", "load_key", "create_key_file", "resolve_key"]

_log = logging.getLogger(__name__)
DEFAULT_HOME = Path("~/.retia")
KEY_ENV = "RETIA_KEY"
_KEY_BYTES = 32


def default_key_file(home: Path | None = None) -> Path:
    return (home or DEFAULT_HOME).expanduser() / "cluster.key"


def create_key_file(path: Path) -> bytes:
    """Write a fresh random key to ``path`` with mode 0600 (never world-readable, even briefly)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(_KEY_BYTES).encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key + b"\n")
    return key


def load_key(path: Path) -> bytes:
    """Read a key file, refusing one that group or others can read."""
    key = read_secret(
        path,
        "key file",
        "off the head node, connect with a credential instead (--credential FILE, issued there with "
        "'retia credential issue')",
        "anyone who reads it can run code on your workers",
    ).strip()
    if len(key) < 16:
        raise ConfigError(f"key file {path} holds {len(key)} bytes; a cluster key needs at least 16")
    return key


def resolve_key(
    key: bytes | str | None = None, key_file: Path | str | None = None, *, create: bool = False
) -> bytes:
    """The key from an argument, a file, ``$RETIA_KEY`` or the default file, in that order."""
    if key:
        return key.encode() if isinstance(key, str) else key
    if key_file is None and os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV].strip().encode()
    path = Path(key_file).expanduser() if key_file is not None else default_key_file()
    if create and not path.exists():
        created = create_key_file(path)
        _log.warning(
            "generated a new cluster key in %s; it stays here: give each worker pool and each user a "
            "credential derived from it (retia credential issue --role worker|client --name NAME)",
            path,
        )
        return created
    return load_key(path)
