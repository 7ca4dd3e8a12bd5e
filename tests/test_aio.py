"""The asyncio small-object path against the real GCS API server: the same guarantees as the
thread path (exact bytes, one download per object across processes, nothing partial left,
errors classified the same way)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from jitrender.aio import AsyncFetcher
from jitrender.cache import Cache
from jitrender.errors import MissingDependencyError, TransientError
from jitrender.storage import GCSStore, ObjectInfo, RetryPolicy
from tests.conftest import cli, put_object
from tests.faultproxy import Fault, FaultProxy

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


def test_a_run_killed_mid_download_leaves_only_whole_entries_then_the_rerun_fetches_the_rest(
    tmp_path: Path, gcs_bucket: str, proxy: FaultProxy
) -> None:
    """Through the CLI: half the small objects are held at the server while the other half
    are fetched, installed and linked; then the run is SIGKILLed. Every entry left is whole
    and verified, no temp file is left (the bytes go into an unnamed file, linked only once
    checked), and the next run fetches exactly the objects that are missing."""
    bodies = {
        f"tex/{'late' if i % 2 else 'early'}{i:02d}.tx": os.urandom(900 + i) for i in range(40)
    }
    for name, data in bodies.items():
        put_object(f"{gcs_bucket}/{name}", data)
    put_object(f"{gcs_bucket}/shot.txt", f"{gcs_bucket}/tex/\n".encode())
    cache = tmp_path / "cache"
    env = os.environ | {
        "STORAGE_EMULATOR_HOST": proxy.url,
        "JITRENDER_CACHE_DIR": str(cache),
        "JITRENDER_PREEMPTION_WATCH": "off",
        "JITRENDER_HEARTBEAT_INTERVAL": "0",
    }

    def job(name: str) -> Path:
        path = tmp_path / f"{name}.yaml"
        mark = ': > "$JITRENDER_OUTPUTS/frame.$JITRENDER_FRAMES.done"'
        path.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "name": name,
                    "scene": f"{gcs_bucket}/shot.txt",
                    "frames": "1",
                    "stages": [{"name": "read", "command": ["sh", "-c", mark]}],
                    "outputs": {"to": (tmp_path / f"out-{name}").as_uri()},
                }
            )
        )
        return path

    hold = Fault("hold")
    proxy.rules.append(lambda request: hold if "/late" in request.path else None)
    argv = [sys.executable, "-m", "jitrender.cli", "run", str(job("killed")), "--progress", "quiet"]
    run = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        assert hold.held.wait(60)
        deadline = time.monotonic() + 60
        while len(list(cache.glob("objects/*/*"))) < 21 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        run.kill()  # kill -9, with 20 downloads held open
        run.wait(timeout=10)
        hold.release.set()
        proxy.rules.clear()
    assert len(list(cache.glob("objects/*/*"))) == 21  # the early ones and the scene
    assert list((cache / "tmp").iterdir()) == []  # nothing partial, not even a temp name
    for entry in cache.glob("objects/*/*"):
        assert entry.stat().st_mode & 0o777 == 0o400
    verified = cli("cache", "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["bad"] == 0

    report = tmp_path / "report.json"
    again = cli("run", str(job("again")), "--progress", "quiet", "--report", str(report), env=env)
    assert again.returncode == 0, again.stderr
    fetched = json.loads(report.read_text())["cache"]
    assert fetched["bytes_fetched"] == sum(len(b) for n, b in bodies.items() if "late" in n)
    inputs = cache / "runs"  # the workspace is gone; the cache holds every object, exact
    assert not list(inputs.glob("again-*"))
    store = GCSStore()
    for name, data in bodies.items():
        info = store.stat(f"{gcs_bucket}/{name}")
        assert info is not None
        found = Cache(cache).lookup(info)
        assert found is not None and found.read_bytes() == data


def test_small_objects_with_equal_bytes_each_arrive_whole_through_the_cli(
    tmp_path: Path, gcs_bucket: str, gcs_server: str
) -> None:
    """Through the CLI: 60 small textures, many with the same bytes (a studio's placeholder
    maps), fetched cold on the asyncio path. The stage sees every input whole (its copy
    prints each size), and ``cache verify`` finds every entry exact: a write of a body may
    never be skipped because an equal body was written before."""
    bodies = {f"tex/t{i:02d}.tx": bytes([i % 3]) * 4096 for i in range(60)}
    for name, data in bodies.items():
        put_object(f"{gcs_bucket}/{name}", data)
    put_object(f"{gcs_bucket}/shot.txt", f"{gcs_bucket}/tex/\n".encode())
    cache = tmp_path / "cache"
    env = os.environ | {
        "STORAGE_EMULATOR_HOST": gcs_server,
        "JITRENDER_CACHE_DIR": str(cache),
        "JITRENDER_PREEMPTION_WATCH": "off",
        "JITRENDER_HEARTBEAT_INTERVAL": "0",
    }
    sizes = 'wc -c $(find "$JITRENDER_INPUTS" -name "*.tx") > "$JITRENDER_OUTPUTS/sizes.txt"'
    job = tmp_path / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "name": "equal",
                "scene": f"{gcs_bucket}/shot.txt",
                "frames": "1",
                "stages": [{"name": "read", "command": ["sh", "-c", sizes]}],
                "outputs": {"to": (tmp_path / "out").as_uri()},
            }
        )
    )
    run = cli("run", str(job), "--progress", "quiet", env=env)
    assert run.returncode == 0, run.stderr
    (listed,) = (tmp_path / "out").rglob("sizes.txt")
    lines = [line.split() for line in listed.read_text().splitlines()]
    seen = {Path(name).name: int(size) for size, name in lines if name != "total"}
    assert seen == {Path(name).name: 4096 for name in bodies}
    verified = cli("cache", "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout) == {"checked": 61, "bad": 0, "orphans_removed": 0}
    assert not list((cache / "tmp").iterdir())  # (unnamed files, made in their objects/ab)
    # The object and workspace folders spread their subfolders over the file system (ext4:
    # chattr +T), so the small objects' inodes are not all allocated in one block group.
    for folder in (cache / "objects", cache / "runs"):
        flags = _inode_flags(folder)
        if flags is None:
            pytest.skip(f"{tmp_path}: its file system has no inode flags (not ext4)")
        assert flags & 0x00020000, f"{folder}: not marked as a top folder (lsattr -d: T)"


def _inode_flags(folder: Path) -> int | None:
    """``lsattr -d folder`` as a number (FS_IOC_GETFLAGS), or None where there are none."""
    import fcntl
    import struct

    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, 0x80086601, buf)
    except OSError:
        return None
    finally:
        os.close(fd)
    return int(struct.unpack_from("=i", buf)[0])


def test_two_runs_at_once_on_one_cache_download_each_small_object_once_and_both_see_it_whole(
    tmp_path: Path, gcs_bucket: str, proxy: FaultProxy
) -> None:
    """Through the CLI: two runs of jobs over the same 40 small textures start on one cache
    while the server holds every texture request, so both are fetching at once. Both exit 0,
    each stage sees every input whole, the two reports' downloads add up to each object once,
    and ``cache verify`` finds every entry exact."""
    bodies = {f"tex/t{i:02d}.tx": os.urandom(2000 + i) for i in range(40)}
    for name, data in bodies.items():
        put_object(f"{gcs_bucket}/{name}", data)
    put_object(f"{gcs_bucket}/shot.txt", f"{gcs_bucket}/tex/\n".encode())
    cache = tmp_path / "cache"
    env = os.environ | {
        "STORAGE_EMULATOR_HOST": proxy.url,
        "JITRENDER_CACHE_DIR": str(cache),
        "JITRENDER_PREEMPTION_WATCH": "off",
        "JITRENDER_HEARTBEAT_INTERVAL": "0",
    }
    sizes = 'wc -c $(find "$JITRENDER_INPUTS" -name "*.tx") > "$JITRENDER_OUTPUTS/sizes.txt"'

    def start(name: str) -> subprocess.Popen[bytes]:
        job = tmp_path / f"{name}.yaml"
        job.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "name": name,
                    "scene": f"{gcs_bucket}/shot.txt",
                    "frames": "1",
                    "stages": [{"name": "read", "command": ["sh", "-c", sizes]}],
                    "outputs": {"to": (tmp_path / f"out-{name}").as_uri()},
                }
            )
        )
        report = str(tmp_path / f"{name}.json")
        argv = [sys.executable, "-m", "jitrender.cli", "run", str(job), "--progress", "quiet"]
        return subprocess.Popen([*argv, "--report", report], env=env, cwd=ROOT)

    hold = Fault("hold", forward=True)
    proxy.rules.append(lambda request: hold if "/tex/" in request.path else None)
    runs = [start("first")]
    try:
        assert hold.held.wait(60)
        runs.append(start("second"))
        deadline = time.monotonic() + 60  # both workspaces made: the second is fetching too
        while len(list((cache / "runs").glob("*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        hold.release.set()
    assert [r.wait(timeout=120) for r in runs] == [0, 0]
    proxy.rules.clear()
    fetched = 0
    for name in ("first", "second"):
        (listed,) = (tmp_path / f"out-{name}").rglob("sizes.txt")
        lines = [line.split() for line in listed.read_text().splitlines()]
        seen = {Path(path).name: int(size) for size, path in lines if path != "total"}
        assert seen == {Path(n).name: len(b) for n, b in bodies.items()}, name
        fetched += json.loads((tmp_path / f"{name}.json").read_text())["cache"]["bytes_fetched"]
    scene = len(f"{gcs_bucket}/tex/\n")  # fetched once too
    assert fetched == sum(map(len, bodies.values())) + scene
    verified = cli("cache", "verify", "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["bad"] == 0
