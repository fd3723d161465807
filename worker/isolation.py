"""What a trial cannot reach: the worker's credential, and with ``--trial-user`` the worker's files.

A trial is the user's code. It runs as the worker's user unless the agent runs as root and is
given ``--trial-user NAME``; then each trial process becomes that user (uid, primary gid and
supplementary groups) right after it is forked, before any of the trial's code runs.

- No credential in any environment: the worker takes ``RETIA_KEY`` (and ``RETIA_CREDENTIAL``)
  out of ``os.environ`` once it has read it, before the fork server starts, so neither the fork
  server nor a trial inherits it; the trial process scrubs the same names again.
- The worker home's layout under ``--trial-user`` (set up at start, each change logged):
  the home is 0711, owned by root, so the trial user can pass through it but not list it, and
  cannot open the key file in it (0600); ``trials/`` belongs to the trial user (0700): each trial
  creates its own directory there and a ``--reuse-process`` child renames its scratch there;
  ``blobs/`` (large arguments, read by the trial) is root's, group the trial user's primary
  group, setgid and 02750, and the agent's umask is 027, so each blob arrives 0640 in that group.
  Without ``--trial-user`` the home is 0700.
- The agent (root) reads a trial's artefacts and log with the trial user's file permissions
  (``setfsuid``, this thread only): a link the trial left to the key file is not read through.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import pwd
import stat
import sys
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from pathlib import Path

from retia.credentials import CREDENTIAL_ENV
from retia.errors import ConfigError
from retia.filemodes import mode_of, private_dir
from retia.keys import KEY_ENV

__all__ = [
    "limit_memory",
    "SECRET_ENV",
    "TrialUser",
    "forget_credentials",
    "trial_user",
    "become",
    "secure_worker_home",
    "file_access_of",
]

_log = logging.getLogger(__name__)

# variables that hold a credential or say where one is: never passed on to a trial
SECRET_ENV = (KEY_ENV, CREDENTIAL_ENV)  # what a trial must never find in its environment
TRIAL_HOME_MODE = 0o711  # the worker home under --trial-user: passable, not listable
BLOB_DIR_MODE = 0o2750  # root's, the trial user's group, setgid: each blob takes that group
BLOB_MODE = 0o640
TRIAL_UMASK = 0o027  # the agent's umask under --trial-user: blobs 0640, never world-readable


@dataclass(frozen=True)
class TrialUser:
    """The account trials run as, looked up once at start (a trial process only switches to it)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]  # supplementary groups, the primary one included, as initgroups sets them
    home: str


