"""The run's one view of storage (jitrender.inputs.Inputs), over a local bucket: files appear
under their own names, once per run however many ask, and survive an eviction between the
fetch and the link. The CLI tests (test_run, test_agent, the plugins) cover it end to end."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jitrender.cache import Cache
from jitrender.deps import Dependency
from jitrender.errors import JitrenderError, MissingDependencyError
from jitrender.inputs import Inputs


def _bucket(tmp_path: Path, files: dict[str, bytes]) -> str:
    root = tmp_path / "bucket"
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return f"file://{root}"


def test_a_file_is_linked_under_its_own_name_once_however_many_ask(tmp_path: Path) -> None:
    bucket = _bucket(tmp_path, {"show/lib/cube.blend": b"blend"})
    inputs = Inputs(Cache(tmp_path / "cache"), tmp_path / "ws" / "inputs")
    url = f"{bucket}/show/lib/cube.blend"
    paths: list[Path] = []
    threads = [
        threading.Thread(target=lambda: paths.append(inputs.into_workspace(url))) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    inputs.close()
    assert len(set(paths)) == 1 and paths[0].name == "cube.blend"
    assert paths[0].read_bytes() == b"blend"
    assert [i.url for i in inputs.fetched] == [url] and inputs.hits == []
    assert inputs.local_copy(url) == paths[0]  # what a resolver gets: the same file


def test_an_eviction_between_fetch_and_link_fetches_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = _bucket(tmp_path, {"tex/a.png": b"a" * 100})
    cache = Cache(tmp_path / "cache")
    inputs = Inputs(cache, tmp_path / "ws" / "inputs")
    real_link = cache.link_into
    calls: list[Path | str] = []

    def evicted_once(cached: Path | str, dest: Path | str) -> None:
        calls.append(cached)
        if len(calls) == 1:
            os.unlink(cached)  # another job's eviction got there first
            raise FileNotFoundError(cached)
        real_link(cached, dest)

    monkeypatch.setattr(cache, "link_into", evicted_once)
    path = inputs.into_workspace(f"{bucket}/tex/a.png")
    inputs.close()
    assert path.read_bytes() == b"a" * 100 and len(calls) == 2


def test_prefetch_in_frame_order_then_wait_for_one_frame(tmp_path: Path) -> None:
    files = {f"seq/p.{f:04d}.exr": bytes([f]) * 1000 for f in range(1, 6)}
    bucket = _bucket(tmp_path, files)
    inputs = Inputs(Cache(tmp_path / "cache"), tmp_path / "ws" / "inputs", prefetch_bytes=1500)
    deps = inputs.stat_all(
        [Dependency(f"p.{f:04d}.exr", f"{bucket}/seq/p.{f:04d}.exr", (f,)) for f in range(1, 6)]
    )
    assert all(d.exists and d.size == 1000 for d in deps)
    inputs.prefetch(deps)
    inputs.wait([3])
    assert inputs.local_path(f"{bucket}/seq/p.0003.exr").read_bytes() == bytes([3]) * 1000
    inputs.wait(range(1, 6))
    inputs.close()
    assert sorted(i.url for i in inputs.fetched) == sorted(d.url for d in deps)
    assert inputs.fetch_seconds > 0


def test_a_missing_object_is_a_missing_dependency(tmp_path: Path) -> None:
    bucket = _bucket(tmp_path, {})
    inputs = Inputs(Cache(tmp_path / "cache"), tmp_path / "ws" / "inputs")
    with pytest.raises(MissingDependencyError):
        inputs.into_workspace(f"{bucket}/nope.exr")
    inputs.close()


def test_a_prefetch_of_cached_and_cold_inputs_links_each_once_and_hooks_get_the_same(
    tmp_path: Path,
) -> None:
    """Cached inputs settle in batches (no claim each), cold ones get their own: either way
    each is linked once, counted once, waited for per frame, and a hook asking meanwhile
    gets the same file; an input gone since the stat fails its frame's wait."""
    files = {f"f/{i:04d}.bin": i.to_bytes(2, "big") * 10 for i in range(700)}
    bucket = _bucket(tmp_path, files)
    cache = Cache(tmp_path / "cache")
    deps = [
        Dependency(rel, f"{bucket}/{rel}", None if i < 100 else (1 + i % 3,))
        for i, rel in enumerate(files)
    ]
    first = Inputs(cache, tmp_path / "ws1" / "inputs")
    warmed = first.stat_all(deps[::2])  # every other one cached beforehand
    first.prefetch(warmed)
    first.wait([1, 2, 3])
    first.close()
    inputs = Inputs(cache, tmp_path / "ws2" / "inputs")
    planned = inputs.stat_all(deps)
    (tmp_path / "bucket" / "f" / "0699.bin").unlink()  # cold, gone since the stat: frame 1
    asked: list[tuple[str, Path]] = []

    def hook(urls: list[str]) -> None:
        for url in urls:
            asked.append((url, inputs.into_workspace(url)))

    inputs.prefetch(planned)
    hooks = [
        threading.Thread(target=hook, args=([d.url for d in planned[k:600:7]],)) for k in (3, 4)
    ]
    for thread in hooks:
        thread.start()
    inputs.wait([2, 3])
    with pytest.raises(JitrenderError):
        inputs.wait([1])
    for thread in hooks:
        thread.join()
    inputs.close()
    for url, path in asked:
        assert path == inputs.local_path(url)
    for i, rel in enumerate(files):
        if i != 699 and (i < 100 or i % 3 != 0):  # every frame's, and frames 2 and 3
            assert inputs.local_path(f"{bucket}/{rel}").read_bytes() == files[rel]
    hits = sorted(i.url for i in inputs.hits)
    assert hits == sorted(d.url for d in warmed)
    fetched = [i.url for i in inputs.fetched]
    assert len(fetched) == len(set(fetched)) and not set(fetched) & set(hits)
