"""How fast the Nuke resolver reads a large script: a generated ~60,000-line .nk with 2,000
Reads of 1000-frame sequences (each graded and merged into one tree inside groups of 50, with
curves and Python callbacks) that one Write renders, resolved for 10 frames along the graph.

Run: ``python benchmarks/bench_nuke_parse.py [--quick]`` (or ``python -m
benchmarks.bench_nuke_parse``). Prints a table row and a JSON line.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jitrender.paths import PathMap, file_url, local_path_of
from jitrender.resolve.base import ResolveContext
from jitrender.resolve.nuke import resolve_nuke
from jitrender.storage import LocalStore

_NODE = """Read {{
 inputs 0
 file "\\[file dirname \\[value root.name]]/plates/sh{index:05d}/plate.####.exr"
 format "2048 1556 0 0 2048 1556 1 2K_Super_35(full-ap)"
 first 1001
 last 2000
 origfirst 1001
 origlast 2000
 origset true
 before {before}
 name Read{index}
 xpos {index}
 ypos -200
}}
Grade {{
 white {{1.1 1.05 {{curve x1001 1 x1100 1.2}} 1}}
 gamma 0.9
 name Grade{index}
 knobChanged "print(nuke.thisNode().name())\\nif True: pass"
 label "\\[value white] \\{{braced\\}}"
 xpos {index}
 ypos -100
}}
set N{index} [stack 0]
Merge2 {{
 inputs 2
 operation over
 name Merge{index}
 xpos {index}
 ypos 0
}}
"""
# Each group reads the one before it (its Input), so the 2,000 Reads form one tree.
_GROUP_OPEN = (
    "Group {{\n name Group{index}\n xpos 0\n}}\n Input {{\n  inputs 0\n  name Input1\n }}\n"
)
_GROUP_CLOSE = " Output {\n  name Output1\n }\nend_group\n"
_WRITE = "Write {\n file /proj/render/comp.####.exr\n name Write1\n}\n"


def build_script(reads_wanted: int) -> str:
    """A plausible comp script with ``reads_wanted`` Reads feeding one Write."""
    parts = [
        "#! /usr/local/Nuke15.1v2/libnuke-15.1.2.so -nx\nversion 15.1 v2\n",
        "Root {\n inputs 0\n name /proj/comp.nk\n first_frame 1001\n last_frame 2000\n}\n",
    ]
    for index in range(reads_wanted):
        if index % 50 == 0:
            if index:
                parts.append(_GROUP_CLOSE)
            parts.append(_GROUP_OPEN.format(index=index))
        parts.append(
            _NODE.format(index=index, before=("hold", "loop", "bounce", "black")[index % 4])
        )
    parts.append(_GROUP_CLOSE)
    parts.append(_WRITE)
    return "".join(parts)


def run(quick: bool) -> dict[str, Any]:
    """Generate, resolve (best of a few runs) and return lines, seconds and lines/s."""
    text = build_script(400 if quick else 2000)
    store = LocalStore()
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "comp.nk"
        scene.write_text(text)
        ctx = ResolveContext(
            file_url(scene),
            scene,
            tuple(range(1001, 1011)),
            PathMap(),
            lambda url, recursive: store.list(url, recursive=recursive),
            local_path_of,
        )
        best = best_cpu = float("inf")
        deps = 0
        for _ in range(2 if quick else 5):
            started, started_cpu = time.perf_counter(), time.process_time()
            found = resolve_nuke(ctx)
            best = min(best, time.perf_counter() - started)
            # CPU time too: on a shared, busy machine wall time mostly measures the others.
            best_cpu = min(best_cpu, time.process_time() - started_cpu)
            deps = len(found.deps)
    lines = text.count("\n")
    from benchmarks.common import table

    text_table = table(
        "Nuke script resolve (10 frames, best of runs)",
        ["lines", "MB", "deps", "seconds", "lines/s"],
        [[lines, round(len(text.encode()) / 1e6, 2), deps, round(best, 3), round(lines / best)]],
    )
    return {
        "title": "nuke_parse",
        "table": text_table,
        "lines": lines,
        "bytes": len(text.encode()),
        "deps": deps,
        "seconds": round(best, 4),
        "cpu_seconds": round(best_cpu, 4),
        "lines_per_s": round(lines / best),
        # Issue 10: "a 2,000-Read script must stay under 1 s".
        "targets": {"under_1s": best < 1.0},
    }


def main(argv: list[str]) -> None:
    figures = run("--quick" in argv)
    print(f"{'benchmark':<18} {'lines':>8} {'deps':>6} {'seconds':>9} {'cpu s':>7} {'lines/s':>10}")
    print(
        f"{'nuke_parse':<18} {figures['lines']:>8} {figures['deps']:>6} "
        f"{figures['seconds']:>9.4f} {figures['cpu_seconds']:>7.3f} {figures['lines_per_s']:>10}"
    )
    figures.pop("table")
    print(json.dumps({"benchmark": "nuke_parse", **figures}))


if __name__ == "__main__":
    main(sys.argv[1:])
