"""The asyncio small-object path against the real GCS API server: the same guarantees as the
thread path (exact bytes, one download per object across processes, nothing partial left,
errors classified the same way)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jitrender.aio import AsyncFetcher
from jitrender.cache import Cache
from jitrender.errors import MissingDependencyError, TransientError
from jitrender.storage import GCSStore, ObjectInfo, RetryPolicy
from tests.conftest import put_object

ROOT = Path(__file__).resolve().parent.parent
QUICK = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(4) as executor:
        yield executor


def _infos(store: GCSStore, prefix: str) -> list[ObjectInfo]:
    return sorted(store.list(prefix), key=lambda i: i.url)


def test_small_objects_arrive_exact_and_indexed(
    gcs_bucket: str, cache_dir: Path, pool: ThreadPoolExecutor
) -> None:
    for i in range(40):
        put_object(f"{gcs_bucket}/tex/t{i:03d}.tx", bytes([i]) * (1000 + i))
    store = GCSStore()
    infos = _infos(store, f"{gcs_bucket}/tex/")
    cache = Cache(cache_dir)
    fetcher = AsyncFetcher(cache, QUICK, pool)
    results = [f.result(timeout=30) for f in [fetcher.fetch(i, store) for i in infos]]
    fetcher.close()
    assert all(r.fetched for r in results)
    for i, result in enumerate(results):
        assert result.path.read_bytes() == bytes([i]) * (1000 + i)
    assert cache.stats()["entries"] == 40  # every renamed file is in the index
    assert list(cache.tmp.iterdir()) == []
    again = AsyncFetcher(cache, QUICK, pool)
    assert not any(f.result(timeout=30).fetched for f in [again.fetch(i, store) for i in infos])
    again.close()


def test_checksum_mismatch_is_retried_then_transient_and_leaves_nothing(
    gcs_bucket: str, cache_dir: Path, pool: ThreadPoolExecutor
) -> None:
    put_object(f"{gcs_bucket}/a.bin", b"real bytes")
    store = GCSStore()
    (info,) = _infos(store, f"{gcs_bucket}/")
    lying = ObjectInfo(info.url, info.size, info.generation, "AAAAAA==")
    cache = Cache(cache_dir)
    fetcher = AsyncFetcher(cache, QUICK, pool)
    with pytest.raises(TransientError, match="crc32c"):
        fetcher.fetch(lying, store).result(timeout=30)
    fetcher.close()
    assert cache.lookup(lying) is None
    assert list(cache.tmp.iterdir()) == []


def test_missing_object_is_a_missing_dependency(
    gcs_bucket: str, cache_dir: Path, pool: ThreadPoolExecutor
) -> None:
    gone = ObjectInfo(f"{gcs_bucket}/gone.png", 10, "1", None)
    fetcher = AsyncFetcher(Cache(cache_dir), QUICK, pool)
    with pytest.raises(MissingDependencyError):
        fetcher.fetch(gone, GCSStore()).result(timeout=30)
    fetcher.close()


def test_waits_for_another_process_download_lock(
    gcs_bucket: str, cache_dir: Path, pool: ThreadPoolExecutor
) -> None:
    put_object(f"{gcs_bucket}/b.bin", b"b" * 5000)
    store = GCSStore()
    (info,) = _infos(store, f"{gcs_bucket}/")
    cache = Cache(cache_dir)
    held = cache._lock_stripe(cache.key(info), wait=False)  # as another process's download
    assert held is not None
    fetcher = AsyncFetcher(cache, QUICK, pool)
    future = fetcher.fetch(info, store)
    time.sleep(0.3)
    assert not future.done()
    os.close(held)
    assert future.result(timeout=30).path.read_bytes() == b"b" * 5000
    fetcher.close()
