"""The head node's home checked at start: 0700, the journal 0600, a key file with a bad mode refused.

The home holds the cluster key, the journal (every payload and result) and the artefacts: only
the dispatcher's user may reach it. What group or others could reach is fixed with a warning
(:mod:`retia.filemodes`); a key file they could read is refused when it is loaded
(:func:`retia.keys.load_key`), since it may have been copied already.
"""

from __future__ import annotations

from retia.filemodes import private_dir

from .config import DispatcherConfig

__all__ = ["secure_home"]


def secure_home(config: DispatcherConfig) -> None:
    """Create the home 0700 (or make it so) and its artefact, blob and certificate directories
    0700, each change logged; before the key is created or read. (The journal, which may live
    elsewhere, is made 0600 where it is opened: ``journal.secure_journal_files``.)"""
    private_dir(config.home_dir, what="dispatcher home")
    for name in ("artifacts", "blobs", "curve"):
        if (config.home_dir / name).is_dir():
            private_dir(config.home_dir / name, what=f"{name} directory")
