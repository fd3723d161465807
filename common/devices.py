"""The GPUs this machine shows, and those a trial was given, found without importing torch (no
CUDA call, so safe anywhere: the fork server, a CPU worker)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["visible_gpus", "trial_gpus", "TrainerDevices", "trainer_devices", "TRIAL_GPUS_ENV"]

# set by the worker in each trial process: the GPUs it was given ("" on a CPU worker); its
# CUDA_VISIBLE_DEVICES says the same, but a user's own process may have that one set too
TRIAL_GPUS_ENV = "RETIA_TRIAL_GPUS"


def visible_gpus() -> list[str]:
    """The GPU indices visible here: ``CUDA_VISIBLE_DEVICES`` when set (what Slurm and most
    container runtimes give a job), else one per ``nvidia-smi -L`` line; [] without either."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


def trial_gpus(environ: Mapping[str, str] = os.environ) -> list[str] | None:
    """The GPUs this trial process was given by its worker ([] on a CPU worker), or None outside a trial."""
    given = environ.get(TRIAL_GPUS_ENV)
    if given is None:
        return None
    return [d.strip() for d in given.split(",") if d.strip()]


@dataclass(frozen=True)
class TrainerDevices:
    """What a Trainer retia builds runs on (Lightning's ``accelerator``, ``devices``, ``strategy``)."""

    accelerator: str
    devices: int
    strategy: str | None = None  # None: Lightning's default for them


def trainer_devices(environ: Mapping[str, str] = os.environ) -> TrainerDevices:
    """In a trial, exactly its GPUs (several: one DDP process each, forked from the trial process,
    which has not initialized CUDA), or the CPU without asking CUDA anything; in the user's own
    process, one GPU when one is visible (Lightning's ``auto``)."""
    given = trial_gpus(environ)
    if given is None:
        return TrainerDevices("auto", 1)
    if not given:
        return TrainerDevices("cpu", 1)
    return TrainerDevices("gpu", len(given), "ddp_fork" if len(given) > 1 else None)
