"""The GPU guard (retia.worker.gpu_memory) over a real ctypes binding to a fake NVML library: it
reads each device's memory and holders, takes the idle level at start, and names a leak and its
holder once memory stays above that level."""

from __future__ import annotations

import os

import pytest

from retia.worker.gpu_memory import GpuGuard, GpuProcess, Nvml, guard_for

from ..nvml import FakeNvml

pytestmark = pytest.mark.timeout(60)

GiB = 1 << 30


@pytest.fixture
def nvml(fake_nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    for name, value in fake_nvml.env().items():
        monkeypatch.setenv(name, value)
    fake_nvml.set((GiB, []), (2 * GiB, []))
    return fake_nvml


def _open() -> Nvml:
    opened = Nvml.open()
    assert opened is not None
    return opened


def test_each_devices_memory_and_holders_are_read_through_the_library(nvml: FakeNvml) -> None:
    nvml.set((3 * GiB + 5, [(4242, GiB), (77, 2 * GiB + 5)]), (7, []))
    lib = _open()
    first, second = lib.read(0), lib.read(1)
    assert (first.index, first.used_bytes) == (0, 3 * GiB + 5)
    assert first.processes == (GpuProcess(4242, GiB), GpuProcess(77, 2 * GiB + 5))
    assert (second.used_bytes, second.processes) == (7, ())
    with pytest.raises(OSError, match="GetHandleByIndex"):
        lib.read(2)  # no such device


def test_no_library_or_a_driver_that_fails_to_start_means_no_guard(
    nvml: FakeNvml, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert guard_for(["0"], shared=False, reuse_process=False) is not None
    monkeypatch.setenv("RETIA_NVML_LIBRARY", str(nvml.library.with_name("absent.so")))
    assert Nvml.open() is None
    assert guard_for(["0"], shared=False, reuse_process=False) is None
    monkeypatch.setenv("RETIA_NVML_LIBRARY", str(nvml.library))
    monkeypatch.delenv("FAKE_NVML_STATE")  # nvmlInit_v2 fails, as with no driver loaded
    assert Nvml.open() is None


def test_no_guard_where_its_reading_would_be_wrong(nvml: FakeNvml) -> None:
    assert guard_for([], shared=False, reuse_process=False) is None  # a CPU worker
    assert guard_for(["0"], shared=True, reuse_process=False) is None  # other agents' trials use it
    assert guard_for(["0"], shared=False, reuse_process=True) is None  # its child keeps a context
    assert guard_for(["5"], shared=False, reuse_process=False) is None  # a device NVML does not have
    guard = guard_for(["0", "1"], shared=False, reuse_process=False)
    assert guard is not None and guard.idle == {0: GiB, 1: 2 * GiB}


def test_memory_above_the_idle_level_is_a_leak_named_by_its_holder(nvml: FakeNvml) -> None:
    guard = GpuGuard(_open(), [0, 1], slack_bytes=64 << 20)
    assert guard.leak(now=100.0) is None
    nvml.set((GiB + (32 << 20), []), (2 * GiB, []))  # within the slack: the driver's own
    assert guard.leak(now=101.0) is None
    nvml.set((GiB, []), (5 * GiB, [(os.getpid(), 3 * GiB)]))
    first = guard.leak(now=102.0)
    later = guard.leak(now=104.5)
    assert first is not None and later is not None
    assert (first.index, first.held_bytes, first.seen_for, later.seen_for) == (1, 3 * GiB, 0.0, 2.5)
    text = later.describe()
    assert "GPU 1 holds 3072 MiB" in text and f"pid {os.getpid()} (" in text
    nvml.set((GiB, []), (2 * GiB, []))
    assert guard.leak(now=105.0) is None
    nvml.set((GiB, []), (4 * GiB, []))
    again = guard.leak(now=106.0)
    assert again is not None and again.seen_for == 0.0  # a new leak is timed from when it is seen
    assert "no process listed" in again.describe()


def test_a_device_that_cannot_be_read_is_no_leak_and_stops_nothing(nvml: FakeNvml) -> None:
    guard = GpuGuard(_open(), [0, 1])
    nvml.set((GiB, []))  # device 1 gone from the driver's list: its reads fail
    assert guard.leak(now=1.0) is None
    nvml.set((GiB, []), (9 * GiB, []))
    leak = guard.leak(now=2.0)
    assert leak is not None and leak.index == 1
