"""Private state on disk: directories and files only their owner can read, checked at start.

A directory or file that group or others can reach is fixed (chmod) with a warning that says
which one and what was done, never silently: the journal holds every payload and result, a
worker's home its key. Key files are refused instead (:func:`retia.keys.load_key`): a key that
was readable may already be copied.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .errors import ConfigError

__all__ = ["private_dir", "private_file", "mode_of", "read_secret"]

_log = logging.getLogger(__name__)


def mode_of(path: Path) -> int:
    """The permission bits of ``path`` (0o755, say)."""
    return stat.S_IMODE(path.stat().st_mode)


def private_dir(path: Path, mode: int = 0o700, what: str = "directory") -> None:
    """Create ``path`` (and its parents) with exactly ``mode``, or give an existing one exactly
    ``mode``, with a warning when that takes bits away."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)  # (the umask may take bits: set below)
    _restrict(path, mode, what, exact=True)


def private_file(path: Path, mode: int = 0o600, what: str = "file") -> None:
    """Take from an existing file every permission bit ``mode`` does not grant, with a warning;
    nothing when it does not exist."""
    try:
        _restrict(path, mode, what, exact=False)
    except FileNotFoundError:
        pass


def read_secret(path: Path, what: str, missing: str, exposure: str) -> bytes:
    """The bytes of a secret file (a key, a credential), refused with ``ConfigError`` when it does not
    exist (``missing`` says what to do) or group or others can read it (``exposure`` says what its
    reader could do): one that was readable may already be copied, so it is not fixed, it is refused."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist: {missing}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(
            f"{what} {path} is accessible by group or others (mode {stat.S_IMODE(mode):04o}); "
            f"{exposure}. Fix it with: chmod 600 {path}"
        )
    return path.read_bytes()


def _restrict(path: Path, mode: int, what: str, *, exact: bool) -> None:
    current = mode_of(path)
    wanted = mode if exact else current & mode
    if current == wanted:
        return
    try:
        os.chmod(path, wanted)
    except PermissionError as exc:  # (another user's: only its owner or root may)
        raise ConfigError(
            f"{what} {path} is mode {current:04o} and cannot be made {wanted:04o} ({exc.strerror}); "
            f"run as its owner, or chmod {wanted:o} {path} yourself"
        ) from None
    if current & ~mode & 0o777:
        _log.warning(
            "%s %s was mode %04o (%s could reach it); changed to %04o",
            what,
            path,
            current,
            _who(current & ~mode),
            wanted,
        )


def _who(bits: int) -> str:
    """Who the extra permission bits let in: "group", "others", or "group and others"."""
    names = [name for name, mask in (("group", 0o070), ("others", 0o007)) if bits & mask]
    return " and ".join(names) or "the owner"
