"""What a trial's GPUs were and did, measured in the trial process (which may use CUDA; the fork
server never does): the devices it was given, their UUIDs, its peak allocated memory and the time
from its start to its first CUDA operation."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from retia.protocol import DeviceFacts

__all__ = ["watch", "facts"]

_log = logging.getLogger(__name__)
_started = 0.0
_first_cuda: float | None = None


def watch() -> None:
    """Start the clock, and time the first CUDA initialization of this process: torch's C++ calls
    ``torch.cuda._lazy_init`` before its first CUDA operation, as its Python functions do. (In a
    ``--reuse-process`` child an earlier trial may have initialized it: no time, peak memory anew.)"""
    global _started, _first_cuda
    _started, _first_cuda = time.monotonic(), None
    torch = sys.modules.get("torch")
    if torch is None:
        return
    if torch.cuda.is_initialized():  # a --reuse-process child: an earlier trial did it
        for device in range(torch.cuda.device_count()):
            torch.cuda.reset_peak_memory_stats(device)
        return
    cuda = torch.cuda
    original = cuda._lazy_init

    def timed_lazy_init(*args: Any, **kwargs: Any) -> Any:
        global _first_cuda
        result = original(*args, **kwargs)
        if _first_cuda is None:
            _first_cuda = time.monotonic() - _started
            cuda._lazy_init = original  # once is enough
        return result

    cuda._lazy_init = timed_lazy_init


def facts(gpus: str) -> DeviceFacts:
    """The trial's GPUs (``gpus``: its CUDA_VISIBLE_DEVICES) and, when it initialized CUDA, their
    UUIDs and its peak allocated memory (the largest of its devices)."""
    given = [d.strip() for d in gpus.split(",") if d.strip()]
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return DeviceFacts(given)
    try:
        count = torch.cuda.device_count()
        uuids = [str(torch.cuda.get_device_properties(i).uuid) for i in range(count)]
        peak = max((torch.cuda.max_memory_allocated(i) for i in range(count)), default=0)
    except Exception as exc:  # a broken device: the trial's own outcome says more
        _log.warning("could not read the trial's CUDA devices: %s", exc)
        return DeviceFacts(given, first_cuda_s=_first_cuda)
    return DeviceFacts(given, uuids, int(peak), _first_cuda)
