"""Ranged, concurrent chunk downloads against a real GCS API server (fake-gcs-server)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import google_crc32c
import pytest

from jitrender import transport as transport_module
from jitrender.cache import Cache
from jitrender.deps import Dependency
from jitrender.errors import Preempted
from jitrender.inputs import Inputs
from jitrender.storage import ChecksumMismatch, GCSStore, ObjectInfo, Store
from jitrender.transfer import (
    CHUNK_WORKERS,
    InflightBudget,
    RangedDownloader,
    chunk_ranges,
    crc32c_combine,
)
from tests.conftest import put_object

CHUNK = 256 << 10


class _Corrupting(Store):
    """A GCS store whose download of one range flips a byte or drops the tail."""

    def __init__(self, inner: GCSStore, bad_start: int, mode: str) -> None:
        self.inner = inner
        self.bad_start = bad_start
        self.mode = mode

    def stat(self, url: str) -> ObjectInfo | None:
        return self.inner.stat(url)

    def list(self, prefix_url: str, *, recursive: bool = True) -> list[ObjectInfo]:
        return self.inner.list(prefix_url, recursive=recursive)

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        if start != self.bad_start:
            self.inner.download(info, sink, start, end)
            return
        real = _Buffer()
        self.inner.download(info, real, start, end)  # type: ignore[arg-type]
        data = bytes(real.data)
        if self.mode == "flip":
            data = data[:10] + bytes([data[10] ^ 0xFF]) + data[11:]
        else:
            data = data[: len(data) // 2]
        sink.write(data)

    def put_if_absent(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        raise AssertionError("not used")

    def delete(self, url: str) -> None:
        raise AssertionError("not used")


class _Buffer:
    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, chunk: bytes) -> int:
        self.data += chunk
        return len(chunk)

    def flush(self) -> None:
        return None


def _object(gcs_bucket: str, size: int) -> tuple[ObjectInfo, bytes]:
    data = os.urandom(size)
    url = f"{gcs_bucket}/plates/big.exr"
    put_object(url, data)
    info = GCSStore().stat(url)
    assert info is not None and info.crc32c is not None
    return info, data


def test_ranged_download_gives_the_exact_bytes_and_crc(gcs_bucket: str, tmp_path: Path) -> None:
    info, data = _object(gcs_bucket, 5 * CHUNK + 12345)  # last range shorter than the rest
    dest = tmp_path / "big.part"
    digest = RangedDownloader(chunk_bytes=CHUNK, workers=4).download(info, GCSStore(), dest)
    assert dest.read_bytes() == data
    assert digest == info.crc32c


def test_large_object_through_the_cache_is_fetched_in_ranges(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    info, data = _object(gcs_bucket, 3 * CHUNK + 7)
    seen: list[tuple[int, int | None]] = []
    store = GCSStore()
    original = store.download

    def spy(i: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None) -> None:
        seen.append((start, end))
        original(i, sink, start, end)

    monkeypatch.setattr(store, "download", spy)
    cache = _ranged_cache(tmp_path, monkeypatch)
    result = cache.fetch(info, store)
    assert result.fetched and result.path.read_bytes() == data
    assert sorted(seen) == [(s, e) for s, e in chunk_ranges(info.size, CHUNK)]


@pytest.mark.parametrize("mode", ["flip", "truncate"])
def test_a_corrupt_or_short_range_leaves_no_cache_entry(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    info, _ = _object(gcs_bucket, 4 * CHUNK)
    cache = _ranged_cache(tmp_path, monkeypatch)
    with pytest.raises(ChecksumMismatch):
        cache.fetch(info, _Corrupting(GCSStore(), bad_start=2 * CHUNK, mode=mode))
    assert cache.lookup(info) is None
    assert not cache.object_path(info).exists()
    assert list(cache.tmp.iterdir()) == []


def test_crc32c_combine_matches_the_checksum_of_the_concatenation() -> None:
    a, b = os.urandom(1000), os.urandom(70001)

    def crc(data: bytes) -> int:
        return int.from_bytes(google_crc32c.Checksum(data).digest(), "big")

    assert crc32c_combine(crc(a), crc(b), len(b)) == crc(a + b)
    assert crc32c_combine(0, crc(b), len(b)) == crc(b)


def test_inflight_budget_admits_in_order_and_lets_an_oversized_object_through() -> None:
    budget = InflightBudget(100)
    assert budget.acquire(500)  # alone, larger than the cap: still admitted
    assert not budget.acquire(10, should_stop=lambda: True)  # cap full: waits, then gives up
    budget.release(500)


def test_concurrent_fetches_are_all_indexed(local_bucket: str, tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from jitrender.storage import LocalStore

    store = LocalStore()
    for i in range(64):
        put_object(f"{local_bucket}/tex/t{i:02d}.tx", os.urandom(100 + i))
    infos = store.list(f"{local_bucket}/tex/")
    cache = Cache(tmp_path / "cache")
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda info: cache.fetch(info, store), infos))
    assert all(r.fetched for r in results)
    stats = cache.stats()
    assert stats["entries"] == 64
    assert stats["bytes"] == sum(i.size for i in infos)


class _Gated(GCSStore):
    """A GCS store that records when each range starts and can hold one range until a gate
    opens (bounded), to see what the scheduler does meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[tuple[str, int]] = []
        self.hold: tuple[str, int] | None = None  # (object name, range start); ("*", -1): the first
        self.gate = threading.Event()
        self.held_through: list[bool] = []  # per held range: the gate opened (not timed out)

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        name = info.url.rsplit("/", 1)[-1]
        self.started.append((name, start))
        if (name, start) == self.hold or (self.hold == ("*", -1) and len(self.started) == 1):
            self.held_through.append(self.gate.wait(10))
        super().download(info, sink, start, end)


