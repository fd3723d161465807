"""Optional transport encryption with CurveZMQ: the dispatcher holds a keypair, peers pin its public key.

Signing (HMAC with the cluster key) stays on either way; Curve adds confidentiality on the
wire and lets only peers that hold the dispatcher's public certificate complete a handshake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from .errors import ConfigError

__all__ = ["server_certificate", "secure_server", "secure_client"]


def server_certificate(home: Path) -> tuple[Path, Path]:
    """``(public, secret)`` certificate files under ``<home>/curve``, created on first use."""
    if not zmq.has("curve"):
        raise ConfigError(
            "this pyzmq/libzmq has no CurveZMQ support; install a pyzmq wheel built with libsodium"
        )
    directory = home / "curve"
    public, secret = directory / "dispatcher.key", directory / "dispatcher.key_secret"
    if not secret.exists():
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        zmq.auth.create_certificates(str(directory), "dispatcher")
        secret.chmod(0o600)
    return public, secret


def secure_server(sock: zmq.Socket[Any], secret_file: Path) -> None:
    public, secret = zmq.auth.load_certificate(str(secret_file))
    if secret is None:
        raise ConfigError(f"{secret_file} holds no secret key")
    sock.curve_secretkey = secret
    sock.curve_publickey = public
    sock.curve_server = True


def secure_client(sock: zmq.Socket[Any], server_public_file: str | Path) -> None:
    """Encrypt this socket to the dispatcher whose public certificate is ``server_public_file``."""
    try:
        server_public, _ = zmq.auth.load_certificate(str(server_public_file))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the dispatcher's public certificate {server_public_file}: {exc}"
        ) from exc
    public, secret = zmq.curve_keypair()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public
