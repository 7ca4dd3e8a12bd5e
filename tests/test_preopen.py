"""The storage API connection opened before the HTTP client is imported
(:mod:`jitrender.preopen`), against fake-gcs-server behind the fault proxy, which says on which
accepted connection each request came.

The promises: the first request of the read pool goes out on the connection opened early (no
second handshake), and only the first; where the early connection could not be opened the pool
connects as it always did; with a proxy configured nothing is opened early. Whole runs (the
head start opens it) are :mod:`tests.test_headstart`'s: their first request is the scene's
stat, on the run's first connection."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from jitrender import preopen
from jitrender.storage import GCSStore
from tests.conftest import put_object
from tests.faultproxy import FaultProxy


@pytest.fixture(autouse=True)
def _nothing_left_open() -> Iterator[None]:
    preopen.forget()
    yield
    preopen.forget()


def _until(check: object, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_the_first_requests_go_out_on_the_connections_opened_early(
    gcs_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_object(f"{gcs_bucket}/scene.txt", b"x")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    preopen.open_early(count=3)
    _until(lambda: len(proxy.connections) == 3)  # accepted, and not a request on them yet
    assert proxy.requests == []
    store = GCSStore()
    first = store.stat(f"{gcs_bucket}/scene.txt")
    second = store.stat(f"{gcs_bucket}/scene.txt")
    assert first is not None and first.size == 1 and second == first
    assert [r.connection for r in proxy.requests] == [0, 0]  # kept alive and reused
    # Each taken once: a second pool (say, after the settings change) takes the next one, a
    # third the last; then a pool connects as usual.
    GCSStore().stat(f"{gcs_bucket}/scene.txt")
    GCSStore().stat(f"{gcs_bucket}/scene.txt")
    assert len(proxy.connections) == 3
    assert sorted(r.connection for r in proxy.requests[2:]) == [1, 2]
    assert preopen.take(*_address(proxy)) is None
    GCSStore().stat(f"{gcs_bucket}/scene.txt")
    assert proxy.requests[-1].connection == 3


def test_a_connection_opened_early_and_left_too_long_is_closed_not_handed_out(
    gcs_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_object(f"{gcs_bucket}/scene.txt", b"x")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    preopen.open_early(count=2)
    _until(lambda: len(proxy.connections) == 2)
    monkeypatch.setattr(preopen, "FRESH_S", 0.0)  # both older than that now
    assert preopen.take(*_address(proxy)) is None
    GCSStore().stat(f"{gcs_bucket}/scene.txt")
    assert [r.connection for r in proxy.requests] == [2]  # a connection of the pool's own


def test_where_the_early_connection_fails_the_pool_connects_as_always(
    gcs_bucket: str, proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_object(f"{gcs_bucket}/scene.txt", b"xy")
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: the early connect is refused
    preopen.open_early(f"http://127.0.0.1:{port}")
    assert preopen.take("127.0.0.1", port) is None
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    info = GCSStore().stat(f"{gcs_bucket}/scene.txt")
    assert info is not None and info.size == 2
    assert [r.connection for r in proxy.requests] == [0]


def test_nothing_is_opened_early_where_a_proxy_is_configured(
    proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    preopen.open_early(proxy.url)
    time.sleep(0.1)
    assert proxy.connections == []
    assert preopen.take(*_address(proxy)) is None


@pytest.mark.parametrize(
    ("base", "address"),
    [
        ("https://storage.googleapis.com", ("storage.googleapis.com", 443)),
        ("http://127.0.0.1:4443", ("127.0.0.1", 4443)),
        ("http://localhost", ("localhost", 80)),
        ("http://[::1]:9023/storage/v1", ("::1", 9023)),
        ("https://user@gcs.example:8443/", ("gcs.example", 8443)),
        ("ftp://host:21", None),
        ("127.0.0.1:4443", None),
        ("http://host:port", None),
        ("http://:80", None),
    ],
)
def test_address_of(base: str, address: tuple[str, int] | None) -> None:
    assert preopen.address_of(base) == address


def test_api_base_reads_the_emulator_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert preopen.api_base() == "https://storage.googleapis.com"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    assert preopen.api_base() == "http://127.0.0.1:4443"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://emu:9000/")
    assert preopen.api_base() == "http://emu:9000"


def _address(proxy: FaultProxy) -> tuple[str, int]:
    address = preopen.address_of(proxy.url)
    assert address is not None
    return address