def _large_objects(gcs_bucket: str, names: list[str], size: int) -> dict[str, bytes]:
    objects = {name: os.urandom(size) for name in names}
    for name, data in objects.items():
        put_object(f"{gcs_bucket}/seq/{name}", data)
    return objects


def _ranged_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workers: int = CHUNK_WORKERS
) -> Cache:
    """A cache whose objects from ``CHUNK`` bytes on are fetched as ``CHUNK``-sized ranges."""
    monkeypatch.setattr(transport_module, "LARGE_OBJECT_BYTES", CHUNK)
    cache = Cache(tmp_path / "cache")
    cache.ranged = RangedDownloader(chunk_bytes=CHUNK, workers=workers)
    return cache


def _prefetch(
    inputs: Inputs, store: Store, bucket: str, names: Iterable[str], monkeypatch: pytest.MonkeyPatch
) -> list[Dependency]:
    """Prefetch ``bucket/seq/<name>`` from ``store``, the i-th name for frame i + 1; returns
    the dependencies prefetched."""
    monkeypatch.setattr(inputs, "store", lambda url: store)
    deps = inputs.stat_all(
        [Dependency(n, f"{bucket}/seq/{n}", (i + 1,)) for i, n in enumerate(names)]
    )
    inputs.prefetch(deps)
    return deps


def test_prefetch_starts_the_next_objects_ranges_while_the_current_ones_last_is_arriving(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Budget of one object: admitting the next one only once the current one had arrived in
    # full would leave the link idle between them (each object's slowest range alone).
    objects = _large_objects(gcs_bucket, ["p.0001.exr", "p.0002.exr"], 4 * CHUNK)
    cache = _ranged_cache(tmp_path, monkeypatch, workers=4)
    store = _Gated()
    store.hold = ("p.0001.exr", 3 * CHUNK)  # the first object's last range waits ...

    def opened(name: str) -> None:  # ... until the second object's first range is asked for
        if name == "p.0002.exr":
            store.gate.set()

    original = store.download
    monkeypatch.setattr(
        store,
        "download",
        lambda info, sink, start=0, end=None: (
            opened(info.url.rsplit("/", 1)[-1]),
            original(info, sink, start, end),
        )[1],
    )
    inputs = Inputs(cache, tmp_path / "ws", prefetch_bytes=4 * CHUNK)
    _prefetch(inputs, store, gcs_bucket, objects, monkeypatch)
    inputs.wait([1, 2])
    inputs.close()
    assert store.held_through == [True]
    for name, data in objects.items():
        assert inputs.local_path(f"{gcs_bucket}/seq/{name}").read_bytes() == data


def test_ranges_are_served_in_the_order_their_downloads_were_admitted(
    gcs_bucket: str, tmp_path: Path
) -> None:
    objects = _large_objects(gcs_bucket, ["gate.vdb", "f1.vdb", "f2.vdb"], 2 * CHUNK)
    store = _Gated()
    store.hold = ("gate.vdb", CHUNK)  # the one worker is busy while both others queue
    ranged = RangedDownloader(chunk_bytes=CHUNK, workers=1)
    first, second = ranged.reserve(), ranged.reserve()
    infos = {n: store.stat(f"{gcs_bucket}/seq/{n}") for n in objects}
    digests: dict[str, str] = {}

    def fetch(name: str, order: int | None) -> None:
        info = infos[name]
        assert info is not None
        if order is None:
            digests[name] = ranged.download(info, store, tmp_path / name)
            return
        with ranged.scheduled(order):
            digests[name] = ranged.download(info, store, tmp_path / name)

    threads = [threading.Thread(target=fetch, args=("gate.vdb", None))]
    threads[0].start()
    while ("gate.vdb", CHUNK) not in store.started:
        time.sleep(0.01)
    # Asked for in the wrong order (threads race): the reserved order still decides.
    for name, order in (("f2.vdb", second), ("f1.vdb", first)):
        threads.append(threading.Thread(target=fetch, args=(name, order)))
        threads[-1].start()
        time.sleep(0.2)
    store.gate.set()
    for thread in threads:
        thread.join(10)
    ranged.close()
    assert store.started[2:] == [("f1.vdb", 0), ("f1.vdb", CHUNK), ("f2.vdb", 0), ("f2.vdb", CHUNK)]
    for name, data in objects.items():
        assert (tmp_path / name).read_bytes() == data
        assert digests[name] == infos[name].crc32c  # type: ignore[union-attr]


def test_a_stopped_run_drops_the_queued_ranges_and_leaves_no_partial_entry(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = _large_objects(gcs_bucket, ["p.0001.exr", "p.0002.exr"], 2 * CHUNK)
    cache = _ranged_cache(tmp_path, monkeypatch, workers=1)
    store = _Gated()
    store.hold = ("*", -1)  # whichever range the one worker takes first
    stop = threading.Event()
    inputs = Inputs(cache, tmp_path / "ws", stop=stop, prefetch_bytes=8 * CHUNK)
    deps = _prefetch(inputs, store, gcs_bucket, objects, monkeypatch)
    while not store.started:
        time.sleep(0.01)
    stop.set()  # SIGTERM: what is queued is not asked for
    store.gate.set()
    with pytest.raises(Preempted):
        inputs.wait([1, 2])
    deadline = time.monotonic() + 10
    while list(cache.tmp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    inputs.close()
    assert len(store.started) == 1  # the held range; every queued one was dropped
    assert list(cache.tmp.iterdir()) == []
    for dep in deps:
        assert cache.lookup(store.stat(dep.url)) is None  # type: ignore[arg-type]
