"""A diagnostic for the fork server: records every call to torch's CUDA entry points made there.

One ``cuInit`` in the fork server and every trial forked from it fails ("Cannot re-initialize CUDA
in forked subprocess"). Put this module FIRST in ``--preload`` with ``RETIA_CUDA_TRIPWIRE=PATH``:
it hooks the import of ``torch.cuda`` (torch is not imported yet) and wraps its entry points
(init, device count, availability, the NVML probes and the C-level calls behind them); each call
appends one JSON line (``pid``, ``name``, a short ``stack``) to PATH. Calls in the process that
imported it are all recorded; a forked process (a trial, which may use CUDA) records the first call
of each entry point under its own pid. An ``armed`` line names the wrapped entry points, the pid
of the importing process and its ``PYTORCH_NVML_BASED_CUDA_CHECK``. Without the variable it does
nothing.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["ENV", "PYTHON_PROBES", "C_PROBES", "install"]

ENV = "RETIA_CUDA_TRIPWIRE"

# torch.cuda's own functions (torch 2.13): each that exists is wrapped. They call one another
# through the module's globals, and C++ (a CUDA tensor) calls torch.cuda._lazy_init, so wrapping the
# module's attributes sees those calls too.
PYTHON_PROBES = (
    "init",
    "_lazy_init",
    "is_available",
    "device_count",
    "set_device",
    "_device_count_nvml",
    "_raw_device_count_nvml",
    "_raw_device_uuid_nvml",
    "_device_count_amdsmi",
    "_raw_device_count_amdsmi",
    "_raw_device_uuid_amdsmi",
)
# torch._C's, only in a CUDA build (a CPU build has none; adding one would make torch think it has CUDA)
C_PROBES = ("_cuda_getDeviceCount", "_cuda_init", "_cuda_setDevice")

_STACK_FRAMES = 8
_pid = os.getpid()  # the process that imported this (the fork server): every call there is recorded
_seen: set[tuple[int, str]] = set()  # (pid, name) already recorded in a forked process
_wrappers: set[Callable[..., Any]] = set()  # not wrapped twice


def _record(path: str, entry: dict[str, Any]) -> None:
    """Append one line (O_APPEND: lines from several processes do not interleave)."""
    line = (json.dumps(entry) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _wrap(path: str, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def tripwire(*args: Any, **kwargs: Any) -> Any:
        pid = os.getpid()
        if pid == _pid or (pid, name) not in _seen:
            if pid != _pid:
                _seen.add((pid, name))
            stack = traceback.format_stack(limit=_STACK_FRAMES + 1)[:-1]
            _record(path, {"event": "call", "pid": pid, "server": pid == _pid, "name": name, "stack": stack})
        return func(*args, **kwargs)

    _wrappers.add(tripwire)
    return tripwire


def _wrap_all(path: str, module: ModuleType, names: Sequence[str], prefix: str) -> list[str]:
    wrapped = []
    for name in names:
        func = getattr(module, name, None)
        if callable(func) and func not in _wrappers:
            setattr(module, name, _wrap(path, prefix + name, func))
            wrapped.append(prefix + name)
    return wrapped


def _arm(path: str, cuda: ModuleType) -> None:
    """Wrap torch.cuda's and torch._C's entry points, and say so in the file."""
    torch_c = sys.modules.get("torch._C")
    wrapped = _wrap_all(path, cuda, PYTHON_PROBES, "torch.cuda.")
    if torch_c is not None:
        wrapped += _wrap_all(path, torch_c, C_PROBES, "torch._C.")
    _record(
        path,
        {
            "event": "armed",
            "pid": os.getpid(),
            "wrapped": wrapped,
            "nvml_check": os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK"),
        },
    )


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: makes the loader of torch.cuda arm the tripwire right after it ran."""

    def __init__(self, path: str) -> None:
        self.path = path

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "torch.cuda":
            return None
        sys.meta_path.remove(self)  # once, and so the finders below answer
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = None if spec is None else spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_arm(module: ModuleType) -> None:
            exec_module(module)
            _arm(self.path, module)

        loader.exec_module = exec_then_arm  # type: ignore[method-assign]  # this module's loader only
        return spec


def install(path: str) -> None:
    """Arm now if torch.cuda is loaded, else when it is imported."""
    cuda = sys.modules.get("torch.cuda")
    if cuda is not None:
        _arm(path, cuda)
    else:
        sys.meta_path.insert(0, _Finder(path))


if os.environ.get(ENV):
    install(os.environ[ENV])
