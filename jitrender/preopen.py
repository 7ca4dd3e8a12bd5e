"""The first connection to the storage API host, opened as ``jitrender run`` starts.

A cold run's first request (the scene's stat, made by :mod:`jitrender.headstart`) used to
open its connection only once the HTTP client was imported: a TCP handshake (and a DNS
lookup) after ~60 ms of imports, before the request itself. :func:`open_early` starts that
connection in a thread as soon as the head start has read the job file and knows it reads
``gs://``; the import goes on meanwhile. :mod:`jitrender.storage`'s read pool hands the
socket to the first connection it creates for that host (:func:`take`): the handshake is over
by then. TLS, where the host speaks it, is still urllib3's, on that socket.

Nothing here imports more than :mod:`socket` (which urllib3 imports anyway). A socket no one
takes is closed with the process.
"""

from __future__ import annotations

import os
import threading
from typing import Any

GCS_API = "https://storage.googleapis.com"
CONNECT_TIMEOUT_S = 30.0  # as the read pool's own connect timeout

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
    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.sock: Any = None
        self.done = threading.Event()
        threading.Thread(target=self._connect, name="preopen", daemon=True).start()

    def _connect(self) -> None:
        try:
            import socket

            self.sock = socket.create_connection(self.address, timeout=CONNECT_TIMEOUT_S)
        except OSError:
            self.sock = None  # the pool connects as it always does
        finally:
            self.done.set()


def open_early(base: str | None = None) -> None:
    """Start connecting to ``base`` (default: :func:`api_base`) in a thread, once per host;
    not where a ``*_proxy`` variable is set (reads then go through requests and the proxy:
    :class:`jitrender.storage.GCSStore`)."""
    if any(key.lower().endswith("_proxy") and value for key, value in os.environ.items()):
        return
    address = address_of(base or api_base())
    if address is None:
        return
    with _lock:
        if address not in _early:
            _early[address] = _Early(address)


def take(host: str, port: int, socket_options: Any = None, timeout: Any = None) -> Any:
    """The connected socket opened early to ``host:port`` (waiting for its handshake, at most
    its connect timeout), once; None where none was opened or it failed. The caller's
    ``socket_options`` are applied and its ``timeout`` (a number, else left) set, as urllib3's
    ``create_connection`` does for its own sockets."""
    with _lock:
        early = _early.get((host, port))
        if early is not None and early.sock is False:  # taken already
            return None
    if early is None or not early.done.wait(CONNECT_TIMEOUT_S):
        return None
    with _lock:
        sock, early.sock = early.sock, False
    if not sock:
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
        if early.sock:
            early.sock.close()
