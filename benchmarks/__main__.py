"""Run every benchmark, print its table, write the figures as JSON to ``benchmarks/results/``."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The six first, in its order; any other bench_*.py (nuke_parse, agent) after them.
ORDER = ["selective", "transfer", "overlap", "warm", "concurrency", "scale"]


def discover(only: list[str] | None) -> list[str]:
    names = sorted(p.stem.removeprefix("bench_") for p in HERE.glob("bench_*.py"))
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    if only:
        names = [n for n in names if n in only]
    return names


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            models = [line.split(":", 1)[1].strip() for line in handle if "model name" in line]
        cpu = models[0] if models else cpu
    except OSError:
        pass
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)
    except (ValueError, OSError):
        mem_gb = None
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "memory_gb": mem_gb,
        "python": platform.python_version(),
        "system": platform.platform(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--only", nargs="*", help="run only these (e.g. warm scale)")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="first-byte latency")
    parser.add_argument("--bandwidth-mbs", type=float, default=100.0, help="MB/s per connection")
    args = parser.parse_args(argv)
    os.environ["JITRENDER_BENCH_LATENCY_MS"] = str(args.latency_ms)
    os.environ["JITRENDER_BENCH_BANDWIDTH_MBS"] = str(args.bandwidth_mbs)
    sys.path.insert(0, str(HERE.parent))
    command = "python -m benchmarks" + (" --quick" if args.quick else "")
    if args.latency_ms != 20.0 or args.bandwidth_mbs != 100.0:
        command += f" --latency-ms {args.latency_ms:g} --bandwidth-mbs {args.bandwidth_mbs:g}"
    suite: dict[str, Any] = {
        "command": command,
        "quick": args.quick,
        "link": {"latency_ms": args.latency_ms, "bandwidth_MB_per_s": args.bandwidth_mbs},
        "machine": machine(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "benchmarks": {},
    }
    started = time.perf_counter()
    failed = 0
    for name in discover(args.only):
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.bench_{name}")
            result = dict(module.run(args.quick))
        except Exception as exc:
            failed += 1
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"}
        result["bench_wall_s"] = round(time.perf_counter() - t0, 1)
        suite["benchmarks"][name] = result
        if "table" in result:
            print(result["table"] + "\n", flush=True)
        elif "error" in result:
            print(f"### {name}\n\nfailed: {result['error']}\n", flush=True)
        else:  # a benchmark without a table of its own: show its figures
            print(f"### {name}\n\n{json.dumps(result, default=str)}\n", flush=True)
    suite["seconds"] = round(time.perf_counter() - started, 1)
    targets = {
        f"{name}.{key}": value
        for name, result in suite["benchmarks"].items()
        for key, value in result.get("targets", {}).items()
    }
    suite["targets"] = targets
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    text = json.dumps(suite, indent=2, default=str)
    (results / f"{stamp}{'-quick' if args.quick else ''}.json").write_text(text)
    (results / "latest.json").write_text(text)
    print("### Targets\n")
    for key, value in targets.items():
        print(f"- {key}: {'holds' if value else 'DOES NOT HOLD'}")
    print(f"\nsuite took {suite['seconds']} s; JSON: {results / 'latest.json'}\n")
    print(
        json.dumps(
            {k: v for k, v in suite.items() if k != "benchmarks"}
            | {
                "benchmarks": {
                    n: {k: v for k, v in r.items() if k != "table"}
                    for n, r in suite["benchmarks"].items()
                }
            },
            default=str,
        )
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
