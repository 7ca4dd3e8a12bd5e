"""4. Warm: a job with 1,000 dependencies, all cached. Time from start to the first render
command, and per-file lookup+link cost, vs fsspec ``filecache`` warm."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks.common import BUCKET, ratio

TITLE = "Warm: 1,000 cached dependencies"
DEPS = 1000
FOLDERS = 10


def _urls() -> list[str]:
    per = DEPS // FOLDERS
    return [f"gs://{BUCKET}/warm/tex{j}/t{i:04d}.tx" for j in range(FOLDERS) for i in range(per)]


def _stamp_job(root: Path, tag: str, stamp: Path) -> Path:
    return common.write_job(
        root / f"{tag}.yaml",
        frames="1",
        deps=_urls(),  # one path each, as a resolver hands them over
        stages=[
            {
                "name": "render",
                "per": "chunk",
                "command": common.then_mark_frames(f"date +%s.%N > {stamp}"),
            }
        ],
        outputs=root / f"out-{tag}",
    )


def _first_render_in_process(root: Path, tag: str) -> float:
    stamp = root / f"{tag}.stamp"
    job = _stamp_job(root, tag, stamp)
    started = time.time()
    common.run_job_here(job, root / "cache")
    return float(stamp.read_text()) - started


def _first_render_cli(root: Path, tag: str) -> float:
    stamp = root / f"{tag}.stamp"
    job = _stamp_job(root, tag, stamp)
    started = time.time()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "jitrender.cli",
            "run",
            str(job),
            "--cache-dir",
            str(root / "cache"),
        ],
        cwd=common.REPO,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return float(stamp.read_text()) - started


def _lookup_cost(root: Path) -> float:
    """Microseconds per dependency to find a cached object and hardlink it into a workspace."""
    from jitrender.cache import Cache
    from jitrender.storage import GCSStore

    store = GCSStore()
    infos = [i for j in range(FOLDERS) for i in store.list(f"gs://{BUCKET}/warm/tex{j}/")]
    cache = Cache(root / "cache")
    dest = Path(tempfile.mkdtemp(dir=root / "cache" / "runs"))
    started = time.perf_counter()
    for info in infos:
        path = cache.lookup(info)
        assert path is not None
        cache.link_into(path, dest / info.url.removeprefix("gs://"))
    return (time.perf_counter() - started) / len(infos) * 1e6


def _filecache_cost(root: Path, count: int) -> tuple[float, float]:
    """fsspec filecache: (cold fill s, warm µs per open) over ``count`` of the files."""
    import fsspec

    fs = fsspec.filesystem(
        "filecache",
        target_protocol="gcs",
        target_options={"token": "anon", "endpoint_url": os.environ["STORAGE_EMULATOR_HOST"]},
        cache_storage=str(root / "filecache"),
    )
    paths = [u.removeprefix("gs://") for u in _urls()[:count]]
    started = time.perf_counter()
    for path in paths:
        with fs.open(path, "rb") as handle:
            handle.read(1)
    cold = time.perf_counter() - started
    started = time.perf_counter()
    for path in paths:
        with fs.open(path, "rb") as handle:
            handle.read(1)
    return cold, (time.perf_counter() - started) / len(paths) * 1e6


def run(quick: bool) -> dict[str, Any]:
    import google.cloud.storage  # noqa: F401  (import time is not what this measures)

    filecache_files = 30 if quick else 300  # ~0.1 s a file cold: the whole 1,000 takes minutes
    with common.workdir("warm") as root:
        data = root / "data"
        for url in _urls():
            common.write_object(data, url.removeprefix(f"gs://{BUCKET}/"), 4096)
        with common.emulator(data) as emu:
            cold = _first_render_in_process(root, "cold")
            emu.reset()
            warm = min(_first_render_in_process(root, f"warm{i}") for i in range(3))
            warm_requests = emu.stats()["requests"] // 3
            cli = _first_render_cli(root, "cli")
            lookup_us = min(_lookup_cost(root) for _ in range(3))
            fc_cold, fc_warm_us = _filecache_cost(root, filecache_files)
    rows = [
        ["jitrender, cold cache: start -> first render", cold, "s"],
        ["jitrender, warm cache: start -> first render (library)", warm, "s"],
        ["jitrender, warm cache: start -> first render (CLI process)", cli, "s"],
        ["jitrender, warm: lookup + hardlink per dependency", lookup_us, "µs"],
        [f"fsspec filecache, warm: open per file ({filecache_files} files)", fc_warm_us, "µs"],
        [f"fsspec filecache, cold fill of {filecache_files} files", fc_cold, "s"],
    ]
    text = common.table(
        TITLE,
        ["measure", "value", "unit"],
        rows,
        note=(
            f"warm run: {warm_requests} storage requests for {DEPS} dependencies "
            f"({FOLDERS} folder listings + the outputs listing)"
        ),
    )
    return {
        "title": TITLE,
        "table": text,
        "deps": DEPS,
        "cold_first_render_s": round(cold, 3),
        "warm_first_render_s": round(warm, 3),
        "warm_first_render_cli_s": round(cli, 3),
        "warm_requests": warm_requests,
        "lookup_link_us_per_dep": round(lookup_us, 1),
        "filecache_warm_open_us_per_file": round(fc_warm_us, 1),
        "lookup_vs_filecache": ratio(lookup_us, fc_warm_us),
        "targets": {
            "warm_start_under_1s": warm < 1.0,
            "lookup_in_microseconds": lookup_us < 1000,
        },
    }