def forget_credentials(environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Take every credential variable out of ``environ`` (``os.environ``); the names removed."""
    env = os.environ if environ is None else environ
    return [name for name in SECRET_ENV if env.pop(name, None) is not None]


def trial_user(name: str) -> TrialUser:
    """The account ``name`` (or a numeric uid) trials are to run as; ConfigError, saying what to
    do, when it does not exist or this process cannot switch to it (it is not root)."""
    try:
        entry = pwd.getpwuid(int(name)) if name.isdigit() else pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(
            f"--trial-user {name}: no such user on this machine; create it (useradd --system {name}) "
            "or name an existing one, such as nobody"
        ) from None
    if os.geteuid() != 0:
        raise ConfigError(
            f"--trial-user {name} needs the worker to run as root (it runs as uid {os.geteuid()}), "
            "since only root can start a process as another user; run the worker as root, or drop "
            "--trial-user and run the worker itself as an unprivileged user"
        )
    if entry.pw_uid == 0:
        raise ConfigError(f"--trial-user {name} is root: trials would hold everything the worker does")
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return TrialUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups, entry.pw_dir)


def become(user: TrialUser) -> None:
    """Switch this process for good to ``user``: groups, then gid, then uid (real, effective and
    saved, so there is no way back), and the variables that name the user."""
    os.setgroups(list(user.groups))
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    os.environ.update(HOME=user.home, USER=user.name, LOGNAME=user.name)


def secure_worker_home(home: Path, user: TrialUser | None) -> None:
    """Lay out the worker home (see the module's docstring), each change logged; ConfigError when
    the trial user could not reach its trial directories."""
    home = home.expanduser()
    if user is None:
        private_dir(home, what="worker home")
        return
    private_dir(home, TRIAL_HOME_MODE, what="worker home")
    unreachable = _unreachable(home, user)
    if unreachable is not None:
        raise ConfigError(
            f"--trial-user {user.name} cannot pass through {unreachable} (mode {mode_of(unreachable):04o}) "
            f"to reach its trial directories under {home}; choose a --home it can reach (each "
            f"directory above it needs o+x), or chmod o+x {unreachable}"
        )
    trials, blobs = home / "trials", home / "blobs"
    trials.mkdir(mode=0o700, exist_ok=True)
    if os.stat(trials).st_uid != user.uid:
        os.chown(trials, user.uid, user.gid)
    private_dir(trials, what="trial directory")
    blobs.mkdir(mode=0o750, exist_ok=True)
    if os.stat(blobs).st_gid != user.gid:
        os.chown(blobs, 0, user.gid)
    private_dir(blobs, BLOB_DIR_MODE, what="blob directory")
    for entry in os.scandir(blobs):  # blobs cached by an earlier run, under another layout
        if entry.is_file(follow_symlinks=False):
            info = entry.stat(follow_symlinks=False)
            if info.st_gid != user.gid or stat.S_IMODE(info.st_mode) != BLOB_MODE:
                os.chown(entry.path, 0, user.gid)
                os.chmod(entry.path, BLOB_MODE)
    os.umask(TRIAL_UMASK)
    _log.info(
        "trials run as %s (uid %d, gid %d); worker home %s is 0711 (passable, not listable), "
        "trials/ belongs to %s, blobs/ is readable by its group %d, the key file stays root's",
        user.name,
        user.uid,
        user.gid,
        home,
        user.name,
        user.gid,
    )


def _unreachable(home: Path, user: TrialUser) -> Path | None:
    """The first directory from / down to ``home`` that ``user`` may not pass through, if any."""
    path = home.resolve()
    for directory in [*reversed(path.parents), path]:
        info = directory.stat()
        if info.st_uid == user.uid:
            bit = stat.S_IXUSR
        elif info.st_gid in user.groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not info.st_mode & bit:
            return directory
    return None


@contextlib.contextmanager
def file_access_of(user: TrialUser | None) -> Iterator[None]:
    """Files opened in this thread meanwhile are opened with ``user``'s permissions (Linux's
    per-thread filesystem uid and gid; root's capabilities to override them are dropped with it).

    The agent reads a trial's artefacts and log under it: what the trial could not read itself
    (the key file, through a link it left) the agent does not read for it."""
    if user is None or _setfsuid is None or _setfsgid is None:
        yield
        return
    gid = _setfsgid(user.gid)
    uid = _setfsuid(user.uid)
    try:
        yield
    finally:
        _setfsuid(uid)
        _setfsgid(gid)


def _libc_call(name: str) -> Callable[[int], int] | None:
    """A libc function taking and returning an int (Linux only; None elsewhere)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function: Callable[[int], int] = getattr(ctypes.CDLL(None, use_errno=True), name)
    except (OSError, AttributeError):
        return None
    return function


_setfsuid = _libc_call("setfsuid")
_setfsgid = _libc_call("setfsgid")


def limit_memory(extra_bytes: int) -> None:
    """Cap this process's data memory (heap and private mappings: RLIMIT_DATA, Linux) at what it
    holds now plus ``extra_bytes``: a trial past it gets allocation errors (torch's "can't allocate
    memory", a MemoryError), which fail that trial, or split its pack; the machine stays up."""
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as f:
            held = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError):
        held = 0  # no /proc: the cap counts from nothing
    resource.setrlimit(resource.RLIMIT_DATA, (held + extra_bytes, held + extra_bytes))
