"""One connection's session: how its messages are signed and checked, and the handshake that keys it.

::

    peer --HELLO(role, credential, nonce_p)-->  dispatcher   signed with the credential's key
    peer <--WELCOME(nonce_d)----------------    dispatcher   signed with a key only they can derive
    then every message, both ways:                           signed with the session's key for
                                                             its direction, counted

The session key is derived from the credential's key and both nonces, so nothing signed in one
session verifies in another (a dispatcher restart included) and nothing needs remembering
between sessions. Within a session each direction numbers its messages; one whose number is
not above the last accepted is a replay and is refused. The signature (HMAC-SHA256 over header
and payload, as jupyter_client's Session) is checked before a byte is decoded; HELLO alone is
read first, within a small size, because it names the credential whose key checks it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, replace
from typing import Any

import msgpack

from . import codec
from .credentials import Credential
from .errors import AuthenticationError, MessageTooLarge, ProtocolError
from .protocol import (
    BODY_TYPES,
    DEFAULT_MAX_MESSAGE_BYTES,
    VERSION,
    Header,
    Hello,
    Message,
    MsgType,
    Refused,
    Reset,
    Welcome,
)

__all__ = [
    "Session",
    "Greeting",
    "read_hello",
    "peek_header",
    "accept",
    "welcome_frames",
    "Opening",
    "reset_frames",
    "read_reset",
    "NONCE_BYTES",
    "MAX_HELLO_BYTES",
]

NONCE_BYTES = 32
MAX_HELLO_BYTES = 64 << 10  # a HELLO is read before its signature is checked: only this much
# a message over the limit, up to this many times it, has its signature checked and is decoded to be
# refused by name; a larger one is refused unread (checking it would cost a junk sender nothing)
_DECODED_WHEN_TOO_LARGE = 2
_SESSION = b"retia-session/1"
_WELCOME = b"retia-welcome/1"
_UP, _DOWN = b"peer->dispatcher", b"dispatcher->peer"
_MAX_HEADER_BYTES = 2048


def _mac(key: bytes, *parts: bytes) -> bytes:
    return hmac.new(key, b"\0".join(parts), hashlib.sha256).digest()


class Session:
    """Signs, frames, checks and decodes one connection's messages; each direction has its own key."""

    def __init__(
        self,
        key: bytes,
        sender: str,
        *,
        receive_key: bytes | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        if not key:
            raise AuthenticationError("a key is required: signing cannot be turned off")
        self.sender = sender
        self.max_message_bytes = max_message_bytes
        self._send_mac = hmac.new(key, digestmod=hashlib.sha256)
        self._receive_mac = hmac.new(receive_key or key, digestmod=hashlib.sha256)
        self.sent = 0  # the number of the last message signed
        self.received = 0  # the number of the last message accepted

    def sign(self, header: bytes, payload: bytes) -> bytes:
        mac = self._send_mac.copy()
        mac.update(header)
        mac.update(payload)
        return mac.digest()

    def _expected(self, header: bytes, payload: bytes) -> bytes:
        mac = self._receive_mac.copy()
        mac.update(header)
        mac.update(payload)
        return mac.digest()

    def frames(
        self, type: MsgType, body: Any = None, *, trial: str = "", attempt: int = 0, seq: int = 0
    ) -> list[bytes]:
        """Serialize, number and sign one message."""
        payload = codec.pack(body)
        self.sent += 1
        header = msgpack.packb(
            [int(type), trial, attempt, seq, self.sender, time.time(), self.sent], use_bin_type=True
        )
        return [VERSION, self.sign(header, payload), header, payload]

    def parse(self, frames: list[bytes]) -> Message:
        """Check and decode; raises ProtocolError or AuthenticationError without decoding bad input."""
        header, payload = _split(frames)
        size = len(header) + len(payload)
        too_large = size > self.max_message_bytes
        if too_large and size > self.max_message_bytes * _DECODED_WHEN_TOO_LARGE:
            raise MessageTooLarge(f"message of {size} bytes exceeds the {self.max_message_bytes}-byte limit")
        if not hmac.compare_digest(self._expected(header, payload), frames[1]):
            raise AuthenticationError("bad signature: not signed by this session (wrong key, or tampered)")
        head = _header(header)
        if head.counter <= self.received:
            raise AuthenticationError(
                f"replayed message: number {head.counter} of this session came after {self.received}"
            )
        self.received = head.counter
        message = _body(head, payload)
        if too_large:  # signed in this session: decoded only so the receiver can refuse what it carried
            raise MessageTooLarge(
                f"{head.type.name} of {size} bytes from {head.sender[:64]!r} exceeds the "
                f"{self.max_message_bytes}-byte limit",
                message,
            )
        return message


@dataclass(frozen=True)
class Greeting:
    """A HELLO, read but not yet verified: it names the credential whose key must have signed it."""

    header: Header
    hello: Hello
    signature: bytes
    signed: bytes  # header and payload, as they were signed

    def verify(self, key: bytes) -> bool:
        return hmac.compare_digest(hmac.new(key, self.signed, hashlib.sha256).digest(), self.signature)


def peek_header(frames: list[bytes]) -> Header:
    """The header of a message not checked yet (ProtocolError if it is no retia message): what a
    HELLO says, or the time an unknown peer's message was sent, for the RESET that answers it."""
    header, _payload = _split(frames)
    if len(header) > _MAX_HEADER_BYTES:
        raise ProtocolError(f"a header of {len(header)} bytes")
    return _header(header)


def read_hello(frames: list[bytes]) -> Greeting:
    """A HELLO's header and body, decoded within MAX_HELLO_BYTES (ProtocolError if it is none)."""
    head = peek_header(frames)
    if head.type is not MsgType.HELLO:
        raise ProtocolError(f"{head.type.name} from a peer without a session: say HELLO first")
    header, payload = frames[2], frames[3]
    if len(header) + len(payload) > MAX_HELLO_BYTES:
        raise MessageTooLarge(f"a HELLO of {len(header) + len(payload)} bytes (at most {MAX_HELLO_BYTES})")
    hello: Hello = _body(head, payload).body
    return Greeting(head, hello, bytes(frames[1]), bytes(header) + bytes(payload))


def accept(
    greeting: Greeting, key: bytes, sender: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
) -> tuple[Session, bytes]:
    """The dispatcher's side of a verified HELLO: its new session, and its nonce for the WELCOME."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    root = _mac(key, _SESSION, greeting.hello.nonce, nonce)
    session = Session(
        _mac(root, _DOWN),
        sender,
        receive_key=_mac(root, _UP),
        max_message_bytes=max_message_bytes,
    )
    return session, nonce


def welcome_frames(greeting: Greeting, key: bytes, sender: str, welcome: Welcome | Refused) -> list[bytes]:
    """The WELCOME (or REFUSED) answering ``greeting``, signed with a key derived from the credential's
    and the HELLO's nonce: only the holder of the credential can check it, and it answers that HELLO
    only."""
    kind = MsgType.WELCOME if isinstance(welcome, Welcome) else MsgType.REFUSED
    return Session(_mac(key, _WELCOME, greeting.hello.nonce), sender).frames(kind, welcome)


def reset_frames(sent: float) -> list[bytes]:
    """A RESET ("say HELLO"), unsigned: it goes to a route with no session (the dispatcher restarted,
    or gave the peer up), whose key it does not know. All it can make a peer do is say HELLO."""
    header = msgpack.packb([int(MsgType.RESET), "", 0, 0, "", time.time(), 0], use_bin_type=True)
    return [VERSION, b"", header, codec.pack(Reset(sent))]


def read_reset(frames: list[bytes]) -> Reset | None:
    """The RESET these frames are, if they are one (unsigned, small); else None."""
    if len(frames) != 4 or frames[1] or len(frames[2]) + len(frames[3]) > 1024:
        return None
    try:
        head = peek_header(frames)
        if head.type is not MsgType.RESET:
            return None
        reset: Reset = _body(head, frames[3]).body
    except ProtocolError:
        return None
    return reset


class Opening:
    """A peer's side of the handshake: its HELLO, then the session its WELCOME keys."""

    def __init__(
        self, credential: Credential, sender: str, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    ) -> None:
        self.credential = credential
        self.sender = sender
        self.max_message_bytes = max_message_bytes
        self.nonce = secrets.token_bytes(NONCE_BYTES)
        self.sent_at = 0.0  # time.time() of the HELLO, as its header says

    def hello_frames(self, hello: Hello) -> list[bytes]:
        """``hello`` naming this credential and carrying this opening's nonce, signed with its key."""
        cred = self.credential
        body = replace(hello, credential=cred.name, issued=cred.issued, nonce=self.nonce)
        frames = Session(cred.key, self.sender).frames(MsgType.HELLO, body)
        self.sent_at = _header(frames[2]).time
        return frames

    def answer(self, frames: list[bytes]) -> Message:
        """The dispatcher's answer to our HELLO (WELCOME or REFUSED); AuthenticationError if these
        frames are not it."""
        checker = Session(b"-", self.sender, receive_key=_mac(self.credential.key, _WELCOME, self.nonce))
        message = checker.parse(frames)
        if message.type not in (MsgType.WELCOME, MsgType.REFUSED):
            raise ProtocolError(f"expected WELCOME, got {message.type.name}")
        return message

    def session(self, welcome: Welcome) -> Session:
        """The session the WELCOME opens."""
        root = _mac(self.credential.key, _SESSION, self.nonce, welcome.nonce)
        session = Session(
            _mac(root, _UP),
            self.sender,
            receive_key=_mac(root, _DOWN),
            max_message_bytes=self.max_message_bytes,
        )
        return session


def _split(frames: list[bytes]) -> tuple[bytes, bytes]:
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}")
    if frames[0] != VERSION:
        raise ProtocolError(f"protocol version {bytes(frames[0][:16])!r}, expected {VERSION!r}")
    return frames[2], frames[3]


def _header(header: bytes) -> Header:
    try:
        return codec.unpack(Header, header)
    except ProtocolError as exc:
        raise ProtocolError(f"undecodable message: {exc}") from None


def _body(head: Header, payload: bytes) -> Message:
    try:
        return Message(head, codec.unpack(BODY_TYPES[head.type], payload))
    except ProtocolError as exc:  # say what it was and who sent it: the routing id alone may not
        raise ProtocolError(f"undecodable {head.type.name} from {head.sender[:64]!r}: {exc}") from None
