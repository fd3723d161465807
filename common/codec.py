"""Dataclasses to msgpack arrays and back, every field checked on the way in.

A message body is a frozen dataclass; on the wire it is the array of its fields in
declaration order (nested dataclasses as nested arrays, enums as their values). Decoding is
the boundary where a peer's bytes become our objects, so it checks each field against its
annotation (type, and the range an ``Annotated[int, Bounds(...)]`` gives) and raises a
:class:`~retia.errors.ProtocolError` naming the first field that does not fit. Encoders and
decoders are built once per class from its type hints.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union

import msgpack

from .errors import ProtocolError

__all__ = ["Bounds", "NonNegative", "Json", "pack", "unpack", "encode", "decode", "MAX_SEQ"]

T = TypeVar("T")
MAX_SEQ = (1 << 63) - 1


@dataclass(frozen=True)
class Bounds:
    """The range an ``int`` or ``float`` field accepts (inclusive); ``None``: unbounded on that side."""

    low: float | None = None
    high: float | None = None


NonNegative = Annotated[int, Bounds(0, MAX_SEQ)]


class _JsonMarker:
    """Marks a field that holds any JSON-able value (an architecture dict): checked for kind only."""


Json = Annotated[Any, _JsonMarker()]

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any, str], Any]


def pack(body: Any) -> bytes:
    """A dataclass (or None) as msgpack bytes."""
    data: bytes = msgpack.packb(encode(body), use_bin_type=True)
    return data


def unpack(cls: type[T], payload: bytes) -> T:
    """msgpack bytes as a ``cls``, every field checked."""
    try:
        values = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"undecodable {cls.__name__}: {type(exc).__name__}: {exc}") from exc
    return decode(cls, values)


def encode(body: Any) -> Any:
    """A dataclass as the nested lists msgpack packs."""
    if body is None:
        return []
    return _encoder(type(body))(body)


def decode(cls: type[T], values: Any) -> T:
    """Nested lists from msgpack as a ``cls``; raises ProtocolError naming the field that does not fit."""
    result: T = _decoder(cls)(values, cls.__name__)
    return result


# ---- encoders ----


_ENCODERS: dict[type, _Encoder] = {}
_DECODERS: dict[type, _Decoder] = {}


def _encoder(cls: type) -> _Encoder:
    found = _ENCODERS.get(cls)
    if found is None:
        found = _ENCODERS[cls] = _build_encoder(cls)
    return found


def _decoder(cls: type) -> _Decoder:
    found = _DECODERS.get(cls)
    if found is None:
        found = _DECODERS[cls] = _build_decoder(cls)
    return found


def _build_encoder(cls: type) -> _Encoder:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = [f.name for f in dataclasses.fields(cls)]
    converters = [(i, _value_encoder(hints[name])) for i, name in enumerate(fields)]
    plain = [i for i, conv in converters if conv is None]
    if len(plain) == len(fields):
        getter = _attrgetter(fields)
        return lambda obj: list(getter(obj))
    getter = _attrgetter(fields)
    special = [(i, conv) for i, conv in converters if conv is not None]

    def encode_obj(obj: Any) -> Any:
        values = list(getter(obj))
        for i, conv in special:
            if values[i] is not None:
                values[i] = conv(values[i])
        return values

    return encode_obj


def _attrgetter(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    import operator

    if len(names) == 1:
        single = operator.attrgetter(names[0])
        return lambda obj: (single(obj),)
    if not names:
        return lambda obj: ()
    getter: Callable[[Any], tuple[Any, ...]] = operator.attrgetter(*names)
    return getter


def _value_encoder(tp: Any) -> _Encoder | None:
    """How a value of annotation ``tp`` becomes msgpack-able; None when it already is."""
    tp, _meta = _strip(tp)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        encoders = [_value_encoder(a) for a in options]
        if all(e is None for e in encoders):
            return None
        return _encode_any
    if origin is list:
        (item,) = typing.get_args(tp)
        each = _value_encoder(item)
        if each is None:
            return None
        return lambda values: [each(v) for v in values]
    if origin is dict:
        _key, value_type = typing.get_args(tp)
        each_value = _value_encoder(value_type)
        if each_value is None:
            return None
        return lambda mapping: {k: each_value(v) for k, v in mapping.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _encoder(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return lambda value: value.value
    return None


def _encode_any(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encoder(type(value))(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


# ---- decoders ----


def _build_decoder(cls: type) -> _Decoder:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    decoders = [(f.name, _value_decoder(hints[f.name])) for f in fields]
    required = sum(
        1 for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    total = len(fields)
    check = getattr(cls, "check", None)

    def decode_obj(values: Any, path: str) -> Any:
        if not isinstance(values, list):
            raise ProtocolError(f"{path}: expected an array of {cls.__name__} fields, got {_kind(values)}")
        if not required <= len(values) <= total:
            raise ProtocolError(f"{path}: {cls.__name__} has {required} to {total} fields, got {len(values)}")
        kwargs = {name: dec(value, f"{path}.{name}") for (name, dec), value in zip(decoders, values)}
        obj = cls(**kwargs)
        if check is not None:
            problem = check(obj)
            if problem:
                raise ProtocolError(f"{path}: {problem}")
        return obj

    return decode_obj


def _value_decoder(tp: Any) -> _Decoder:
    tp, meta = _strip(tp)
    bounds = next((m for m in meta if isinstance(m, Bounds)), None)
    if any(isinstance(m, _JsonMarker) for m in meta) or tp is Any:
        return _decode_json
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return _union_decoder(tp)
    if origin is list:
        (item,) = typing.get_args(tp)
        inner = _value_decoder(item)

        def decode_list(value: Any, path: str) -> list[Any]:
            if not isinstance(value, list):
                raise ProtocolError(f"{path}: expected a list, got {_kind(value)}")
            return [inner(v, f"{path}[{i}]") for i, v in enumerate(value)]

        return decode_list
    if origin is dict:
        key_type, item = typing.get_args(tp)
        inner_key, inner = _value_decoder(key_type), _value_decoder(item)

        def decode_dict(value: Any, path: str) -> dict[Any, Any]:
            if not isinstance(value, dict):
                raise ProtocolError(f"{path}: expected a map, got {_kind(value)}")
            return {inner_key(k, f"{path} key"): inner(v, f"{path}[{k!r}]") for k, v in value.items()}

        return decode_dict
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _decoder(tp)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_decoder(tp)
    if tp is bool:
        return _exact(bool)
    if tp is int:
        return _int_decoder(bounds)
    if tp is float:
        return _float_decoder(bounds)
    if tp is str:
        return _exact(str)
    if tp is bytes:
        return _exact(bytes)
    if tp is type(None):
        return _exact(type(None))
    raise TypeError(f"no wire decoder for annotation {tp!r}")


def _strip(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tuple(tp.__metadata__)
    return tp, ()


def _exact(cls: type) -> _Decoder:
    name = {str: "a string", bytes: "bytes", bool: "a boolean", type(None): "nil"}.get(cls, cls.__name__)

    def decode_exact(value: Any, path: str) -> Any:
        if type(value) is not cls:
            raise ProtocolError(f"{path}: expected {name}, got {_kind(value)}")
        return value

    return decode_exact


def _int_decoder(bounds: Bounds | None) -> _Decoder:
    low = bounds.low if bounds else None
    high = bounds.high if bounds else None

    def decode_int(value: Any, path: str) -> int:
        if type(value) is not int:
            raise ProtocolError(f"{path}: expected an integer, got {_kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise ProtocolError(f"{path}: {value} is out of range [{_fmt(low)}, {_fmt(high)}]")
        return value

    return decode_int


def _float_decoder(bounds: Bounds | None) -> _Decoder:
    low = bounds.low if bounds else None
    high = bounds.high if bounds else None

    def decode_float(value: Any, path: str) -> float:
        if type(value) not in (float, int):
            raise ProtocolError(f"{path}: expected a number, got {_kind(value)}")
        number = float(value)
        if bounds is not None and not math.isfinite(number):
            raise ProtocolError(f"{path}: expected a finite number, got {number}")
        if (low is not None and number < low) or (high is not None and number > high):
            raise ProtocolError(f"{path}: {number} is out of range [{_fmt(low)}, {_fmt(high)}]")
        return number

    return decode_float


def _enum_decoder(cls: type[enum.Enum]) -> _Decoder:
    members = {m.value: m for m in cls}

    def decode_enum(value: Any, path: str) -> enum.Enum:
        try:
            return members[value]
        except (KeyError, TypeError):
            raise ProtocolError(f"{path}: {value!r} is not a {cls.__name__}") from None

    return decode_enum


def _union_decoder(tp: Any) -> _Decoder:
    options = typing.get_args(tp)
    optional = type(None) in options
    rest = [a for a in options if a is not type(None)]
    if len(rest) == 1:
        inner = _value_decoder(rest[0])

        def decode_optional(value: Any, path: str) -> Any:
            return None if value is None and optional else inner(value, path)

        return decode_optional
    decoders = [_value_decoder(a) for a in rest]

    def decode_union(value: Any, path: str) -> Any:
        if value is None and optional:
            return None
        for dec in decoders:
            try:
                return dec(value, path)
            except ProtocolError:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in rest)
        raise ProtocolError(f"{path}: expected {names}, got {_kind(value)}")

    return decode_union


def _decode_json(value: Any, path: str) -> Any:
    """Any msgpack value without binary data (an architecture dict, say)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif item is not None and type(item) not in (str, int, float, bool):
            raise ProtocolError(f"{path}: expected JSON-able data, found {_kind(item)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _fmt(bound: float | None) -> str:
    return "" if bound is None else f"{bound:g}"
