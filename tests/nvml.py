"""A fake NVML driver library (tests/fake_nvml.c, built with the system's C compiler) whose
devices' memory a test sets, so the GPU guard's ctypes binding and the agent's check run for real."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

SOURCE = Path(__file__).with_name("fake_nvml.c")


class FakeNvml:
    """The built library and the state file it reads (line N: device N's used bytes and holders)."""

    def __init__(self, library: Path, state: Path) -> None:
        self.library = library
        self.state = state

    def set(self, *devices: tuple[int, Sequence[tuple[int, int]]]) -> None:
        """Each device's used bytes and its (pid, bytes) holders, device 0 first."""
        lines = [" ".join([str(used), *(f"{pid}:{n}" for pid, n in holders)]) for used, holders in devices]
        partial = self.state.with_suffix(".partial")
        partial.write_text("\n".join(lines) + "\n")
        partial.replace(self.state)  # (the library reads the whole of one state or the other)

    def env(self) -> dict[str, str]:
        """What a process needs to load this library instead of the driver's."""
        return {"RETIA_NVML_LIBRARY": str(self.library), "FAKE_NVML_STATE": str(self.state)}


def build_fake_nvml(directory: Path) -> FakeNvml:
    """Compile the library into ``directory``; skips the test where no C compiler is installed."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler (cc) to build the fake NVML library: apt-get install gcc")
    library = directory / "libfake-nvml.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(library), str(SOURCE)],
        check=True,
        timeout=60,
    )
    return FakeNvml(library, directory / "nvml-state.txt")
