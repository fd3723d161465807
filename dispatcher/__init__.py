"""The head-node service: one ROUTER socket, the trial queue, the journal, blobs and artefacts.

It imports nothing of the client side (``retia.client``) nor of the worker (``retia.worker``).
"""

from .config import DispatcherConfig
from .service import Dispatcher

__all__ = ["Dispatcher", "DispatcherConfig"]
