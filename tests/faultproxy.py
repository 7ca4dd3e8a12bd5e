"""A fault-injecting HTTP proxy for tests: sits between a storage client and fake-gcs-server
on 127.0.0.1 and, at a given rate, answers 503 or 429, resets the connection (before or after
the request reached the server), truncates the response body, or stalls. Tests can also add
rules that single out requests (a 404 for one object, a 403 for everything, holding an upload
so that the client can be killed mid-flight).

Bounded: every stall and hold has a ceiling, the server's threads are daemons, and
:meth:`FaultProxy.stop` shuts it down.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

RANDOM_FAULTS = ("503", "429", "reset", "reset_after", "truncate", "stall")
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "upgrade"}
MAX_HOLD_S = 30.0


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # with its query, percent-decoded
    body: bytes
    range: str = ""  # the Range header, where one was sent
    connection: int = -1  # which connection it came on: its index in FaultProxy.connections

    @property
    def is_upload(self) -> bool:
        return self.path.startswith("/upload/")

    @property
    def is_download(self) -> bool:
        return "alt=media" in self.path

    def names(self, text: str) -> bool:
        """True when ``text`` (an object name, say) appears in the path or an upload's body."""
        return text in self.path or text.encode() in self.body[:4096]


@dataclass
class Fault:
    """What to do with one request: ``kind`` is a RANDOM_FAULTS name, ``status`` (answer with
    this status, not forwarded), ``corrupt`` (the answer's first byte flipped), ``stall_body``
    (headers and half the body sent, then silence on the open connection until ``release``,
    bounded, then a reset), ``hold``
    (signal ``held`` and wait for ``release``, bounded, then ``forward`` it or drop the
    connection), or ``pass``."""

    kind: str
    status: int = 0
    forward: bool = False
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


Rule = Callable[[Request], Fault | None]


def hold_first(proxy: FaultProxy, matches: Callable[[Request], bool]) -> Fault:
    """Hold the first request ``matches`` accepts until the test releases it (then forward it)."""
    hold = Fault("hold", forward=True)
    taken: list[Request] = []

    def rule(request: Request) -> Fault | None:
        if taken or not matches(request):
            return None
        taken.append(request)
        return hold

    proxy.rules.append(rule)
    return hold


def first_only(matches: Callable[[Request], bool], kind: str) -> tuple[Rule, list[Request]]:
    """A rule giving a ``kind`` fault to the first request ``matches`` accepts (later ones
    pass), and the list that request is put in once it has come."""
    hit: list[Request] = []

    def rule(request: Request) -> Fault | None:
        if hit or not matches(request):
            return None
        hit.append(request)
        return Fault(kind)

    return rule, hit


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        faults: tuple[str, ...] = RANDOM_FAULTS,
        seed: int = 0,
        stall_s: float = 1.0,
    ) -> None:
        parts = urlsplit(upstream)
        self.upstream_host = parts.hostname or "127.0.0.1"
        self.upstream_port = parts.port or 80
        self.rate = rate
        self.faults = faults
        self.stall_s = min(stall_s, 5.0)
        self.rules: list[Rule] = []
        self.counts: Counter[str] = Counter()
        self.requests: list[Request] = []
        self.connections: list[float] = []  # when each connection was accepted (monotonic)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FaultProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @contextmanager
    def rule(self, rule: Rule) -> Iterator[None]:
        self.rules.append(rule)
        try:
            yield
        finally:
            self.rules.remove(rule)

    def _choose(self, request: Request) -> Fault | None:
        with self._lock:
            self.requests.append(request)
        for rule in list(self.rules):
            fault = rule(request)
            if fault is not None:
                return fault
        with self._lock:
            if self.rate and self._random.random() < self.rate:
                return Fault(self._random.choice(self.faults))
        return None

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                return

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    self.serial = len(proxy.connections)
                    proxy.connections.append(time.monotonic())

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:
                    return  # the client went away (or we reset it on purpose)

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _reset(self) -> None:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.close_connection = True
                self.connection.close()

            def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
                conn = http.client.HTTPConnection(
                    proxy.upstream_host, proxy.upstream_port, timeout=30
                )
                try:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP
                    }
                    headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    data = response.read()
                    return response.status, response.getheaders(), data
                finally:
                    conn.close()

            def _send(
                self,
                status: int,
                headers: list[tuple[str, str]],
                data: bytes,
                cut: bool = False,
                hold: Fault | None = None,
            ) -> None:
                self.send_response(status)
                for key, value in headers:
                    if key.lower() not in _HOP_BY_HOP:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if cut:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    if hold is not None:
                        hold.held.set()
                        hold.release.wait(MAX_HOLD_S)
                    self._reset()
                    return
                self.wfile.write(data)

            def _proxy(self) -> None:
                body = self._body()
                request = Request(
                    self.command,
                    unquote(self.path),
                    body,
                    self.headers.get("Range", ""),
                    self.serial,
                )
                fault = proxy._choose(request)
                kind = fault.kind if fault is not None else "pass"
                with proxy._lock:
                    proxy.counts[kind] += 1
                if fault is not None and fault.kind == "hold":
                    fault.held.set()
                    fault.release.wait(MAX_HOLD_S)
                    if not fault.forward:
                        self._reset()
                        return
                    kind = "pass"
                if kind == "status" and fault is not None:
                    error = b'{"error": {"code": %d, "message": "injected"}}' % fault.status
                    self._send(fault.status, [("Content-Type", "application/json")], error)
                    return
                if kind in ("503", "429"):
                    error = b'{"error": {"code": %s, "message": "injected"}}' % kind.encode()
                    self._send(int(kind), [("Content-Type", "application/json")], error)
                    return
                if kind == "reset":
                    self._reset()
                    return
                if kind == "stall":
                    time.sleep(proxy.stall_s)
                status, headers, data = self._forward(body)
                if kind == "reset_after":
                    self._reset()
                    return
                if kind == "corrupt" and data:  # (never random) one byte flipped, same length
                    data = bytes([data[0] ^ 0xFF]) + data[1:]
                if kind == "stall_body" and fault is not None and len(data) > 1:
                    # (never random) headers and half the body sent, then nothing: the
                    # connection stays open until ``release`` (bounded), then is reset.
                    self._send(status, headers, data, cut=True, hold=fault)
                    return
                self._send(status, headers, data, cut=kind == "truncate" and len(data) > 1)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _proxy

        return Handler
