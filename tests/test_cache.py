"""The node-local cache against the real GCS API server: single flight across processes,
rename-after-verify, identity by generation, and eviction that never breaks a running job."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from jitrender.cache import Cache, run_is_live
from jitrender.errors import DataError
from jitrender.storage import GCSStore, LocalStore, ObjectInfo
from jitrender.transfer import LARGE_OBJECT_BYTES
from tests.conftest import put_object

ROOT = Path(__file__).resolve().parent.parent


def _info(store: GCSStore, url: str) -> ObjectInfo:
    info = store.stat(url)
    assert info is not None
    return info


def test_cache_folder_is_private_and_has_no_pickle(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700
    source = (ROOT / "jitrender" / "cache.py").read_text()
    assert "pickle" not in source.replace("no pickle", "").replace("unpickled", "")
    assert cache.stats()["entries"] == 0


def test_cold_fetch_then_warm_hit(gcs_bucket: str, cache_dir: Path) -> None:
    store = GCSStore()
    put_object(f"{gcs_bucket}/tex/a.png", b"a" * 1000)
    info = _info(store, f"{gcs_bucket}/tex/a.png")
    cache = Cache(cache_dir)
    cold = cache.fetch(info, store)
    assert cold.fetched and cold.bytes_fetched == 1000
    assert cold.path.read_bytes() == b"a" * 1000
    warm = cache.fetch(info, store)
    assert not warm.fetched and warm.path == cold.path
    assert (cache.stats()["entries"], cache.stats()["bytes"]) == (1, 1000)


def test_changed_object_is_refetched(gcs_bucket: str, cache_dir: Path) -> None:
    store = GCSStore()
    url = f"{gcs_bucket}/tex/a.png"
    put_object(url, b"version one")
    cache = Cache(cache_dir)
    first = cache.fetch(_info(store, url), store)
    put_object(url, b"version two!")
    second = cache.fetch(_info(store, url), store)
    assert second.fetched and second.path != first.path
    assert second.path.read_bytes() == b"version two!"
    again = cache.fetch(_info(store, url), store)
    assert not again.fetched


def test_corrupt_download_is_rejected_and_leaves_nothing(gcs_bucket: str, cache_dir: Path) -> None:
    store = GCSStore()
    url = f"{gcs_bucket}/a.bin"
    put_object(url, b"real bytes")
    info = _info(store, url)
    lying = ObjectInfo(info.url, info.size, info.generation, "AAAAAA==")
    cache = Cache(cache_dir)
    from jitrender.storage import ChecksumMismatch

    with pytest.raises(ChecksumMismatch):
        cache.fetch(lying, store)
    assert cache.lookup(lying) is None
    assert list(cache.tmp.iterdir()) == []


FETCH_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from jitrender.aio import AsyncFetcher
    from jitrender.cache import Cache
    from jitrender.storage import GCSStore, RetryPolicy
    cache = Cache(Path(sys.argv[1]))
    store = GCSStore()
    infos = [store.stat(u) for u in sys.argv[3:]]
    if sys.argv[2] == "asyncio":
        with ThreadPoolExecutor(4) as pool:
            fetcher = AsyncFetcher(cache, RetryPolicy(), pool)
            fetched = [f.result().fetched for f in [fetcher.fetch(i, store) for i in infos]]
            fetcher.close()
    else:
        fetched = [cache.fetch(i, store).fetched for i in infos]
    print(json.dumps(fetched))
    """
)


def test_eight_processes_on_both_fetch_paths_download_each_object_once(
    gcs_bucket: str, cache_dir: Path
) -> None:
    """Four processes fetch on the thread path, four on the asyncio path, all at once."""
    urls = [f"{gcs_bucket}/seq/p.{i:04d}.exr" for i in range(1, 25)]
    for i, url in enumerate(urls):
        put_object(url, bytes([i]) * 150_000)
    Cache(cache_dir)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", FETCH_SCRIPT, str(cache_dir), path, *urls],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for path in ["threads", "asyncio"] * 4
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    per_object = [sum(r[i] for r in results) for i in range(len(urls))]
    assert per_object == [1] * len(urls), per_object
    verified = Cache(cache_dir).verify()
    assert (verified["checked"], verified["bad"]) == (len(urls), 0)


