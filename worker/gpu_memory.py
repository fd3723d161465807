"""Nothing holds a GPU after its trial: the agent reads its devices' memory through NVML (the
driver's library, loaded with ctypes: no CUDA context, safe beside the fork server) when it starts,
and before the next trial checks that it is back to that idle level. Memory still held after
``patience`` seconds is a leak: the agent takes no trial into it and reports the holder instead."""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "DeviceMemory",
    "GpuGuard",
    "GpuLeak",
    "GpuProcess",
    "MemoryProbe",
    "Nvml",
    "NVML_LIBRARY",
    "guard_for",
]

_log = logging.getLogger(__name__)

NVML_LIBRARY = "libnvidia-ml.so.1"  # the driver's; RETIA_NVML_LIBRARY names another path
_SUCCESS = 0
_INSUFFICIENT_SIZE = 7
_MAX_PROCESSES = 256


@dataclass(frozen=True)
class GpuProcess:
    """A process with memory on a device, as the driver lists it (its pid may be another namespace's)."""

    pid: int
    used_bytes: int

    @property
    def name(self) -> str:
        try:
            with open(f"/proc/{self.pid}/comm") as f:
                return f.read().strip()
        except OSError:
            return "not visible here"


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory in use and the processes holding it."""

    index: int
    used_bytes: int
    processes: tuple[GpuProcess, ...] = ()


class MemoryProbe(Protocol):
    def read(self, index: int) -> DeviceMemory: ...


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _ProcessInfo(ctypes.Structure):  # nvmlProcessInfo_v2_t, the layout of the _v2 and _v3 calls
    _fields_ = [
        ("pid", ctypes.c_uint),
        ("usedGpuMemory", ctypes.c_ulonglong),
        ("gpuInstanceId", ctypes.c_uint),
        ("computeInstanceId", ctypes.c_uint),
    ]


class Nvml:
    """The few NVML calls the guard needs; device indices are NVML's (PCI bus order)."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self._lib = lib
        newest = getattr(lib, "nvmlDeviceGetComputeRunningProcesses_v3", None)  # (drivers >= 510)
        self._processes = newest or lib.nvmlDeviceGetComputeRunningProcesses_v2

    @classmethod
    def open(cls) -> Nvml | None:
        """The driver's NVML, initialized; None where there is none (a CPU machine) or it fails."""
        path = os.environ.get("RETIA_NVML_LIBRARY") or NVML_LIBRARY
        try:
            lib = ctypes.CDLL(path)
            nvml = cls(lib)
            nvml._check(lib.nvmlInit_v2(), "nvmlInit_v2")
        except (OSError, AttributeError) as exc:
            _log.debug("no NVML (%s): GPU memory is not checked between trials", exc)
            return None
        return nvml

    def _check(self, code: int, call: str) -> None:
        if code != _SUCCESS:
            raise OSError(f"{call} returned NVML error {code}")

    def _handle(self, index: int) -> ctypes.c_void_p:
        handle = ctypes.c_void_p()
        self._check(self._lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)), "GetHandleByIndex")
        return handle

    def read(self, index: int) -> DeviceMemory:
        handle = self._handle(index)
        memory = _Memory()
        self._check(self._lib.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)), "GetMemoryInfo")
        count = ctypes.c_uint(_MAX_PROCESSES)
        infos = (_ProcessInfo * _MAX_PROCESSES)()
        code = self._processes(handle, ctypes.byref(count), infos)
        if code == _INSUFFICIENT_SIZE:  # more than we asked for: the first ones are enough to name
            count = ctypes.c_uint(_MAX_PROCESSES)
        elif code != _SUCCESS:
            count = ctypes.c_uint(0)  # the level alone still tells a leak
        processes = tuple(GpuProcess(int(p.pid), int(p.usedGpuMemory)) for p in infos[: count.value])
        return DeviceMemory(index, int(memory.used), processes)


@dataclass(frozen=True)
class GpuLeak:
    """Memory above a device's idle level, and for how long it has been seen."""

    index: int
    held_bytes: int
    processes: tuple[GpuProcess, ...]
    seen_for: float

    def describe(self) -> str:
        holders = ", ".join(f"pid {p.pid} ({p.name}): {_mib(p.used_bytes)}" for p in self.processes)
        return (
            f"GPU {self.index} holds {_mib(self.held_bytes)} above its idle level after the last trial, "
            f"held by {holders or 'no process listed'}; no trial starts here until it is freed"
        )


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB"


class GpuGuard:
    """Idle levels of an agent's devices at start, and the check before each trial process."""

    def __init__(self, probe: MemoryProbe, devices: Sequence[int], *, slack_bytes: int = 128 << 20) -> None:
        self.probe = probe
        self.devices = tuple(devices)
        self.slack_bytes = slack_bytes  # what the driver may take or give back on its own
        self.idle = {index: probe.read(index).used_bytes for index in self.devices}
        self._since: float | None = None

    def leak(self, now: float) -> GpuLeak | None:
        """The first device over its idle level (``seen_for``: since when it has been), or None
        (a device NVML cannot read now is not a leak: the trial's own CUDA calls will tell)."""
        for index in self.devices:
            try:
                memory = self.probe.read(index)
            except OSError as exc:
                _log.warning("could not read GPU %d's memory through NVML: %s", index, exc)
                continue
            held = memory.used_bytes - self.idle[index]
            if held > self.slack_bytes:
                if self._since is None:
                    self._since = now
                return GpuLeak(index, held, memory.processes, now - self._since)
        self._since = None
        return None


def guard_for(gpus: Sequence[str], *, shared: bool, reuse_process: bool) -> GpuGuard | None:
    """The guard of an agent with these devices, or None: no GPU, no NVML, or a check that would
    misread (a GPU shared with other agents' trials; a --reuse-process child keeping its context)."""
    if not gpus or shared or reuse_process:
        return None
    nvml = Nvml.open()
    if nvml is None:
        return None
    try:
        guard = GpuGuard(nvml, [int(g) for g in gpus])
    except OSError as exc:
        _log.warning("could not read GPU memory through NVML (%s): it is not checked between trials", exc)
        return None
    _log.info(
        "GPU memory checked between trials; idle levels %s",
        ", ".join(f"GPU {i}: {_mib(b)}" for i, b in guard.idle.items()),
    )
    return guard
