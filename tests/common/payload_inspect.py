"""Look inside ``retia.dump`` bytes without loading them: which parts are references,
recipes or pickles (the extension codes of the retia-dump/1 msgpack format)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import msgpack

TUPLE, REF, RECIPE, PICKLE, TRACED, DICT = 1, 2, 3, 4, 5, 6


@dataclass
class Ext:
    code: int
    inner: Any
    size: int  # bytes of the packed inner value


def _hook(code: int, data: bytes) -> Ext:
    if code == PICKLE:
        return Ext(code, msgpack.unpackb(data), len(data))  # the pickle bytes, not unpickled
    return Ext(code, msgpack.unpackb(data, ext_hook=_hook, raw=False, strict_map_key=False), len(data))


def parse(data: bytes) -> Any:
    """The payload as a tree of plain values and :class:`Ext` nodes; asserts the format tag."""
    fmt, tree = msgpack.unpackb(data, ext_hook=_hook, raw=False, strict_map_key=False)
    assert fmt == "retia-dump/1"
    return tree


def walk(node: Any) -> Iterator[Ext]:
    if isinstance(node, Ext):
        yield node
        if node.code != PICKLE:
            yield from walk(node.inner)
    elif isinstance(node, (list, tuple)):
        for item in node:
            yield from walk(item)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk(key)
            yield from walk(value)


def codes(data: bytes) -> list[int]:
    return [ext.code for ext in walk(parse(data))]


def refs(data: bytes) -> list[str]:
    return [ext.inner for ext in walk(parse(data)) if ext.code == REF]


def pickles(data: bytes) -> list[bytes]:
    return [ext.inner for ext in walk(parse(data)) if ext.code == PICKLE]
