"""The first connections to the storage API host, opened as ``jitrender run`` starts.

A cold run's first request (the scene's stat, made by :mod:`jitrender.headstart`) used to
open its connection only once the HTTP client was imported: a TCP handshake (and a DNS
lookup) after ~60 ms of imports, before the request itself. :func:`open_early` starts that
connection in a thread as soon as the head start has read the job file and knows it reads
``gs://``; the import goes on meanwhile. :mod:`jitrender.storage`'s read pool hands the
socket to the first connection it creates for that host (:func:`take`): the handshake is over
by then. TLS, where the host speaks it, is still urllib3's, on that socket. A few more open
right after the first (``EARLY_CONNECTIONS``, all at once): the listings the head start makes
of a warm run's folders, and a cold run's first fetches, find them open.

Nothing here imports more than :mod:`socket` (which urllib3 imports anyway). A socket no one
takes is closed with the process.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Any

GCS_API = "https://storage.googleapis.com"
CONNECT_TIMEOUT_S = 30.0  # as the read pool's own connect timeout
# Opened early per host: the scene's stat and the head start's listings of a warm run (one
# request per folder of up to 1,000 objects) find a connection open; a cold run's fetches
# take the rest. Sockets nobody takes close with the process.
EARLY_CONNECTIONS = 8
# A socket opened early and not taken within this is closed, not handed out: a server may
# have dropped it meanwhile (GCS drops idle connections), and the pool's own is as quick.
FRESH_S = 5.0

_lock = threading.Lock()
_early: dict[tuple[str, int], _Early] = {}  # (host, port) -> the connection under way


def api_base() -> str:
    """The GCS JSON API's base URL: ``STORAGE_EMULATOR_HOST`` (``host:port`` meaning
    ``http://host:port``) where set, else Google's."""
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    if emulator and "://" not in emulator:
        emulator = f"http://{emulator}"
    return (emulator or GCS_API).rstrip("/")


def address_of(base: str) -> tuple[str, int] | None:
    """``(host, port)`` of a base URL (``http`` or ``https``, IPv6 hosts in brackets), as
    urllib3 connects to it; None for anything else."""
    scheme, sep, rest = base.partition("://")
    if not sep or scheme not in ("http", "https"):
        return None
    netloc = rest.split("/", 1)[0].rsplit("@", 1)[-1]
    default = 443 if scheme == "https" else 80
    if netloc.startswith("["):  # [::1]:port
        host, _, after = netloc[1:].partition("]")
        port_text = after[1:] if after.startswith(":") else ""
    else:
        host, _, port_text = netloc.partition(":")
    if not host:
        return None
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        return None
    return host, port


class _Early:
    """``count`` connections to ``address``, opened at once from one thread (non-blocking
    connects, one poll): the head start's stat takes the first, the listings it makes beside
    the run's imports the next ones."""

    def __init__(self, address: tuple[str, int], count: int) -> None:
        self.address = address
        self.count = count
        self.socks: list[tuple[float, Any]] = []  # (monotonic time opened, socket)
        self.closed = False  # forget() was called: what opens after it is closed at once
        self.done = threading.Event()
        threading.Thread(target=self._connect, name="preopen", daemon=True).start()

    def _connect(self) -> None:
        try:
            import socket

            first = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            self.done.set()  # the pool connects as it always does
            return
        # The rest to the address the first reached, all at once: a handshake's time for all.
        family, peer = first.family, first.getpeername()
        pending: dict[int, Any] = {}
        self._keep(first)
        self.done.set()
        try:
            import select

            for _ in range(self.count - 1):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
                if sock.connect_ex(peer) not in (0, errno.EINPROGRESS):
                    sock.close()
                    continue
                pending[sock.fileno()] = sock
            poller = select.poll()
            for fd in pending:
                poller.register(fd, select.POLLOUT)
            deadline = time.monotonic() + CONNECT_TIMEOUT_S
            while pending and time.monotonic() < deadline:
                for fd, _ in poller.poll(max(1, int((deadline - time.monotonic()) * 1000))):
                    poller.unregister(fd)
                    sock = pending.pop(fd)
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                        sock.close()
                        continue
                    sock.settimeout(CONNECT_TIMEOUT_S)
                    self._keep(sock)
        except OSError:
            pass
        finally:
            for sock in pending.values():
                sock.close()

    def _keep(self, sock: Any) -> None:
        with _lock:
            if not self.closed:
                self.socks.append((time.monotonic(), sock))
                return
        sock.close()


def open_early(base: str | None = None, count: int = EARLY_CONNECTIONS) -> None:
    """Start ``count`` connections to ``base`` (default: :func:`api_base`) in a thread, once
    per host; not where a ``*_proxy`` variable is set (reads then go through requests and
    the proxy: :class:`jitrender.storage.GCSStore`)."""
    if any(key.lower().endswith("_proxy") and value for key, value in os.environ.items()):
        return
    address = address_of(base or api_base())
    if address is None:
        return
    with _lock:
        if address not in _early:
            _early[address] = _Early(address, count)


def take(host: str, port: int, socket_options: Any = None, timeout: Any = None) -> Any:
    """A connected socket opened early to ``host:port`` (waiting for the first one's
    handshake, at most its connect timeout), each once and only within ``FRESH_S`` of its
    opening; None where none is left. The caller's ``socket_options`` are applied and its
    ``timeout`` (a number, else left) set, as urllib3's ``create_connection`` does for its
    own sockets."""
    with _lock:
        early = _early.get((host, port))
    if early is None or not early.done.wait(CONNECT_TIMEOUT_S):
        return None
    sock, stale = None, []
    with _lock:
        while early.socks and sock is None:
            opened, candidate = early.socks.pop(0)
            if time.monotonic() - opened < FRESH_S:
                sock = candidate
            else:
                stale.append(candidate)
    for candidate in stale:
        candidate.close()
    if sock is None:
        return None
    try:
        for option in socket_options or ():
            sock.setsockopt(*option)
        if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
            sock.settimeout(timeout)
    except OSError:
        sock.close()
        return None
    return sock


def forget() -> None:
    """Close and drop every socket opened early and not taken (tests; a process that
    changes its storage settings)."""
    with _lock:
        opened = list(_early.values())
        _early.clear()
    for early in opened:
        early.done.wait(CONNECT_TIMEOUT_S)
        with _lock:
            socks, early.socks, early.closed = early.socks, [], True
        for _, sock in socks:
            sock.close()