STALL_SCRIPT = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from jitrender.cache import Cache
    from jitrender.storage import LocalStore

    said = threading.Lock()  # (a ranged download's pieces stall on several threads)

    class StallingStore(LocalStore):
        def download(self, info, sink, start=0, end=None):
            sink.write(b"x" * (((info.size if end is None else end) - start) // 2))
            sink.flush()
            if said.acquire(blocking=False):
                print("half", flush=True)
            time.sleep(600)

    store = StallingStore()
    url = sys.argv[2]
    Cache(Path(sys.argv[1])).fetch(store.stat(url), store)
    """
)


@pytest.mark.parametrize("size", [1_000_000, 9 << 20], ids=["whole", "ranged"])
def test_download_killed_half_way_leaves_no_entry(
    tmp_path: Path, cache_dir: Path, size: int
) -> None:
    """The store stalls after half the bytes (standing in for a network that hangs) and the
    process is SIGKILLed: the real cache must show nothing, and a retry must succeed. A whole
    download was an unnamed file (nothing is left at all); a ranged one leaves its temp file,
    which the next clean-up removes."""
    source = tmp_path / "bucket" / "big.exr"
    source.parent.mkdir()
    source.write_bytes(os.urandom(size))
    left = 1 if size >= LARGE_OBJECT_BYTES else 0
    url = f"file://{source}"
    proc = subprocess.Popen(
        [sys.executable, "-c", STALL_SCRIPT, str(cache_dir), url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "half"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    store = LocalStore()
    info = store.stat(url)
    assert info is not None
    cache = Cache(cache_dir)
    assert cache.lookup(info) is None
    assert list(cache.objects.glob("*/*")) == []
    assert len(list(cache.tmp.iterdir())) == left  # a partial file, never visible as data
    result = cache.fetch(info, store)  # the dead process's lock died with it
    assert result.fetched and result.path.read_bytes() == source.read_bytes()
    assert cache.clean_leftovers()["partial_downloads_removed"] == left


def test_eviction_keeps_cap_and_never_breaks_a_running_job(tmp_path: Path, cache_dir: Path) -> None:
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    store = LocalStore()
    infos = []
    for i in range(10):
        path = bucket / f"f{i}.bin"
        path.write_bytes(bytes([i]) * 100_000)
        info = store.stat(f"file://{path}")
        assert info is not None
        infos.append(info)
    cache = Cache(cache_dir, max_bytes=450_000)
    workspace = cache_dir / "runs" / "job-1"
    # A running job links the first two objects into its workspace.
    for info in infos[:2]:
        cache.link_into(cache.fetch(info, store).path, workspace / Path(info.url).name)
        time.sleep(0.01)
    for info in infos[2:]:
        cache.fetch(info, store)
        time.sleep(0.01)
    stats = cache.stats()
    assert stats["bytes"] <= 450_000 + 0, stats
    # The job's files are still whole, and still in the cache (pinned, not evicted).
    for info in infos[:2]:
        linked = workspace / Path(info.url).name
        assert linked.read_bytes() == local_bytes(info)
        assert cache.lookup(info) is not None
    assert stats["pinned_bytes"] == 200_000
    # The newest entries survive; the oldest unpinned ones went first.
    assert cache.lookup(infos[-1]) is not None
    assert cache.lookup(infos[2]) is None
    # Even an entry evicted while linked elsewhere keeps the job's copy intact.
    cache.evict_to(0)
    assert (workspace / "f0.bin").read_bytes() == local_bytes(infos[0])


def local_bytes(info: ObjectInfo) -> bytes:
    return Path(info.url[len("file://") :]).read_bytes()


def test_dead_workspaces_are_cleaned_live_ones_kept(cache_dir: Path) -> None:
    cache = Cache(cache_dir)
    live, fd = cache.new_run_dir("live")
    dead = cache.runs / "dead-1"
    dead.mkdir()
    (dead / "run.lock").write_text("")
    assert run_is_live(live) and not run_is_live(dead)
    assert cache.clean_leftovers()["dead_workspaces_removed"] == 1
    assert live.exists() and not dead.exists()
    os.close(fd)


def test_verify_drops_tampered_entries(gcs_bucket: str, cache_dir: Path) -> None:
    store = GCSStore()
    url = f"{gcs_bucket}/a.bin"
    put_object(url, b"good bytes")
    cache = Cache(cache_dir)
    path = cache.fetch(_info(store, url), store).path
    os.chmod(path, 0o600)
    path.write_bytes(b"evil bytes")
    assert cache.verify() == {"checked": 1, "bad": 1, "orphans_removed": 0}
    assert cache.lookup(_info(store, url)) is None


def test_batch_lookup_answers_as_one_by_one_lookups_do(tmp_path: Path, cache_dir: Path) -> None:
    """A warm run's one index query for many inputs finds the same entries as a lookup each,
    and still refuses (and removes) a planted file the index does not know."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    store = LocalStore()
    infos = []
    for name in ("cached-1", "cached-2", "never-fetched", "planted"):
        (bucket / name).write_bytes(name.encode() * 100)
        info = store.stat(f"file://{bucket / name}")
        assert info is not None
        infos.append(info)
    first = Cache(cache_dir)
    for info in infos[:2]:
        first.fetch(info, store)
    planted = first.object_path(infos[3])
    planted.parent.mkdir(parents=True, exist_ok=True)
    planted.write_bytes(b"x" * infos[3].size)  # right size, wrong bytes, not indexed
    planted.chmod(0o400)
    # A prefetch's look (indexed_only) leaves what the index does not know to the fetch's
    # own lookup under its lock: no lstat of a cold object, and the planted file untouched.
    early = Cache(cache_dir).lookup_many(infos, indexed_only=True)
    assert early == [str(first.object_path(i)) for i in infos[:2]] + [None, None]
    assert planted.exists()
    fresh = Cache(cache_dir)  # nothing known yet: the batch query does the work
    found = fresh.lookup_many(infos)
    assert found[:2] == [str(first.object_path(i)) for i in infos[:2]]
    assert found[2:] == [None, None]
    assert not planted.exists()
    assert [Cache(cache_dir).lookup(i) for i in infos] == [Path(p) if p else None for p in found]


@pytest.mark.skipif(not hasattr(fcntl, "F_OFD_SETLK"), reason="open-file-description locks")
def test_a_stripe_held_by_two_downloads_stays_locked_until_the_last_lets_go(
    cache_dir: Path,
) -> None:
    """The asyncio path's downloads share one descriptor: two keys of one stripe lock it
    once, and another descriptor (another process, eviction) sees it held until both end."""
    cache = Cache(cache_dir)
    first, second = "abcde" + "0" * 59, "abcde" + "1" * 59
    assert cache._try_hold(first) and cache._try_hold(second)
    assert cache._stripe_held(first)
    cache._release_hold(first)
    assert cache._stripe_held(second)
    cache._release_hold(second)
    assert not cache._stripe_held(first)


def test_a_small_body_is_published_read_only_with_no_temp_name_over_a_foreign_file(
    cache_dir: Path,
) -> None:
    """The asyncio path's install (an unnamed file linked into place): whole, read-only,
    nothing in tmp/, and a file that is no entry of the cache's is replaced, as a rename
    would replace it."""
    cache = Cache(cache_dir)
    info = ObjectInfo("gs://b/tex/x.bin", 5, "1", None)
    download = cache.begin(info)
    assert download is not None and download.lock_now()
    planted = cache.object_path(info)
    planted.parent.mkdir(exist_ok=True)
    planted.write_bytes(b"wrong")
    result = download.install_bytes(b"right")
    download.end(result)
    assert result.fetched and result.path == planted and planted.read_bytes() == b"right"
    assert stat.S_IMODE(planted.stat().st_mode) == 0o400
    assert list(cache.tmp.iterdir()) == []
    assert not cache._stripe_held(cache.key(info))  # the lock went with the install


def test_two_first_objects_of_one_folder_at_once_both_land(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writer threads publishing the first two objects of one ``objects/xx`` folder: the
    one whose mkdir finds the folder made by the other meanwhile links into it (it raised
    before: CI met it with 40 small objects on 4 writers). The other writer is played here by
    making the folder just before this one's mkdir, where the race put it."""
    cache = Cache(cache_dir)
    info = ObjectInfo("gs://b/tex/first.bin", 5, "1", None)
    folder = cache.object_path(info).parent
    assert not folder.exists()
    real_mkdir = os.mkdir
    calls: list[str] = []

    def mkdir_meets_the_race(path: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(str(path))
        real_mkdir(path, *args, **kwargs)  # the other writer, just before ...
        real_mkdir(path, *args, **kwargs)  # ... this one: FileExistsError

    download = cache.begin(info)
    assert download is not None and download.lock_now()
    monkeypatch.setattr(os, "mkdir", mkdir_meets_the_race)
    result = download.install_bytes(b"right")
    monkeypatch.undo()
    download.end(result)
    assert calls == [str(folder)]
    assert result.fetched and cache.object_path(info).read_bytes() == b"right"
    assert list(cache.tmp.iterdir()) == []


def test_an_objects_folder_removed_after_its_first_object_is_made_again_for_the_next(
    cache_dir: Path,
) -> None:
    """Small bodies are linked through a held descriptor of their ``objects/xx`` folder; a
    folder removed since (its objects deleted by hand) is made again, not linked into while
    gone: the object installed next is an entry a lookup finds."""
    cache = Cache(cache_dir)
    info = ObjectInfo("gs://b/t.bin", 5, "1", None)
    for body in (b"first", b"again"):
        download = cache.begin(info)
        assert download is not None and download.lock_now()
        result = download.install_bytes(body)
        download.end(result)
        assert cache.object_path(info).read_bytes() == body
        assert result.file == str(cache.object_path(info))
        shutil.rmtree(cache.object_path(info).parent)  # the descriptor is still held


def test_link_many_links_through_one_checked_folder_and_reports_each_pair(
    tmp_path: Path, cache_dir: Path
) -> None:
    """The batch link of a warm run's cached inputs (pure function of the file system): each
    pair linked in order, a stale file replaced, an evicted entry reported on its own pair,
    and a folder a stage swapped for a symlink refused, nothing placed outside."""
    cache = Cache(cache_dir)
    sources = []
    for i in range(3):
        source = cache_dir / f"object{i}"
        source.write_bytes(bytes([i]) * 10)
        sources.append(str(source))
    folder = cache_dir / "runs" / "job-1" / "inputs" / "gs" / "b" / "seq"
    folder.mkdir(parents=True)
    (folder / "f1.bin").write_bytes(b"stale")
    os.unlink(sources[2])  # evicted by another process after the lookup
    pairs = [(source, str(folder / f"f{i}.bin")) for i, source in enumerate(sources)]
    outcomes = cache.link_many(pairs)
    assert outcomes[:2] == [None, None] and isinstance(outcomes[2], FileNotFoundError)
    assert [(folder / f"f{i}.bin").read_bytes() for i in range(2)] == [b"\0" * 10, b"\1" * 10]
    assert (folder / "f0.bin").stat().st_nlink == 2

    outside = tmp_path / "outside"
    outside.mkdir()
    folder.rename(folder.with_name("moved"))
    folder.symlink_to(outside)  # a stage swapped the checked folder for a symlink
    (outcome,) = cache.link_many([(sources[0], str(folder / "again.bin"))])
    assert isinstance(outcome, DataError) and not list(outside.iterdir())


def test_a_cache_from_before_the_schema_version_gets_its_running_total_once(
    tmp_path: Path, cache_dir: Path
) -> None:
    """Opening a cache sums its entries only while its index has no schema version yet (an
    index an older jitrender made, or a new one): a node's cache of 300,000 entries is not
    summed again by every run (30 ms each); the total is still right either way."""
    import sqlite3

    store = LocalStore()
    infos = []
    for i in range(3):
        path = tmp_path / f"f{i}.bin"
        path.write_bytes(b"x" * (1000 + i))
        info = store.stat(f"file://{path}")
        assert info is not None
        infos.append(info)
    cache = Cache(cache_dir)
    for info in infos[:2]:
        cache.fetch(info, store)
    assert Cache(cache_dir).stats()["bytes"] == 2001
    with sqlite3.connect(cache_dir / "index.sqlite") as db:  # as an older jitrender left it
        db.execute("DELETE FROM totals")
        db.execute("PRAGMA user_version = 0")
    reopened = Cache(cache_dir)
    with reopened._db() as db:
        assert db.execute("SELECT value FROM totals").fetchone() == (2001,)
    reopened.fetch(infos[2], store)
    with Cache(cache_dir)._db() as db:
        assert db.execute("SELECT value FROM totals").fetchone() == (2001 + 1002,)
        assert db.execute("PRAGMA user_version").fetchone()[0] >= 1
