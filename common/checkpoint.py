"""A trial's checkpoint: kept by the dispatcher while the trial runs, so its next attempt resumes.

``save(path)`` copies the file to :data:`CHECKPOINT_FILE` in the trial's output directory (a new
file each time, put in place by a rename, so what is being sent is never rewritten) and, on a
worker, has the agent send it to the dispatcher, which keeps the latest complete one per trial.
When the worker dies, the next attempt finds it there before it starts: ``restore()`` gives its
path. Outside a worker (``Evaluator.evaluate`` in this process) the copy is all that happens.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .errors import ConfigError
from .reporting import current_reporter

__all__ = ["CHECKPOINT_FILE", "save", "restore"]

CHECKPOINT_FILE = "retia-checkpoint"  # in the trial's output directory; it comes home with its files


def _output_dir() -> Path | None:
    out = os.environ.get("RETIA_OUTPUT_DIR")
    return Path(out) if out else None


def save(path: str | os.PathLike[str]) -> Path | None:
    """Keep ``path`` as this trial's checkpoint (replacing the one before); the copy's path, or None
    outside an evaluation (nothing to keep it for)."""
    out = _output_dir()
    if out is None:
        return None
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"retia.checkpoint.save({str(path)!r}): no such file; write the checkpoint first")
    target = out / CHECKPOINT_FILE
    if not (target.exists() and os.path.samefile(source, target)):
        staged = out / f".{CHECKPOINT_FILE}.tmp"
        shutil.copyfile(source, staged)
        os.replace(staged, target)  # the agent may still be reading the previous one: a new inode
    reporter = current_reporter()
    if reporter is not None:
        reporter.checkpoint()
    return target


def restore() -> Path | None:
    """The checkpoint this trial resumes from (left by its previous attempt, or saved in this one);
    None when there is none."""
    out = _output_dir()
    if out is None:
        return None
    target = out / CHECKPOINT_FILE
    return target if target.is_file() else None
