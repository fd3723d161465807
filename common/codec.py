"""Dataclasses to msgpack arrays and back, every field checked on the way in.

A message body is a dataclass; on the wire it is the array of its fields in declaration
order (nested dataclasses as nested arrays, enums as their values). Decoding is the boundary
where a peer's bytes become our objects, so it checks each field against its annotation (type,
the range an ``Annotated[int, Bounds(...)]`` gives, a class's own ``check()``) and raises a
:class:`~retia.errors.ProtocolError` naming the first field that does not fit. Encoders and
decoders are built once per class from its type hints; each class also gets a decoder with
the checks written out, for the messages that fit (reports arrive by the ten thousand).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import operator
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, Union

import msgpack

from .errors import ProtocolError

__all__ = ["Bounds", "NonNegative", "Json", "pack", "unpack", "encode", "decode", "check_json", "MAX_SEQ"]

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
_Decoder = Callable[[Any], Any]


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
    try:
        result: T = _decoder(cls)(values)
    except _Misfit as exc:
        raise ProtocolError(f"{cls.__name__}{''.join(exc.where)}: {exc.reason}") from None
    return result


def check_json(value: Any) -> None:
    """ProtocolError unless ``value`` is JSON-able data, as a ``Json`` field must be."""
    try:
        _decode_json(value)
    except _Misfit as exc:
        raise ProtocolError(exc.reason) from None


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
#
# A decoder takes the msgpack value and returns the field's value, or raises _Misfit with the
# reason; the path to the field (".items[3].final") is put together only when one fails, on the
# way out, so a message that fits costs no string formatting.


class _Misfit(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.where: list[str] = []


def _locate(exc: _Misfit, step: str) -> _Misfit:
    exc.where.insert(0, step)
    return exc


def _build_decoder(cls: type) -> _Decoder:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    decoders = [_value_decoder(hints[f.name]) for f in fields]
    required = sum(
        1 for f in fields if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    total = len(fields)
    check = getattr(cls, "check", None)
    name = cls.__name__

    def decode_obj(values: Any) -> Any:
        if type(values) is not list:
            raise _Misfit(f"expected an array of {name} fields, got {_kind(values)}")
        if not required <= len(values) <= total:
            raise _Misfit(f"{name} has {required} to {total} fields, got {len(values)}")
        try:
            obj = cls(*[dec(value) for dec, value in zip(decoders, values)])
        except _Misfit as exc:
            for field_name, dec, value in zip(names, decoders, values):
                try:
                    dec(value)
                except _Misfit:
                    raise _locate(exc, f".{field_name}") from None
            raise
        if check is not None:
            problem = check(obj)
            if problem:
                raise _Misfit(problem)
        return obj

    return _fast_decoder(cls, names, [hints[n] for n in names], decoders, decode_obj) or decode_obj


def _fast_decoder(
    cls: type, names: list[str], hints: list[Any], decoders: list[_Decoder], slow: _Decoder
) -> _Decoder | None:
    """The same checks as ``slow``, written out for this class (scalars inline, one call per
    nested field): a message that fits is decoded in a third of the time; one that does not
    goes to ``slow``, which says where. None for a class without fields."""
    if not names:
        return None
    lines = [
        "def decode_fast(values):",
        f"    if type(values) is not list or len(values) != {len(names)}:",
        "        return slow(values)",
        f"    {', '.join(f'v{i}' for i in range(len(names)))}{',' if len(names) == 1 else ''} = values",
        "    try:",
    ]
    env: dict[str, Any] = {"slow": slow, "_Misfit": _Misfit, "cls": cls, "new": object.__new__}
    for i, (hint, dec) in enumerate(zip(hints, decoders)):
        tp, meta = _strip(hint)
        bounds = next((m for m in meta if isinstance(m, Bounds)), None)
        if tp in (str, bytes, bool):
            env[f"T{i}"] = tp
            lines.append(f"        if type(v{i}) is not T{i}: return slow(values)")
        elif tp is int:
            lines.append(f"        if type(v{i}) is not int: return slow(values)")
            if bounds is not None and bounds.low is not None:
                lines.append(f"        if v{i} < {int(bounds.low)}: return slow(values)")
            if bounds is not None and bounds.high is not None:
                lines.append(f"        if v{i} > {int(bounds.high)}: return slow(values)")
        else:
            env[f"d{i}"] = dec
            lines.append(f"        v{i} = d{i}(v{i})")
    lines += ["    except _Misfit:", "        return slow(values)"]
    if hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        lines.append(f"    obj = cls({', '.join(f'v{i}' for i in range(len(names)))})")
    else:  # straight into __dict__: a frozen dataclass's __init__ sets each field the slow way
        pairs = ", ".join(f"{n!r}: v{i}" for i, n in enumerate(names))
        lines += ["    obj = new(cls)", f"    obj.__dict__.update({{{pairs}}})"]
    if getattr(cls, "check", None) is not None:
        lines += ["    if obj.check():", "        return slow(values)"]
    lines.append("    return obj")
    exec("\n".join(lines), env)  # code built from this module's own templates, no outside text
    fast: _Decoder = env["decode_fast"]
    return fast


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
        return _list_decoder(_value_decoder(item))
    if origin is dict:
        key_type, value_type = typing.get_args(tp)
        return _dict_decoder(_value_decoder(key_type), _value_decoder(value_type))
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


def _list_decoder(inner: _Decoder) -> _Decoder:
    def decode_list(value: Any) -> list[Any]:
        if type(value) is not list:
            raise _Misfit(f"expected a list, got {_kind(value)}")
        try:
            return [inner(v) for v in value]
        except _Misfit as exc:
            for i, v in enumerate(value):
                try:
                    inner(v)
                except _Misfit:
                    raise _locate(exc, f"[{i}]") from None
            raise

    return decode_list


def _dict_decoder(inner_key: _Decoder, inner: _Decoder) -> _Decoder:
    def decode_dict(value: Any) -> dict[Any, Any]:
        if type(value) is not dict:
            raise _Misfit(f"expected a map, got {_kind(value)}")
        out = {}
        for k, v in value.items():
            try:
                out[inner_key(k)] = inner(v)
            except _Misfit as exc:
                raise _locate(exc, f"[{k!r}]") from None
        return out

    return decode_dict


def _strip(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tuple(tp.__metadata__)
    return tp, ()


def _exact(cls: type) -> _Decoder:
    name = {str: "a string", bytes: "bytes", bool: "a boolean", type(None): "nil"}.get(cls, cls.__name__)

    def decode_exact(value: Any) -> Any:
        if type(value) is not cls:
            raise _Misfit(f"expected {name}, got {_kind(value)}")
        return value

    return decode_exact


def _int_decoder(bounds: Bounds | None) -> _Decoder:
    low = bounds.low if bounds else None
    high = bounds.high if bounds else None

    def decode_int(value: Any) -> int:
        if type(value) is not int:
            raise _Misfit(f"expected an integer, got {_kind(value)}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Misfit(f"{value} is out of range [{_fmt(low)}, {_fmt(high)}]")
        return value

    return decode_int


def _float_decoder(bounds: Bounds | None) -> _Decoder:
    low = bounds.low if bounds else None
    high = bounds.high if bounds else None

    def decode_float(value: Any) -> float:
        kind = type(value)
        if kind is not float and kind is not int:
            raise _Misfit(f"expected a number, got {_kind(value)}")
        number = float(value)
        if bounds is not None and not math.isfinite(number):
            raise _Misfit(f"expected a finite number, got {number}")
        if (low is not None and number < low) or (high is not None and number > high):
            raise _Misfit(f"{number} is out of range [{_fmt(low)}, {_fmt(high)}]")
        return number

    return decode_float


def _enum_decoder(cls: type[enum.Enum]) -> _Decoder:
    members = {m.value: m for m in cls}

    def decode_enum(value: Any) -> enum.Enum:
        try:
            return members[value]
        except (KeyError, TypeError):
            raise _Misfit(f"{value!r:.80} is not a {cls.__name__}") from None

    return decode_enum


def _union_decoder(tp: Any) -> _Decoder:
    options = typing.get_args(tp)
    optional = type(None) in options
    rest = [a for a in options if a is not type(None)]
    if len(rest) == 1:
        inner = _value_decoder(rest[0])

        def decode_optional(value: Any) -> Any:
            return None if value is None and optional else inner(value)

        return decode_optional
    decoders = [_value_decoder(a) for a in rest]

    def decode_union(value: Any) -> Any:
        if value is None and optional:
            return None
        for dec in decoders:
            try:
                return dec(value)
            except _Misfit:
                continue
        names = " or ".join(getattr(a, "__name__", str(a)) for a in rest)
        raise _Misfit(f"expected {names}, got {_kind(value)}")

    return decode_union


def _decode_json(value: Any) -> Any:
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
            raise _Misfit(f"expected JSON-able data, found {_kind(item)}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nil"
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _fmt(bound: float | None) -> str:
    """A bound as the message shows it: an integer in full (a seed's 4294967295, not 4.29497e+09)."""
    if bound is None:
        return ""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"
