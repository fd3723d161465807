"""Serving the dashboard with uvicorn: in the foreground (``retia dashboard``) or on a thread."""

from __future__ import annotations

import logging
import socket
import threading

import uvicorn
from starlette.applications import Starlette

__all__ = ["DashboardServer"]

_log = logging.getLogger(__name__)


class DashboardServer:
    """``app`` on ``host:port`` (0: any free port), its socket bound at construction (``url`` is known)."""

    def __init__(
        self, app: Starlette, host: str = "127.0.0.1", port: int = 8080, token: str | None = None
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host.strip("[]"), port))
        self.host, self.port = host, self._sock.getsockname()[1]
        self.token = token
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def run(self) -> None:
        """Serve until interrupted (Ctrl-C), in this thread."""
        try:
            self._server.run(sockets=[self._sock])
        finally:
            self._sock.close()

    def start(self) -> DashboardServer:
        """Serve on a daemon thread; returns once it accepts connections."""
        self._thread = threading.Thread(target=self.run, name="retia-dashboard", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> DashboardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
