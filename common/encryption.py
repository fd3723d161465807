"""Transport encryption with CurveZMQ: the dispatcher holds a keypair, peers pin its public key.

Signing (each session's HMAC keys) stays on either way; Curve adds confidentiality on the wire
and lets only peers that hold the dispatcher's public key complete a handshake. It is on by
default for any endpoint that other machines can reach (:func:`reachable_from_afar`); the public
key travels inside each credential file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
import zmq.auth

from .errors import ConfigError

__all__ = ["server_certificate", "secure_server", "secure_client", "public_key", "reachable_from_afar"]

_LOCAL_HOSTS = ("127.", "localhost", "[::1]", "::1")


def reachable_from_afar(endpoint: str) -> bool:
    """Whether other machines can reach this endpoint: any tcp:// one but loopback (ipc:// and
    inproc:// stay on this machine)."""
    scheme, _, rest = endpoint.partition("://")
    if scheme != "tcp":
        return False
    host = rest.rsplit(":", 1)[0]
    return not host.startswith(_LOCAL_HOSTS)


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


def public_key(public_file: Path) -> str:
    """The Z85 public key in a certificate file (what a credential carries)."""
    public, _ = zmq.auth.load_certificate(str(public_file))
    return public.decode()


def secure_client(sock: zmq.Socket[Any], server_public: bytes | str | Path) -> None:
    """Encrypt this socket to the dispatcher whose public key is ``server_public``: the Z85 key itself
    (bytes, as a credential carries it), or its certificate file."""
    if isinstance(server_public, bytes):
        if len(server_public) != 40:
            raise ConfigError("the dispatcher's public key must be 40 Z85 characters")
    else:
        path = server_public
        try:
            server_public, _ = zmq.auth.load_certificate(str(path))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the dispatcher's public certificate {path}: {exc}") from exc
    public, secret = zmq.curve_keypair()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_public
