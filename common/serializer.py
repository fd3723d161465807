"""``dump`` / ``load``: ship recipes and references, pickle only what has neither.

The encoding is msgpack. Traced objects become recipes (target + arguments, recursively),
importable classes and functions become ``module:qualname`` references, plain data stays
plain, and only what has none of these (a lambda, a class from ``__main__`` or from the
user's own uninstalled modules) is cloudpickled, with a size warning and a hard cap.

``load`` imports and calls what the bytes name: only ever call it on bytes whose
signature was checked with the cluster key (the worker does; the dispatcher never loads).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import importlib
import importlib.metadata
import io
import logging
import os
import sys
import types
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, BinaryIO

import cloudpickle
import msgpack

from .blobs import Blob, bytes_blob, make_blob, pickle_blob, read_blob
from .errors import PayloadTooLarge, SerializationError
from .trace import _WRAPS_ATTR, Recipe, Traced, _published, get_recipe, is_wrapped_with_trace, trace

__all__ = ["dump", "load", "DumpOptions", "rebuilding", "warm_up"]

_log = logging.getLogger(__name__)
_FORMAT = "retia-dump/1"
_blob_dir: contextvars.ContextVar[Path | None] = contextvars.ContextVar("retia_blob_dir", default=None)
_rebuilding: contextvars.ContextVar[bool] = contextvars.ContextVar("retia_rebuilding", default=False)


def rebuilding() -> bool:
    """True while :func:`load` rebuilds objects: what came from a payload was serializable already."""
    return _rebuilding.get()


MiB = 1 << 20


class _Ext(IntEnum):
    TUPLE = 1
    REF = 2
    RECIPE = 3
    PICKLE = 4
    TRACED = 5
    DICT = 6
    BLOB = 7


@dataclass(frozen=True)
class DumpOptions:
    """Size policy for pickled arguments: warn above ``warn_bytes``, refuse above ``max_pickle_bytes``."""

    warn_bytes: int = 1 * MiB
    max_pickle_bytes: int = 64 * MiB
    blob_threshold: int = 256 * 1024  # values at least this large become blobs (when collecting blobs)


def dump(
    obj: Any,
    fp: BinaryIO | str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    options: DumpOptions | None = None,
    blobs: dict[str, Blob] | None = None,
    pickle_size_limit: int | None = None,
) -> bytes:
    """Serialize ``obj`` to bytes; ``name`` is the root of argument paths in messages.

    With ``fp`` (a binary file, or a path), the bytes are also written there (NNI's ``fp``).
    ``pickle_size_limit`` (bytes; negative: none) refuses any pickle larger, blobs or not, with
    :class:`PayloadTooLarge`; it overrides ``options.max_pickle_bytes``. With ``blobs`` (a dict to
    fill), large tensors, arrays, buffers and pickles are left out of the bytes as
    content-addressed references and collected there, to be shipped once.
    """
    if isinstance(fp, io.TextIOBase):
        raise TypeError("retia.dump writes bytes: open the file in binary mode ('wb')")
    options = options or DumpOptions()
    if pickle_size_limit is not None:
        limit = pickle_size_limit if pickle_size_limit >= 0 else sys.maxsize
        options = dataclasses.replace(options, max_pickle_bytes=limit)
    root = name or type(obj).__name__
    tree = _Encoder(options, blobs, enforce_cap=pickle_size_limit is not None).encode(obj, root)
    data: bytes = msgpack.packb([_FORMAT, tree], use_bin_type=True)
    if isinstance(fp, (str, os.PathLike)):
        Path(fp).write_bytes(data)
    elif fp is not None:
        fp.write(data)
    return data


def load(
    string: bytes | None = None,
    *,
    fp: BinaryIO | str | os.PathLike[str] | None = None,
    blob_dir: Path | None = None,
) -> Any:
    """Rebuild an object from :func:`dump` bytes (authenticated bytes only), given as ``string``
    or read from ``fp`` (a binary file, or a path: NNI's ``fp``); blobs come from ``blob_dir``."""
    if (string is None) == (fp is None):
        raise TypeError("retia.load needs the bytes retia.dump returned, or fp= (a file), not both")
    if isinstance(string, io.IOBase):
        raise TypeError("retia.load(string) got a file: pass it as retia.load(fp=file)")
    if fp is None:
        data = string
    elif isinstance(fp, (str, os.PathLike)):
        data = Path(fp).read_bytes()
    else:
        data = fp.read()
    if isinstance(data, str):
        raise TypeError(
            "retia.load takes bytes (retia.dump returns bytes, where NNI's dump returned a str): "
            "pass the bytes, or open the file in binary mode ('rb')"
        )
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"retia.load takes the bytes retia.dump returned, got {type(data).__name__}")
    token = _blob_dir.set(blob_dir)
    rebuilding = _rebuilding.set(True)
    try:
        fmt, tree = msgpack.unpackb(data, ext_hook=_decode_ext, raw=False, strict_map_key=False)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(
            f"cannot load payload ({len(data)} bytes): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        _blob_dir.reset(token)
        _rebuilding.reset(rebuilding)
    if fmt != _FORMAT:
        raise SerializationError(f"unknown payload format {fmt!r}; expected {_FORMAT!r} (version mismatch?)")
    return tree


class _Encoder:
    def __init__(
        self, options: DumpOptions, blobs: dict[str, Blob] | None, enforce_cap: bool = False
    ) -> None:
        self.options = options
        self.blobs = blobs
        self.enforce_cap = enforce_cap or blobs is None  # a blob is shipped once, so may be larger

    def encode(self, obj: Any, path: str) -> Any:
        if (
            self.blobs is not None
            and isinstance(obj, (bytes, bytearray))
            and len(obj) >= self.options.blob_threshold
        ):
            return self._blob(self.blobs, bytes_blob(obj))
        if obj is None or type(obj) in _PLAIN:
            return obj
        if isinstance(obj, (bool, str, bytes, float)) and not _is_choice(obj):  # a str enum, np.float64
            return obj
        if isinstance(obj, int) and type(obj) is int and -(1 << 63) <= obj < (1 << 64):
            return obj
        if type(obj) is list:
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(obj)]
        if type(obj) is tuple:
            return self._ext(_Ext.TUPLE, [self.encode(v, f"{path}[{i}]") for i, v in enumerate(obj)])
        if type(obj) is dict:
            if all(isinstance(k, str) for k in obj):
                return {k: self.encode(v, f"{path}.{k}") for k, v in obj.items()}
            return self._ext(
                _Ext.DICT,
                [[self.encode(k, f"{path}.<key>"), self.encode(v, f"{path}[{k!r}]")] for k, v in obj.items()],
            )
        if isinstance(obj, Traced):
            return self._traced(obj.__wrapped__, obj._kw_only, path)
        if is_wrapped_with_trace(obj):  # a trace class: by its name, as trace(original), or by value
            ref = _reference(obj)
            if ref is not None:
                return self._ext(_Ext.REF, ref)
            original, kw_only = obj.__dict__[_WRAPS_ATTR]
            if not _published(obj):  # trace(SomeClass) where it is used: the original names it
                return self._traced(original, kw_only, path)
            # Decorated in the user's own module: by value, as cloudpickle keeps one class per
            # class across pickles (its subclasses' pickles name this very one).
        recipe = obj if isinstance(obj, Recipe) else get_recipe(obj)  # a trace_copy() builds on load
        if recipe is not None:
            return self._ext(
                _Ext.RECIPE,
                [
                    self.encode(recipe.target, path),
                    [self.encode(v, f"{path}[{i}]") for i, v in enumerate(recipe.args)],
                    {k: self.encode(v, f"{path}.{k}") for k, v in recipe.kwargs.items()},
                ],
            )
        ref = _reference(obj)
        if ref is not None:
            return self._ext(_Ext.REF, ref)
        if self.blobs is not None:
            blob = make_blob(obj)
            if blob is not None and blob.size >= self.options.blob_threshold:
                return self._blob(self.blobs, blob)
        data = self._pickle(obj, path)
        if self.blobs is not None and len(data) >= self.options.blob_threshold:
            return self._blob(self.blobs, pickle_blob(data))
        return self._ext(_Ext.PICKLE, data)

    def _traced(self, target: Any, kw_only: bool, path: str) -> msgpack.ExtType:
        inner = self.encode(target, path)
        return self._ext(_Ext.TRACED, inner if kw_only else [inner, False])

    def _blob(self, blobs: dict[str, Blob], blob: Blob) -> msgpack.ExtType:
        blobs[blob.digest] = blob
        return self._ext(_Ext.BLOB, [blob.digest, blob.kind, blob.size])

    def _pickle(self, obj: Any, path: str) -> bytes:
        _register_user_module(obj)
        try:
            data: bytes = cloudpickle.dumps(obj)
        except Exception as exc:
            raise SerializationError(
                f"cannot serialize {path} (a {type(obj).__name__}): {exc}. Pass something that can be "
                "rebuilt instead: a traced object (retia.trace), an importable function, or plain data.",
                path,
            ) from exc
        size = len(data)
        if size > self.options.max_pickle_bytes and self.enforce_cap:
            raise PayloadTooLarge(
                f"{path} (a {type(obj).__name__}) pickles to {_size(size)}, over the "
                f"{_size(self.options.max_pickle_bytes, cap=True)} cap (pickle_size_limit). Build it "
                "with retia.trace so it is re-created on the worker, load it inside fit, or raise "
                "pickle_size_limit.",
                path,
                size,
            )
        if size > self.options.warn_bytes:
            _log.warning(
                "%s (a %s) was pickled: %.1f MiB%s. "
                "Consider retia.trace so it is rebuilt on the worker instead.",
                path,
                type(obj).__name__,
                size / MiB,
                " (it travels once per worker, as a blob)" if self.blobs is not None else "",
            )
        return data

    @staticmethod
    def _ext(code: _Ext, inner: Any) -> msgpack.ExtType:
        return msgpack.ExtType(int(code), msgpack.packb(inner, use_bin_type=True))


_PLAIN = frozenset((bool, str, bytes, float))


def _is_choice(obj: Any) -> bool:
    """A ValueChoice (or an expression of choices) among an evaluator's arguments, a float or str that
    is one: it travels as the choice (a saved evaluator keeps its search space), not as its supernet
    value."""
    expressions = sys.modules.get("retia.nn.expressions")
    return expressions is not None and isinstance(obj, expressions.ChoiceExpression)


def _decode_ext(code: int, data: bytes) -> Any:
    inner = msgpack.unpackb(data, ext_hook=_decode_ext, raw=False, strict_map_key=False)
    if code == _Ext.TUPLE:
        return tuple(inner)
    if code == _Ext.DICT:
        return {k: v for k, v in inner}
    if code == _Ext.REF:
        return _resolve(inner)
    if code == _Ext.TRACED:
        target, kw_only = inner if isinstance(inner, list) else (inner, True)
        return trace(target, kw_only=kw_only)
    if code == _Ext.RECIPE:
        target, args, kwargs = inner
        try:
            return Recipe(target, tuple(args), kwargs).build()
        except Exception as exc:
            name = getattr(target, "__qualname__", repr(target))
            raise SerializationError(
                f"rebuilding {name} from its recipe failed: {type(exc).__name__}: {exc}"
            ) from exc
    if code == _Ext.BLOB:
        digest, kind, size = inner
        blob_dir = _blob_dir.get()
        if blob_dir is None or not (blob_dir / digest).exists():
            raise SerializationError(
                f"the payload references blob {digest[:12]} ({size} bytes) that is not available here"
            )
        return read_blob(blob_dir / digest, kind)
    if code == _Ext.PICKLE:
        try:
            return cloudpickle.loads(inner)
        except Exception as exc:
            raise SerializationError(f"unpickling an argument failed: {type(exc).__name__}: {exc}") from exc
    raise SerializationError(f"unknown extension code {code} in payload (version mismatch?)")


def _size(n: int, cap: bool = False) -> str:
    """Sizes in messages: MiB from 1 MiB up (a cap as a whole number), bytes below."""
    if n < MiB:
        return f"{n} bytes"
    return f"{n / MiB:.0f} MiB" if cap else f"{n / MiB:.1f} MiB"


def _reference(obj: Any) -> str | None:
    """``module:qualname`` if ``obj`` is importable by that name from an installed module."""
    if not isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
        return None
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if not module or not qualname or "<" in qualname or _is_user_module(module):
        return None
    try:
        if _resolve(f"{module}:{qualname}") is not obj:
            return None
    except SerializationError:
        return None
    return f"{module}:{qualname}"


def _resolve(ref: str) -> Any:
    module_name, _, qualname = ref.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise SerializationError(
            f"cannot import {ref}: {exc}. Install the package that provides it on this machine."
        ) from exc
    return obj


@functools.lru_cache(maxsize=1)
def _installed_top_levels() -> frozenset[str]:
    names = set(importlib.metadata.packages_distributions())
    return frozenset(names | set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"retia"})


def _is_user_module(module: str) -> bool:
    """True for ``__main__`` and the user's own uninstalled files: these travel by value."""
    if module == "__main__":
        return True
    return module.split(".")[0] not in _installed_top_levels()


def _register_user_module(obj: Any) -> None:
    """Make cloudpickle copy code from the user's own (uninstalled) modules by value.

    Every such module already imported is registered, not only ``obj``'s own: a pickled
    object may reach functions of several of the user's files, and the worker has none.
    """
    for name in sys.modules.keys() - _checked:  # only modules imported since the last call
        _checked.add(name)
        if "." in name or name == "__main__" or not _is_user_module(name):
            continue
        module = sys.modules.get(name)
        if isinstance(module, types.ModuleType) and getattr(module, "__file__", None):
            cloudpickle.register_pickle_by_value(module)


_checked: set[str] = set()  # module names looked at once: dump() runs per trial, sys.modules rarely changes


def warm_up() -> None:
    """Fill the caches dump() needs, so processes forked from a fork server start with them."""
    _installed_top_levels()
