"""The trial process's device facts (retia.worker.trial_devices): the time to the first CUDA
initialization, taken by wrapping ``torch.cuda._lazy_init`` once. No GPU here: a stand-in for
``torch.cuda`` that initializes on its first ``_lazy_init``, as torch's does."""

from __future__ import annotations

import sys
import time
import types
from collections.abc import Iterator

import pytest

from retia.protocol import DeviceFacts
from retia.worker import trial_devices

pytestmark = pytest.mark.timeout(30)


class _FakeCuda(types.ModuleType):
    """torch.cuda's surface that trial_devices reads: initialized by the first _lazy_init."""

    def __init__(self) -> None:
        super().__init__("torch.cuda")
        self.initialized, self.inits = False, 0
        self.peaks = [3 << 30, 5 << 30]

    def is_initialized(self) -> bool:
        return self.initialized

    def _lazy_init(self) -> None:
        self.inits += 1
        self.initialized = True

    def device_count(self) -> int:
        return len(self.peaks)

    def get_device_properties(self, device: int) -> types.SimpleNamespace:
        return types.SimpleNamespace(uuid=f"GPU-{device:04d}")

    def max_memory_allocated(self, device: int) -> int:
        return self.peaks[device]

    def reset_peak_memory_stats(self, device: int) -> None:
        self.peaks[device] = 0


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[_FakeCuda]:
    fake = _FakeCuda()
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(cuda=fake))
    yield fake


def test_the_first_cuda_operation_is_timed_from_the_trials_start_and_the_wrapper_removed(
    cuda: _FakeCuda,
) -> None:
    original = cuda._lazy_init
    trial_devices.watch()
    assert trial_devices.facts("0,1") == DeviceFacts(["0", "1"])  # CUDA not up: nothing more to say
    time.sleep(0.05)
    cuda._lazy_init()  # what torch's C++ calls before its first CUDA operation
    assert cuda._lazy_init == original and cuda.inits == 1
    facts = trial_devices.facts("0,1")
    assert facts.gpus == ["0", "1"] and facts.uuids == ["GPU-0000", "GPU-0001"]
    assert facts.peak_memory_bytes == 5 << 30
    assert facts.first_cuda_s is not None and 0.05 <= facts.first_cuda_s < 5


def test_in_a_reused_process_cuda_is_already_up_so_only_the_peak_is_measured_anew(cuda: _FakeCuda) -> None:
    cuda.initialized = True
    trial_devices.watch()
    cuda.peaks[1] = 1 << 20  # this trial's own allocations
    facts = trial_devices.facts("3")
    assert facts == DeviceFacts(["3"], ["GPU-0000", "GPU-0001"], 1 << 20, None)
