"""Hypothesis strategies for signed messages whose bodies are wrong: every field of every body class
drawn from its own valid value or from values of the wrong type, the wrong range, huge or empty.

Bodies are built as the msgpack arrays the codec decodes (so a wrong shape reaches the decoder too),
packed and signed with ``Session.sign``; the header's fields are fuzzed the same way. A well-formed
header takes its session's next number (else the receiver refuses it as a replay before a byte
of the body is decoded); an odd one is sent as drawn, its number fuzzed with the rest, and
:func:`burned` says when it left the receiver counting past the session's next number.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
import types
import typing
from typing import Any

import msgpack
from hypothesis import strategies as st

from retia import codec
from retia.errors import ProtocolError
from retia.protocol import BODY_TYPES, VERSION, Header, MsgType
from retia.session import Session

__all__ = ["EXAMPLES", "NASTY", "Head", "body", "burned", "header", "signed", "unsigned"]

# examples per message type; the bar is 10,000 (RETIA_FUZZ_EXAMPLES=10000), too slow for 2 cores
EXAMPLES = int(os.environ.get("RETIA_FUZZ_EXAMPLES", "150"))

_DEEP: list[Any] = []
for _ in range(40):
    _DEEP = [_DEEP]

NASTY: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1 << 31,
    (1 << 63) - 1,
    -(1 << 63),
    (1 << 64) - 1,
    0.5,
    -1e308,
    1e308,
    float("nan"),
    float("inf"),
    float("-inf"),
    "",
    "\x00",
    "../../../../tmp/escaped",
    "/etc/passwd",
    "a" * 64,
    "f" * 64,
    "é\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
    "x" * 200_000,
    b"",
    b"\xff\xfe",
    b"\x00" * 300_000,
    [],
    [[]],
    [None, None, None],
    list(range(64)),
    {},
    {"a": 1},
    {1: [2]},
    {"default": float("nan")},
    _DEEP,
    msgpack.ExtType(1, b"ext"),
]


_TYPED: dict[Any, list[Any]] = {  # of the right type, at the edges of what makes sense
    bool: [True, False],
    int: [1, 0, 8 << 20, 2, -1, 1 << 40, (1 << 63) - 1],
    float: [1.0, 0.0, 2.5, -1.0, 1e308, float("nan"), float("inf")],
    str: ["t", "u", "", "f" * 64, "../../etc/x", "a\x00b", "x" * 100_000],
    bytes: [b"x", b"", b"\xcb?\xf0\x00\x00\x00\x00\x00\x00", b"\x80", b"\x00" * 200_000],
}
_JSON = [None, 1, "s", {"a": [1, 2.5]}, [None]]


def _typed(hint: Any, depth: int) -> st.SearchStrategy[Any]:
    """A value of ``hint`` as the codec puts it on the wire, drawn from edge values of that type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Annotated:
        return _typed(args[0], depth) if args[0] is not Any else st.sampled_from(_JSON)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(st.none() if a is type(None) else _typed(a, depth) for a in args))
    if origin is list:
        return st.lists(_typed(args[0], depth + 1), max_size=3 if depth < 2 else 0)
    if origin is dict:
        return st.sampled_from([{}, {"QUEUED": 1}, {"": -1}])
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return st.sampled_from([m.value for m in hint])
    if dataclasses.is_dataclass(hint):
        return _fields(hint, depth)
    if hint is Any:
        return st.sampled_from(_JSON)
    return _plain(hint)


def _plain(hint: Any) -> st.SearchStrategy[Any]:
    """Half the time an ordinary value of the type, else one of its edge values."""
    return st.one_of(st.sampled_from(_TYPED[hint][:3]), st.sampled_from(_TYPED[hint]))


def _hints(cls: Any) -> list[Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return [hints[f.name] for f in dataclasses.fields(cls)]


def _fields(cls: Any, depth: int) -> st.SearchStrategy[list[Any]]:
    hints = _hints(cls)
    return st.tuples(*(_typed(h, depth) for h in hints)).map(list) if hints else st.just([])


def _one_wrong(values: list[Any], index: int, value: Any) -> list[Any]:
    if values:
        values = list(values)
        values[index % len(values)] = value
    return values


def _array(cls: Any, depth: int = 0) -> st.SearchStrategy[Any]:
    """The body of ``cls``: well typed (edge values), one field of a wrong type, or the wrong shape."""
    fields = _fields(cls, depth)
    one_wrong = st.builds(_one_wrong, fields, st.integers(0, 15), st.sampled_from(NASTY))
    return _mostly(
        [fields] * 4 + [one_wrong] * 3,
        [
            fields.map(lambda values: values[: max(0, len(values) - 1)]),  # a field short
            fields.map(lambda values: [*values, "extra"]),  # a field too many
            st.sampled_from(NASTY),  # not an array at all
        ],
    )


def _mostly(
    usual: list[st.SearchStrategy[Any]], rare: list[st.SearchStrategy[Any]]
) -> st.SearchStrategy[Any]:
    """One of ``usual`` about 7 times in 8, else one of ``rare`` (``one_of`` alone favours its first branches
    and would send mostly what the decoder refuses at the first field)."""
    return st.sampled_from([*usual, *usual, st.one_of(*rare)]).flatmap(lambda chosen: chosen)


def body(kind: MsgType) -> st.SearchStrategy[bytes]:
    """The payload of a message of ``kind``: its body class's array, fuzzed, as msgpack."""
    return _array(BODY_TYPES[kind]).map(_pack)


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


_HEADER_FIELD = st.sampled_from(NASTY)


@dataclasses.dataclass(frozen=True)
class Head:
    """A fuzzed header's fields; ``numbered``: well formed, it takes the session's next number when
    signed (an odd one is sent as drawn, its number among the fuzzed fields)."""

    fields: tuple[Any, ...]
    numbered: bool


def header(kind: MsgType, sender: str) -> st.SearchStrategy[Head]:
    """A header of ``kind``: mostly well formed (trial, attempt, seq fuzzed), sometimes not at all."""
    good = st.tuples(
        _mostly([_plain(str)] * 4, [st.sampled_from(NASTY)]),
        _mostly([_plain(int)] * 4, [st.sampled_from(NASTY)]),
        _mostly([_plain(int)] * 4, [st.sampled_from(NASTY)]),
    ).map(lambda t: Head((int(kind), t[0], t[1], t[2], sender, time.time()), True))
    odd = st.lists(_HEADER_FIELD, max_size=8).map(lambda values: Head((int(kind), *values), False))
    return _mostly([good] * 4, [odd])


def _packed_header(session: Session, head: Head) -> bytes:
    if not head.numbered:
        return _pack(list(head.fields))
    session.sent += 1
    return _pack([*head.fields, session.sent])


def signed(session: Session, head: Head, payload: bytes) -> list[bytes]:
    """The four frames of a message with this header and payload, validly signed in ``session``."""
    packed = _packed_header(session, head)
    return [VERSION, session.sign(packed, payload), packed, payload]


def unsigned(head: Head, payload: bytes, signature: bytes = b"") -> list[bytes]:
    """The four frames of a message no session signed (``signature``: what stands in its place)."""
    return [VERSION, signature, _pack([*head.fields, 0] if head.numbered else list(head.fields)), payload]


def burned(session: Session, frames: list[bytes]) -> bool:
    """These frames, once accepted, leave the receiver counting past the number ``session`` signs
    next (an odd header's fuzzed number): later messages would be refused as replays, so the
    session must be opened again."""
    try:
        counter = codec.unpack(Header, frames[2]).counter
    except ProtocolError:
        return False
    return counter > session.sent
