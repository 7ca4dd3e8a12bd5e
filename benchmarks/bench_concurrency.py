"""5. Concurrency: 8 processes start the same job cold on one cache. Bytes moved (target:
each object once) and wall time vs one process."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BUCKET,
    REPO,
    MiB,
    emulator,
    ratio,
    table,
    workdir,
    write_job,
    write_object,
)

TITLE = "Concurrency: 8 processes, one cold cache"
PROCESSES = 8


def _start(job: Path, cache: Path, report: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable, "-m", "jitrender.cli", "run", str(job),
            "--cache-dir", str(cache), "--report", str(report),
        ],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip


def _wait_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"jitrender run exited {proc.returncode}: {err.decode()[-500:]}")


def run(quick: bool) -> dict[str, Any]:
    small_n, large_n, large = (100, 2, 24 * MiB) if quick else (400, 4, 64 * MiB)
    with workdir("concurrency") as root:
        data = root / "data"
        for i in range(small_n):
            write_object(data, f"conc/tex/t{i:04d}.tx", 256 << 10)
        for i in range(large_n):
            write_object(data, f"conc/cache/sim{i}.vdb", large)
        needed = small_n * (256 << 10) + large_n * large
        jobs = {
            name: write_job(
                root / f"{name}.yaml",
                frames="1-4",
                deps=[f"gs://{BUCKET}/conc/"],
                outputs=root / f"out-{name}",
            )
            for name in ("solo", "many")
        }
        with emulator(data) as emu:
            # One process, cold (its own cache and outputs).
            emu.reset()
            started = time.perf_counter()
            _wait_all([_start(jobs["solo"], root / "cache-solo", root / "solo.json")])
            solo_s = time.perf_counter() - started
            solo_wire = emu.stats()["bytes_down"]
            emu.reset()
            started = time.perf_counter()
            reports = [root / f"r{i}.json" for i in range(PROCESSES)]
            _wait_all([_start(jobs["many"], root / "cache", r) for r in reports])
            many_s = time.perf_counter() - started
            many_wire = emu.stats()["bytes_down"]
        parsed = [json.loads(r.read_text()) for r in reports]
        fetched = [p["cache"]["bytes_fetched"] for p in parsed]
        timings = [p["timings"] for p in parsed]
    rows = [
        ["1 process", solo_s, solo_wire / 1e6, ratio(solo_wire, needed)],
        [f"{PROCESSES} processes, same job", many_s, many_wire / 1e6, ratio(many_wire, needed)],
    ]
    text = table(
        TITLE,
        ["run", "wall s", "MB on the wire", "wire / needed"],
        rows,
        note=(
            f"{small_n} x 256 KiB + {large_n} x {large // MiB} MiB = {needed / 1e6:.1f} MB needed; "
            f"bytes fetched per process: {fetched} (sum {sum(fetched)}, "
            f"{ratio(sum(fetched), needed)} x needed); {PROCESSES} processes took "
            f"{ratio(many_s, solo_s)} x the time of one; slowest process: resolve "
            f"{max(t.get('resolve_s', 0) for t in timings):.2f} s, fetch "
            f"{max(t.get('fetch_s', 0) for t in timings):.2f} s, run "
            f"{max(t.get('wall_s', 0) for t in timings):.2f} s (the rest is interpreter start and "
            "imports: 8 processes on 2 cores)"
        ),
    )
    return {
        "title": TITLE,
        "table": text,
        "needed_bytes": needed,
        "solo_s": round(solo_s, 3),
        "many_s": round(many_s, 3),
        "many_over_solo": ratio(many_s, solo_s),
        "fetched_per_process": fetched,
        "timings_per_process": timings,
        "fetched_sum_over_needed": ratio(sum(fetched), needed),
        "wire_over_needed": ratio(many_wire, needed),
        "targets": {"each_object_fetched_once": sum(fetched) == needed},
    }
