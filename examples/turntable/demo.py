"""The turntable demo: render frames 1-4 of a 48-frame Blender job three times and show what
crossed the "network" each time.

    make demo        (or: .venv/bin/python examples/turntable/demo.py [--frames 1-4])

1. cold:   empty node cache, no renders in the bucket -> fetch exactly what frames 1-4 need
2. warm:   same cache, renders deleted                -> render again, fetch nothing
3. resume: renders left in the bucket                 -> every frame already done, no render
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUCKET = HERE / "bucket"
SCENE = BUCKET / "shots" / "tt" / "turntable.blend"
RENDERS = BUCKET / "renders"
CACHE = HERE / ".cache"
JOB = HERE / "job.yaml"
BIN = Path(sys.executable).parent


def environment() -> dict[str, str]:
    """The venv's bin first on PATH (python3 with numpy for prep/post, jitrender itself) and
    this folder on PYTHONPATH (the prep and post modules)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(HERE), env.get("PYTHONPATH")] if p)
    return env


def jitrender_command() -> list[str]:
    script = BIN / "jitrender"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "jitrender.cli"]


def build_bucket() -> None:
    if SCENE.is_file():
        return
    print(f"building the demo bucket in {BUCKET} (once) ...", flush=True)
    subprocess.run([sys.executable, str(HERE / "make_scene.py"), str(BUCKET)], check=True)


def bucket_inputs() -> tuple[int, int]:
    """Files and bytes in the bucket, leaving out the renders the job writes."""
    files = [p for p in BUCKET.rglob("*") if p.is_file() and RENDERS not in p.parents]
    return len(files), sum(p.stat().st_size for p in files)


def run(label: str, frames: str, report: Path) -> dict[str, Any]:
    argv = [*jitrender_command(), "run", str(JOB), "--frames", frames]
    argv += ["--cache-dir", str(CACHE), "--report", str(report), "--progress", "plain"]
    log = report.with_suffix(".log")
    print(f"{label:>6}: {' '.join(argv[1:])}", flush=True)
    started = time.monotonic()
    with open(log, "w") as sink:
        proc = subprocess.run(argv, env=environment(), stdout=sink, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if proc.returncode != 0 or not report.is_file():
        print(log.read_text()[-3000:], file=sys.stderr)
        raise SystemExit(f"{label} run failed with exit code {proc.returncode} (log: {log})")
    result: dict[str, Any] = json.loads(report.read_text())
    result["_seconds"] = seconds
    return result


def mb(value: int) -> str:
    return f"{value / 1e6:.2f} MB"


def table(runs: dict[str, dict[str, Any]], bucket: tuple[int, int]) -> str:
    def ratio(report: dict[str, Any]) -> str:
        needed = report["deps"]["bytes_needed"]
        return f"{report['cache']['bytes_fetched'] / needed:.2f}" if needed else "-"

    rows: list[tuple[str, ...]] = [
        ("", *runs),
        ("exit status", *(r["status"] for r in runs.values())),
        ("frames rendered", *(str(len(r["frames"]["done"])) for r in runs.values())),
        (
            "frames already done",
            *(str(len(r["frames"]["skipped_already_done"])) for r in runs.values()),
        ),
        ("files needed", *(str(r["deps"]["count"]) for r in runs.values())),
        ("bytes needed", *(mb(r["deps"]["bytes_needed"]) for r in runs.values())),
        ("files fetched", *(str(r["cache"]["misses"]) for r in runs.values())),
        ("bytes fetched", *(mb(r["cache"]["bytes_fetched"]) for r in runs.values())),
        ("cache hits", *(str(r["cache"]["hits"]) for r in runs.values())),
        ("bytes_fetched/bytes_needed", *(ratio(r) for r in runs.values())),
        ("outputs uploaded", *(str(r["outputs"]["count"]) for r in runs.values())),
        ("bytes uploaded", *(mb(r["outputs"]["bytes"]) for r in runs.values())),
        ("render time", *(f"{r['timings'].get('render_s', 0):.1f} s" for r in runs.values())),
        ("wall time", *(f"{r['_seconds']:.1f} s" for r in runs.values())),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    files, size = bucket
    lines.append(f"in the bucket (inputs, without renders/): {files} files, {mb(size)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", default="1-4")
    options = parser.parse_args()

    build_bucket()
    shutil.rmtree(CACHE, ignore_errors=True)
    shutil.rmtree(RENDERS, ignore_errors=True)
    runs: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="jitrender-demo-") as tmp:
        runs["cold"] = run("cold", options.frames, Path(tmp) / "cold.json")
        shutil.rmtree(RENDERS)  # so the warm run renders again, from the cache only
        runs["warm"] = run("warm", options.frames, Path(tmp) / "warm.json")
        runs["resume"] = run("resume", options.frames, Path(tmp) / "resume.json")
    print()
    print(table(runs, bucket_inputs()))
    print(f"\nrenders: {RENDERS / 'tt'}")


if __name__ == "__main__":
    main()
