"""Per-peer credentials: each worker and client holds a key derived from the cluster key for its role
and name, so the cluster key never leaves the head node.

A credential's key is HMAC-SHA256(cluster key, role, name, issue time): the dispatcher derives it
again from what a HELLO names, so nothing is stored per credential, a worker credential cannot
sign as a client (the role is part of the key), and revoking a name refuses every credential of
that name issued until then (a new one issued later works). The cluster key itself is the
``admin`` credential with no name: it may take any role, and sees every client's trials.

A credential file is JSON, mode 0600, holding all a peer needs: role, name, key, the dispatcher's
address and, when the transport is encrypted, the dispatcher's public CurveZMQ key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .filemodes import read_secret

__all__ = [
    "Role",
    "Credential",
    "derive_key",
    "issue",
    "cluster_credential",
    "resolve_credential",
    "CREDENTIAL_ENV",
]

CREDENTIAL_ENV = "RETIA_CREDENTIAL"  # a credential file's path, for peers started by scripts
_FORMAT = 1
_LABEL = b"retia-credential/1"


class Role(str, Enum):
    WORKER = "worker"
    CLIENT = "client"
    ADMIN = "admin"  # reads everything (retia status); the cluster key is one


def derive_key(cluster_key: bytes, role: Role, name: str, issued: int) -> bytes:
    """The key of the credential issued to ``name`` for ``role`` at ``issued`` (ns since the epoch)."""
    message = b"\0".join([_LABEL, role.value.encode(), name.encode(), str(issued).encode()])
    return hmac.new(cluster_key, message, hashlib.sha256).hexdigest().encode()


@dataclass(frozen=True)
class Credential:
    """Who a peer is to the dispatcher, and how to reach it."""

    role: Role
    name: str  # "" for the cluster key itself
    issued: int  # ns since the epoch; 0 for the cluster key
    key: bytes = b""
    address: str = ""  # the dispatcher's endpoint, e.g. tcp://head:5555
    server_key: str = ""  # the dispatcher's public CurveZMQ key (Z85), when it encrypts

    def __repr__(self) -> str:  # never the key
        return f"Credential({self.role.value}, {self.label}, address={self.address!r})"

    @property
    def label(self) -> str:
        """How logs and errors name it."""
        return "the cluster key" if not self.name else f"{self.role.value} credential {self.name!r}"

    def to_json(self) -> str:
        return json.dumps(
            {
                "retia_credential": _FORMAT,
                "role": self.role.value,
                "name": self.name,
                "issued": self.issued,
                "key": self.key.decode(),
                "address": self.address,
                "server_key": self.server_key,
            },
            indent=2,
        )

    def save(self, path: Path, *, overwrite: bool = False) -> None:
        """Write it with mode 0600 (never readable by others, even briefly)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if overwrite else os.O_EXCL)
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:
            raise ConfigError(f"{path} exists; remove it first or pass --force to replace it") from None
        with os.fdopen(fd, "w") as f:
            f.write(self.to_json() + "\n")

    @classmethod
    def from_json(cls, text: str, where: str = "the credential") -> Credential:
        try:
            data: Any = json.loads(text)
            if not isinstance(data, dict) or data.get("retia_credential") != _FORMAT:
                raise ValueError("not a retia credential (format 1)")
            role = Role(data["role"])
            name, issued, key = data["name"], data["issued"], data["key"]
            address, server_key = data.get("address", ""), data.get("server_key", "")
            if not all(isinstance(v, str) for v in (name, key, address, server_key)):
                raise ValueError("name, key, address and server_key must be strings")
            if isinstance(issued, bool) or not isinstance(issued, int) or issued < 0:
                raise ValueError("issued must be a non-negative integer")
            if len(key) < 16:
                raise ValueError("its key is too short")
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{where} is not a valid retia credential: {exc}") from None
        return cls(role, name, issued, key.encode(), address, server_key)

    @classmethod
    def load(cls, path: Path | str) -> Credential:
        """Read a credential file, refusing one that group or others can read."""
        path = Path(path).expanduser()
        data = read_secret(
            path,
            "credential file",
            "issue one on the head node with 'retia credential issue --role ROLE --name NAME --out FILE'",
            "whoever reads it can act as its holder",
        )
        return cls.from_json(data.decode(errors="replace"), str(path))


def issue(
    cluster_key: bytes, role: Role, name: str, *, address: str = "", server_key: str = ""
) -> Credential:
    """A new credential for ``name`` in ``role`` (the head node's job: it holds the cluster key)."""
    from .protocol import id_problem

    if problem := id_problem(name, "a credential name"):
        raise ConfigError(problem)
    issued = time.time_ns()
    return Credential(role, name, issued, derive_key(cluster_key, role, name, issued), address, server_key)


def cluster_credential(cluster_key: bytes, *, address: str = "", server_key: str = "") -> Credential:
    """The cluster key as a credential: admin, any role (for the head node and local clusters)."""
    return Credential(Role.ADMIN, "", 0, cluster_key, address, server_key)


def resolve_credential(
    credential: Credential | Path | str | None = None,
    key: bytes | str | None = None,
    key_file: Path | str | None = None,
) -> Credential:
    """A peer's credential: the one given (or its file), else ``$RETIA_CREDENTIAL``'s file, else the
    cluster key (``key``, ``key_file``, ``$RETIA_KEY`` or the default key file) as the admin's."""
    from .keys import resolve_key

    if isinstance(credential, Credential):
        return credential
    if credential is not None:
        return Credential.load(credential)
    if key is None and key_file is None and os.environ.get(CREDENTIAL_ENV):
        return Credential.load(os.environ[CREDENTIAL_ENV])
    return cluster_credential(resolve_key(key, key_file))
