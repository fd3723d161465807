"""Artefact names are data, never paths until checked: the one check of a peer-supplied name, and
the one way to open a file under a directory without following a symbolic link out of it.

A worker names each file it sends home by its path relative to the trial's output directory, with
``/`` between components (``worker/trial.py``); the dispatcher writes it under the trial's artefact
directory (``dispatcher/artifacts.py``). Anything else a name could spell (an absolute path in any
system's syntax, a way up, a byte a terminal or a C library reads as something else) is refused
with the reason, before the name is ever joined to a directory.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import unicodedata
from collections.abc import Sequence

from .errors import UnsafePathError

__all__ = ["MAX_COMPONENT_BYTES", "MAX_NAME_BYTES", "artifact_parts", "artifact_path", "open_beneath"]

MAX_COMPONENT_BYTES = 255  # NAME_MAX of Linux, macOS and the common file systems
MAX_NAME_BYTES = 1024  # the whole name: 4 levels of long names, far more of usual ones

_DRIVE = re.compile(r"[A-Za-z]:")  # C:x, C:\x, c:/x: absolute or drive-relative on Windows
# directories are opened only to reach into them: O_PATH (Linux) needs no read permission on them
_DIRECTORY = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def artifact_parts(name: str) -> tuple[str, ...]:
    """The components of ``name``, a relative artefact path with ``/`` between components, or
    :class:`~retia.errors.UnsafePathError` saying why it is refused: empty, absolute in any spelling
    (``/x``, ``//x``, ``\\\\server\\share``, ``C:x``), with a backslash (no POSIX worker sends one;
    a Windows spelling must not become a name), an empty, ``.`` or ``..`` component, a control
    character (NUL included), not UTF-8 (surrogates), or longer than :data:`MAX_COMPONENT_BYTES`
    a component or :data:`MAX_NAME_BYTES` in all (UTF-8 bytes)."""
    if not name:
        raise UnsafePathError("an empty artefact name")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise UnsafePathError(f"artefact name {name!r:.300} is not valid UTF-8") from None
    if size > MAX_NAME_BYTES:
        raise UnsafePathError(
            f"artefact name {name[:60]!r}... is {size} bytes long (at most {MAX_NAME_BYTES})"
        )
    if name.startswith("/"):
        raise UnsafePathError(f"artefact name {name!r:.300} is absolute")
    if "\\" in name:
        raise UnsafePathError(f"artefact name {name!r:.300} has a backslash")
    if _DRIVE.match(name):
        raise UnsafePathError(f"artefact name {name!r:.300} starts with a drive letter")
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise UnsafePathError(f"artefact name {name!r:.300} has a control character")
    parts = tuple(name.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise UnsafePathError(f"artefact name {name!r:.300} has a component {part!r}")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise UnsafePathError(
                f"artefact name {name[:60]!r}... has a component over {MAX_COMPONENT_BYTES} bytes"
            )
    return parts


def artifact_path(root: str, name: str) -> str:
    """``name`` as a path under the directory ``root`` (see :func:`artifact_parts` for what is refused)."""
    return os.path.join(root, *artifact_parts(name))


def open_beneath(
    root: str, parts: Sequence[str], flags: int, mode: int = 0o666, *, make_dirs: bool = False
) -> int:
    """A descriptor of ``root/parts...`` opened with ``flags`` (its owner closes it), reached one
    component at a time from a descriptor of ``root`` with ``O_NOFOLLOW``: a symbolic link anywhere
    below ``root`` (planted before, or swapped in while we walk) fails with ``OSError`` (``ELOOP``,
    or ``ENOTDIR``) instead of being followed, so what opens is beneath ``root`` by construction,
    with no window between a check and the open. ``make_dirs`` creates missing directories on the
    way. The final component must be a regular file (``EISDIR`` or ``ENXIO`` otherwise; opened
    ``O_NONBLOCK``, so a FIFO there cannot hang the caller). ``root`` itself is followed: it is ours."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            if make_dirs:
                try:
                    os.mkdir(part, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass  # a directory already (or something else: the open below says what)
            inner = os.open(part, _DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        last = os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(os.fstat(last).st_mode):
        os.close(last)
        raise OSError(errno.ENXIO, f"{os.path.join(root, *parts)} is not a regular file")
    return last
