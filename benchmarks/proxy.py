"""A small TCP proxy for HTTP/1.1 that makes a local GCS emulator behave like a cloud bucket.

It sits on 127.0.0.1 in front of fake-gcs-server and adds, per request, a first-byte latency
(the request is held for ``--latency-ms`` before it is passed on), per new connection a
handshake cost (``--connect-ms``, counted from the connect: the first request on a connection
waits until that long after it opened, as TCP + TLS set-up to a cloud endpoint does), per
connection a bandwidth cap on the response bytes (``--bandwidth-mbs`` MB/s) and, for all
connections together, the node's own cap
(``--node-mbs``); 0 turns a cap off. It counts what crosses it, so
a benchmark can say how many bytes each tool moved: ``GET /__proxy/stats`` answers JSON and
``GET /__proxy/reset`` zeroes the counters (both answered by the proxy itself).

A request starts where a client chunk begins with an HTTP method; request bodies are passed
on unchanged. Run: ``python -m benchmarks.proxy --upstream 127.0.0.1:4443 --port 8080``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from dataclasses import asdict, dataclass

_METHODS = (b"GET ", b"POST ", b"PUT ", b"HEAD ", b"DELETE ", b"PATCH ", b"OPTIONS ")
_READ = 256 << 10


@dataclass
class LinkStats:
    requests: int = 0
    connections: int = 0
    bytes_down: int = 0  # emulator -> client: what a node would pay for
    bytes_up: int = 0


class LinkProxy:
    """Forwards 127.0.0.1:``port`` to ``upstream`` with latency and a bandwidth cap."""

    def __init__(
        self,
        upstream: tuple[str, int],
        latency_s: float = 0.020,
        bandwidth: float = 100e6,
        connect_s: float = 0.0,
        node_bandwidth: float = 0.0,
    ) -> None:
        self.upstream = upstream
        self.latency_s = latency_s
        self.bandwidth = bandwidth
        self.connect_s = connect_s
        self.node_bandwidth = node_bandwidth
        self.stats = LinkStats()
        self._node_free_at = 0.0  # when the node's link is next idle (loop time)

    async def serve(self, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._handle, "127.0.0.1", port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted = asyncio.get_running_loop().time()  # a handshake starts when a client connects
        first = await reader.read(_READ)
        if first.startswith((b"GET /__proxy/stats", b"GET /__proxy/reset")):
            if first.startswith(b"GET /__proxy/reset"):
                self.stats = LinkStats()
            body = json.dumps(asdict(self.stats)).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            with contextlib.suppress(OSError):
                await writer.drain()
            writer.close()
            return
        self.stats.connections += 1
        # TCP + TLS handshake with a far endpoint, counted from the connect: a client that opens
        # connections ahead of its requests (as browsers preconnect) has waited part of it.
        waited = asyncio.get_running_loop().time() - accepted
        await asyncio.sleep(max(0.0, self.connect_s - waited))
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            return
        up = asyncio.create_task(self._client_to_upstream(first, reader, up_writer))
        down = asyncio.create_task(self._upstream_to_client(up_reader, writer))
        try:
            await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy is shutting down with this connection open
        finally:
            for task in (up, down):
                task.cancel()
        for stream in (writer, up_writer):
            with contextlib.suppress(Exception):
                stream.close()

    async def _client_to_upstream(
        self, first: bytes, reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter
    ) -> None:
        data = first
        while data:
            if data.startswith(_METHODS):
                self.stats.requests += 1
                await asyncio.sleep(self.latency_s)  # time to first byte of a cloud bucket
            self.stats.bytes_up += len(data)
            up_writer.write(data)
            await up_writer.drain()
            data = await reader.read(_READ)

    async def _upstream_to_client(
        self, up_reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        free_at = loop.time()
        while data := await up_reader.read(_READ):
            now = loop.time()
            # A chunk leaves once both its connection and the node's link have sent the last.
            leave = max(free_at, now)
            if self.bandwidth:
                free_at = leave + len(data) / self.bandwidth
            if self.node_bandwidth:
                node_start = max(self._node_free_at, now)
                self._node_free_at = node_start + len(data) / self.node_bandwidth
                leave = max(leave, node_start)
            if leave > now:
                await asyncio.sleep(leave - now)
            self.stats.bytes_down += len(data)
            writer.write(data)
            await writer.drain()


async def _main(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = LinkProxy(
        (host, int(port)),
        args.latency_ms / 1000,
        args.bandwidth_mbs * 1e6,
        args.connect_ms / 1000,
        args.node_mbs * 1e6,
    )
    server = await proxy.serve(args.port)
    bound = server.sockets[0].getsockname()[1]
    print(f"listening on 127.0.0.1:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the emulator")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="first-byte latency")
    parser.add_argument(
        "--bandwidth-mbs", type=float, default=100.0, help="MB/s cap per connection (0: none)"
    )
    parser.add_argument(
        "--connect-ms", type=float, default=0.0, help="extra wait on each new connection"
    )
    parser.add_argument("--node-mbs", type=float, default=0.0, help="MB/s for the node (0: none)")
    asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
