"""A TCP proxy on 127.0.0.1 that can cut the line (a real network fault between a peer and the dispatcher)
and records what peers send (what an eavesdropper on the line sees), to replay it byte for byte."""

from __future__ import annotations

import select
import socket
import struct
import threading
import time
from types import TracebackType


class CuttableProxy:
    """Forwards connections on a free port to ``upstream`` (``tcp://host:port``) until :meth:`cut`.

    A cut resets every connection (RST: what was in flight is lost) and refuses new ones for a
    while, as a switch that reboots would; ZeroMQ then reconnects on its own."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("tcp://").rsplit(":", 1)
        self._upstream = (host, int(port))
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        self.sent: list[bytearray] = []  # per connection, in order: every byte the peer sent upstream
        self._stopped = threading.Event()
        listener = self._listen(0)
        self._listener: socket.socket | None = listener  # None while the line is cut
        self.port: int = listener.getsockname()[1]
        self.address = f"tcp://127.0.0.1:{self.port}"
        self._threads = [threading.Thread(target=self._accept_loop, daemon=True)]
        self._threads[0].start()

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(16)
        listener.settimeout(0.05)
        return listener

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                down, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            try:
                up = socket.create_connection(self._upstream, timeout=2)
            except OSError:
                down.close()
                continue
            with self._lock:
                self._conns += [down, up]
                self.sent.append(bytearray())
                record = self.sent[-1]
            pump = threading.Thread(target=self._pump, args=(down, up, record), daemon=True)
            pump.start()
            self._threads.append(pump)

    def _pump(self, a: socket.socket, b: socket.socket, record: bytearray) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stopped.is_set():
                readable, _, _ = select.select([a, b], [], [], 0.05)
                for sock in readable:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if sock is a:
                        record += data
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # reset by a cut (a closed socket's fd is -1)
            return
        finally:
            _reset(a)
            _reset(b)

    def cut(self, seconds: float) -> None:
        """Reset every connection now and refuse new ones for ``seconds``."""
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for conn in conns:
            _reset(conn)
        time.sleep(seconds)
        with self._lock:
            self._listener = self._listen(self.port)

    def close(self) -> None:
        self._stopped.set()
        for thread in self._threads:
            thread.join(timeout=2)
        with self._lock:
            if self._listener is not None:
                self._listener.close()
            for conn in self._conns:
                _reset(conn)

    def __enter__(self) -> CuttableProxy:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    """Close with an RST (linger 0): unsent bytes are discarded, as on a broken line."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


def replay(address: str, data: bytes, listen: float) -> list[list[bytes]]:
    """Send ``data`` (a peer's recorded stream, ZMTP greeting included) on a new TCP connection to
    ``address``, as an attacker replaying a capture would, and return the messages that came back
    within ``listen`` seconds (ZMTP 3 frames, NULL mechanism, read here by hand)."""
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    received = bytearray()
    with socket.create_connection((host, int(port)), timeout=2) as conn:
        conn.sendall(data)
        deadline = time.monotonic() + listen
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([conn], [], [], left)
            if not readable:
                continue
            chunk = conn.recv(1 << 16)
            if not chunk:
                break
            received += chunk
    return zmtp_messages(bytes(received))


def zmtp_messages(stream: bytes) -> list[list[bytes]]:
    """The messages in a ZMTP 3 byte stream from its start (64-byte greeting, then frames: a flags byte
    (1 more, 2 long size, 4 command), the size, the body); commands are skipped."""
    messages: list[list[bytes]] = []
    frames: list[bytes] = []
    at = 64
    while at < len(stream):
        flags = stream[at]
        if flags & 2:
            if at + 9 > len(stream):
                break
            size, at = struct.unpack(">Q", stream[at + 1 : at + 9])[0], at + 9
        else:
            if at + 2 > len(stream):
                break
            size, at = stream[at + 1], at + 2
        body, at = stream[at : at + size], at + size
        if len(body) < size:
            break
        if flags & 4:
            continue
        frames.append(body)
        if not flags & 1:
            messages.append(frames)
            frames = []
    return messages
