"""Raw sockets and processes for tests that speak to a dispatcher or an agent by hand."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Iterator

import zmq

from retia.credentials import Credential
from retia.errors import AuthenticationError, CredentialRefusedError, RetiaError
from retia.protocol import Hello, MsgType, Welcome
from retia.session import Opening, Session, accept, read_hello, welcome_frames


@contextlib.contextmanager
def dealer(address: str, identity: bytes | None = None, *, linger_ms: int = 0) -> Iterator[zmq.Socket[bytes]]:
    """A DEALER on its own context, connected (as ``identity``, if given: the dispatcher refuses a
    HELLO from a routing id a peer chose), closed even when the test fails (``linger_ms``: how long
    what was sent may still take to go out on close)."""
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if identity is not None:
        sock.setsockopt(zmq.IDENTITY, identity)
    sock.connect(address)
    try:
        yield sock
    finally:
        ctx.destroy()


def open_session(
    sock: zmq.Socket[bytes], credential: Credential, hello: Hello, *, timeout: float = 5.0
) -> Session:
    """Say ``hello`` as ``credential`` and wait for its WELCOME: the session the next messages are
    signed in (CredentialRefusedError on REFUSED, AuthenticationError without an answer). What comes
    before the answer is dropped. Nothing is sent in the session: its first message proves it."""
    opening = Opening(credential, hello.peer_id)
    sock.send_multipart(opening.hello_frames(hello))
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and sock.poll(int(left * 1000)):
        frames = sock.recv_multipart()
        try:
            answer = opening.answer(frames)
        except RetiaError:
            continue
        if answer.type is MsgType.REFUSED:
            raise CredentialRefusedError(answer.body.reason)
        return opening.session(answer.body)
    raise AuthenticationError(f"no WELCOME for {hello.peer_id} within {timeout}s")


def accept_session(
    router: zmq.Socket[bytes],
    key: bytes,
    *,
    welcome: Welcome | None = None,
    timeout: float = 10.0,
) -> tuple[bytes, Hello, Session]:
    """Play the dispatcher's part of the handshake on ``router``: the next HELLO signed with ``key``
    (the cluster key, or a credential's derived key) is answered with ``welcome`` (its nonce filled
    in). Returns the peer's routing id, its HELLO and the session for what follows; what comes before
    the HELLO is dropped."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0 and router.poll(int(left * 1000)):
        identity, *frames = router.recv_multipart()
        try:
            greeting = read_hello(frames)
        except RetiaError:
            continue
        if not greeting.verify(key):
            continue
        session, nonce = accept(greeting, key, "test-dispatcher")
        body = dataclasses.replace(welcome or Welcome(1.0, 5, "test-dispatcher"), nonce=nonce)
        router.send_multipart([identity, *welcome_frames(greeting, key, "test-dispatcher", body)])
        return identity, greeting.hello, session
    raise AuthenticationError(f"no HELLO signed with the given key within {timeout}s")


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if it is not gone within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
