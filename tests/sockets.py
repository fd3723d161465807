"""Raw sockets and processes for tests that speak to a dispatcher or an agent by hand."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator

import zmq


@contextlib.contextmanager
def dealer(address: str, identity: bytes, *, linger_ms: int = 0) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER on its own context, connected as ``identity``, closed even when the test fails
    (``linger_ms``: how long what was sent may still take to go out on close)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(address)
    try:
        yield sock
    finally:
        ctx.destroy()


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is not gone within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
