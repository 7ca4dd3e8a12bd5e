"""Per-request overhead of the agent on a warm cache: what a hook pays for each file it asks for.

A real agent (Unix socket, thread per connection) over a real cache and a local bucket; the
files are fetched once first, then asked for again and again: the time is the round trip
(JSON line out, path mapping, lookup, JSON line back). Also from 8 threads at once, the way
Nuke's or Blender's worker threads ask.

Run: ``python benchmarks/bench_agent.py [--quick]``. Prints a table and a JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jitrender.agent import Agent, AgentClient
from jitrender.cache import Cache
from jitrender.inputs import Inputs
from jitrender.paths import PathMap, rule_from

FILES = 200
THREADS = 8


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def run(quick: bool) -> dict[str, Any]:
    """Median / p99 microseconds per warm ``resolve``, and requests per second from 8 threads."""
    requests = 2000 if quick else 20000
    with tempfile.TemporaryDirectory(prefix="jitrender-bench-agent-") as tmp:
        root = Path(tmp)
        bucket = root / "bucket"
        for index in range(FILES):
            path = bucket / "tex" / f"t{index:04d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x" * 1024)
        inputs = root / "ws" / "inputs"
        inputs.mkdir(parents=True)
        cache = Cache(root / "cache")
        agent = Agent(
            Inputs(cache, inputs), PathMap([rule_from("/mnt/show", f"file://{bucket}")])
        ).start()
        try:
            assert agent.socket_path is not None
            client = AgentClient(str(agent.socket_path))
            paths = [f"/mnt/show/tex/t{index:04d}.png" for index in range(FILES)]
            started = time.perf_counter()
            for path in paths:
                client.resolve(path)
            cold_us = (time.perf_counter() - started) / FILES * 1e6
            for _ in range(200):  # warm the connection and the interpreter
                client.request({"op": "ping"})
            samples = []
            for index in range(requests):
                t0 = time.perf_counter()
                client.resolve(paths[index % FILES])
                samples.append((time.perf_counter() - t0) * 1e6)
            pings = []
            for _ in range(min(requests, 5000)):
                t0 = time.perf_counter()
                client.request({"op": "ping"})
                pings.append((time.perf_counter() - t0) * 1e6)

            per_thread = requests // THREADS
            barrier = threading.Barrier(THREADS + 1)

            def worker(offset: int) -> None:
                own = AgentClient(str(agent.socket_path))
                barrier.wait()
                for index in range(per_thread):
                    own.resolve(paths[(offset + index) % FILES])
                own.close()

            threads = [threading.Thread(target=worker, args=(i * 7,)) for i in range(THREADS)]
            for thread in threads:
                thread.start()
            barrier.wait()
            t0 = time.perf_counter()
            for thread in threads:
                thread.join()
            concurrent_s = time.perf_counter() - t0
            client.close()
        finally:
            agent.stop()
            agent.inputs.close()
    figures: dict[str, Any] = {
        "requests": requests,
        "warm_resolve_median_us": round(statistics.median(samples), 1),
        "warm_resolve_p99_us": round(_percentile(samples, 0.99), 1),
        "ping_median_us": round(statistics.median(pings), 1),
        "cold_resolve_local_bucket_us": round(cold_us, 1),
        "threads": THREADS,
        "concurrent_requests_per_s": round(per_thread * THREADS / concurrent_s),
    }
    header = ["requests", "warm median µs", "warm p99 µs", "ping µs", "cold µs", "8 threads req/s"]
    row = [
        requests,
        figures["warm_resolve_median_us"],
        figures["warm_resolve_p99_us"],
        figures["ping_median_us"],
        figures["cold_resolve_local_bucket_us"],
        figures["concurrent_requests_per_s"],
    ]
    widths = [max(len(h), len(str(v))) for h, v in zip(header, row, strict=True)]
    figures["table"] = "\n".join(
        [
            "### agent: per-request overhead on a warm cache",
            "",
            "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            "| " + " | ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)) + " |",
        ]
    )
    return figures


if __name__ == "__main__":
    result = run("--quick" in sys.argv[1:])
    print(result.pop("table"))
    print(json.dumps({"benchmark": "agent", **result}))
