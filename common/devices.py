"""The GPUs this machine shows, found without importing torch (no CUDA call, so safe anywhere)."""

from __future__ import annotations

import os
import subprocess

__all__ = ["visible_gpus"]


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
