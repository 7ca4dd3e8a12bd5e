"""6. Scale: cost per dependency and peak memory at 1k, 10k and 100k dependencies (and as
many cache entries), cold and warm, each run in a fresh process. A ``file://`` bucket keeps
the network out: this measures jitrender's own cost per dependency."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.common import REPO, ratio, table, workdir, write_job

TITLE = "Scale: cost per dependency and peak memory"
PER_FOLDER = 1000


def _rss_kb() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child(job_path: str, cache_dir: str, cap: str) -> None:
    """Runs in a fresh interpreter: one run, then its timings and memory as JSON."""
    import google.cloud.storage  # noqa: F401  (count imports in the baseline, not the run)

    from jitrender.job import load_job
    from jitrender.run import RunOptions, run_job

    job = load_job(Path(job_path))
    baseline = _rss_kb()
    # Sampled, not ru_maxrss: that one also holds whatever peak the imports reached.
    peak_box = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak_box[0] = max(peak_box[0], _rss_kb())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    report = run_job(
        job, RunOptions(cache_dir=Path(cache_dir), cache_max_bytes=int(cap) if cap else None)
    )
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    peak = max(peak_box[0], _rss_kb())
    print(
        json.dumps(
            {
                "exit_code": report.exit_code,
                "wall_s": wall,
                "timings": report.timings,
                "baseline_rss_kb": baseline,
                "peak_rss_kb": peak,
                "deps": report.deps_count,
                "hits": report.hits,
                "misses": report.misses,
            }
        )
    )


def _run_child(job: Path, cache: Path, cap: int | None) -> dict[str, Any]:
    code = "import sys; from benchmarks.bench_scale import child; child(*sys.argv[1:])"
    out = subprocess.run(
        [sys.executable, "-c", code, str(job), str(cache), str(cap or "")],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    if result["exit_code"] not in (0, None):
        raise RuntimeError(f"scale run failed: {out.stderr[-500:]}")
    return result


def _bucket(root: Path, count: int) -> Path:
    folder = root / "bucket" / f"n{count}"
    for index in range(count):
        sub = folder / f"f{index // PER_FOLDER:03d}"
        if index % PER_FOLDER == 0:
            sub.mkdir(parents=True)
        (sub / f"t{index:06d}.tx").write_bytes(b"%d" % index)
    return folder


def _measure(root: Path, count: int, cap: int | None, tag: str) -> dict[str, Any]:
    folder = _bucket(root, count) if not (root / "bucket" / f"n{count}").exists() else None
    folder = folder or root / "bucket" / f"n{count}"
    cache = root / f"cache-{tag}"
    runs: dict[str, Any] = {}
    for kind, name in (("cold", tag), ("warm", f"{tag}-warm")):  # warm: the cold run's cache
        job = write_job(
            root / f"{name}.yaml",
            frames="1",
            deps=[folder.as_uri() + "/"],
            outputs=root / f"out-{name}",
        )
        runs[kind] = _run_child(job, cache, cap)
    return {"deps": count, **runs}


def _per_dep_us(result: dict[str, Any]) -> float:
    return float(result["wall_s"]) / max(1, int(result["deps"])) * 1e6


def _growth_kb(result: dict[str, Any]) -> int:
    return int(result["peak_rss_kb"]) - int(result["baseline_rss_kb"])


def run(quick: bool) -> dict[str, Any]:
    sizes = [1000, 4000] if quick else [1000, 10000, 100000]
    capped_sizes = [500, 2000] if quick else [1000, 10000]
    results = []
    capped = []
    with workdir("scale") as root:
        for count in sizes:
            results.append(_measure(root, count, None, f"n{count}"))
        for count in capped_sizes:
            capped.append(_measure(root, count, 1 << 40, f"cap{count}"))
    rows = []
    for r in results:
        for phase in ("cold", "warm"):
            p = r[phase]
            rows.append(
                [
                    r["deps"],
                    phase,
                    p["wall_s"],
                    _per_dep_us(p),
                    _growth_kb(p) / 1024,
                    _growth_kb(p) * 1024 / r["deps"],
                ]
            )
    for r in capped:
        p = r["cold"]
        rows.append(
            [r["deps"], "cold, cache capped", p["wall_s"], _per_dep_us(p), _growth_kb(p) / 1024,
             _growth_kb(p) * 1024 / r["deps"]]
        )  # fmt: skip
    verdicts = {}
    for phase in ("cold", "warm"):
        small, big = results[0][phase], results[-1][phase]
        time_growth = ratio(_per_dep_us(big), _per_dep_us(small)) or 0.0
        verdicts[phase] = time_growth
    capped_growth = ratio(_per_dep_us(capped[-1]["cold"]), _per_dep_us(capped[0]["cold"])) or 0.0
    mem_per_dep = _growth_kb(results[-1]["cold"]) * 1024 / results[-1]["deps"]
    lines = []
    for phase, growth in verdicts.items():
        shape = "linear or better" if growth <= 1.5 else "WORSE than linear"
        lines.append(
            f"{phase}: cost per dependency at {sizes[-1]} is {growth} x that at {sizes[0]}: {shape}"
        )
    shape = "linear or better" if capped_growth <= 1.5 else "WORSE than linear"
    lines.append(
        f"cold with a cache size cap: per-dependency cost at {capped_sizes[-1]} is "
        f"{capped_growth} x that at {capped_sizes[0]}: {shape}"
    )
    lines.append(f"memory: about {mem_per_dep:.0f} bytes per dependency above the baseline")
    text = table(
        TITLE,
        ["deps", "run", "wall s", "µs / dep", "peak RSS growth MiB", "bytes / dep"],
        rows,
        note="\n".join(lines),
    )
    return {
        "title": TITLE,
        "table": text,
        "results": results,
        "capped": capped,
        "per_dep_growth": verdicts,
        "capped_per_dep_growth": capped_growth,
        "memory_bytes_per_dep": round(mem_per_dep),
        "targets": {
            "cold_linear_or_better": verdicts["cold"] <= 1.5,
            "warm_linear_or_better": verdicts["warm"] <= 1.5,
            "capped_cache_linear_or_better": capped_growth <= 1.5,
        },
    }
