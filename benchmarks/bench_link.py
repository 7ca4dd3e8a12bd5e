"""7. What a user compares with: ``jitrender run`` as a whole CLI process against rclone
(``copy --files-from``, 64 transfers), transfer_manager and gcsfs.get, each a fresh process too,
through the cloud-link stand-in (20 ms a request, +20 ms a new connection, 100 MB/s a
connection, 400 MB/s the node). Rounds are interleaved (tool A, B, C, then again), and every
figure is a median with its spread (min-max) over the rounds.

Shapes: a shot (10 frames x 4 sequence layers + 30 textures + the scene), many small files,
a few large files (with and without the link limits), a warm run of 1,000 cached dependencies,
10,000 cold small dependencies, and the plan (resolve + stat) of 100,000 dependencies."""

from __future__ import annotations

import itertools
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import (
    BUCKET,
    MARK_FRAMES,
    REPO,
    Emulator,
    MiB,
    emulator,
    ratio,
    table,
    workdir,
)

TITLE = "Through a cloud link, whole processes: jitrender vs rclone / transfer_manager / gcsfs"
LINK = {"connect_ms": 20.0, "node_mbs": 400.0}  # per-connection cap: the suite's --bandwidth-mbs
UNLIMITED = {"connect_ms": 20.0, "node_mbs": 0.0, "bandwidth_mbs": 0.0}
NODE_MB_S = 400.0


@dataclass(frozen=True)
class Shape:
    name: str
    objects: tuple[tuple[str, int], ...]  # (object name in the bucket, size)
    scene: str  # the manifest the jitrender job renders
    frames: str = "1"

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.objects)


# -- the tools, each one process ------------------------------------------------------------


def _proc(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    env = dict(env or os.environ)
    # Bytecode as an installed package has it, whatever this shell says (compiling jitrender
    # on every start costs ~0.4 s of CPU here): an untimed warm-up writes it (_WARMED).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env.setdefault("PYTHONPYCACHEPREFIX", str(Path(tempfile.gettempdir()) / "jitrender-bench-pyc"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    out = subprocess.run(
        list(argv), cwd=REPO, env=env, capture_output=True, text=True, timeout=1800, check=False
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds (user + sys) of the tool's process: steadier than wall on a loaded machine.
    _CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} {argv[1:3]} failed ({out.returncode}): {out.stderr[-800:]}")
    return wall


def _jitrender(
    emu: Emulator, root: Path, shape: Shape, cache: Path, tag: str, again: bool = False
) -> float:
    """One ``jitrender run`` of ``shape``, as a job named ``tag``; ``again``: of the job file
    ``tag`` names as it stands (written on the first call), its frames rendered again."""
    job = root / f"job-{tag}.yaml"
    if not (again and job.exists()):
        job.write_text(
            yaml.safe_dump(
                {
                    "version": 1,
                    "name": tag,
                    "scene": f"gs://{BUCKET}/{shape.scene}",
                    "frames": shape.frames,
                    "stages": [{"name": "read", "per": "chunk", "command": MARK_FRAMES}],
                    "outputs": {"to": (root / f"out-{tag}").as_uri()},
                },
                sort_keys=False,
            )
        )
    report = root / f"report-{tag}.json"
    argv = [sys.executable, "-m", "jitrender.cli", "run", str(job), "--cache-dir", str(cache)]
    argv += ["--rerender"] if again else []
    wall = _proc([*argv, "--progress", "quiet", "--report", str(report)])
    data = json.loads(report.read_text())
    fetched, needed = data["cache"]["bytes_fetched"], data["deps"]["bytes_needed"]
    if fetched not in (0, needed):
        raise RuntimeError(f"{tag}: fetched {fetched} bytes for {needed} needed")
    return wall


def _rclone(emu: Emulator, root: Path, names: Sequence[str], dest: Path) -> float:
    listing = root / "rclone-files.txt"
    listing.write_text("".join(f"{n}\n" for n in names))
    env = os.environ | {"RCLONE_CONFIG": "/dev/null"}
    argv = ["rclone", "copy", "--files-from", str(listing), "--transfers", "64"]
    argv += ["--gcs-anonymous", "--gcs-endpoint", f"{emu.url}/storage/v1/"]
    return _proc([*argv, f":gcs:{BUCKET}", str(dest)], env)


_TM = """
import sys
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage import transfer_manager
bucket = storage.Client(project="bench", credentials=AnonymousCredentials()).bucket("{bucket}")
names = open(sys.argv[1]).read().split()
if sys.argv[3] == "chunks":
    import os
    for name in names:
        path = os.path.join(sys.argv[2], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        transfer_manager.download_chunks_concurrently(
            bucket.blob(name), path, max_workers=8, worker_type=transfer_manager.THREAD)
else:
    for r in transfer_manager.download_many_to_path(
            bucket, names, destination_directory=sys.argv[2], max_workers=8,
            worker_type=transfer_manager.THREAD):
        if isinstance(r, Exception):
            raise r
"""

_GCSFS = """
import os, sys, gcsfs
fs = gcsfs.GCSFileSystem(token="anon", endpoint_url=os.environ["STORAGE_EMULATOR_HOST"])
names = open(sys.argv[1]).read().split()
local = [os.path.join(sys.argv[2], n) for n in names]
for path in local:
    os.makedirs(os.path.dirname(path), exist_ok=True)
fs.get(["{bucket}/" + n for n in names], local)
"""


def _python_tool(code: str, root: Path, names: Sequence[str], dest: Path, mode: str) -> float:
    listing = root / "py-files.txt"
    listing.write_text("".join(f"{n}\n" for n in names))
    script = code.replace("{bucket}", BUCKET)
    return _proc([sys.executable, "-c", script, str(listing), str(dest), mode])


_CPU: list[float] = []  # the CPU seconds of each _proc call, in order
# Whether the untimed warm-up round ran: the first start of a Python tool compiles its
# modules into the bench's bytecode folder (~0.4 s of CPU), which an installed one has done.
_WARMED: list[bool] = []
_RUN_TAGS = itertools.count()  # large and large_unlimited share a shape name and outputs

Tool = Callable[[Path], float]  # a fresh destination folder -> wall seconds


def _tools(emu: Emulator, root: Path, shape: Shape, which: Sequence[str]) -> dict[str, Tool]:
    names = [n for n, _ in shape.objects]
    counter = _RUN_TAGS  # shared by every shape: a tag reused would find its frame done

    def jit(dest: Path) -> float:
        return _jitrender(emu, root, shape, dest, f"{shape.name}-{next(counter)}")

    tools: dict[str, Tool] = {"jitrender": jit}
    if "rclone" in which and shutil.which("rclone"):
        tools["rclone --transfers 64"] = lambda dest: _rclone(emu, root, names, dest)
    if "tm" in which:
        tools["transfer_manager x8"] = lambda dest: _python_tool(_TM, root, names, dest, "many")
    if "chunks" in which:
        tools["download_chunks_concurrently x8"] = lambda dest: _python_tool(
            _TM, root, names, dest, "chunks"
        )
    if "gcsfs" in which:
        tools["gcsfs.get"] = lambda dest: _python_tool(_GCSFS, root, names, dest, "")
    return tools


def _rounds(
    tools: dict[str, Tool], root: Path, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved: every tool once per round, into a fresh folder it must fill, the order
    turned by one each round (no tool is always the one right after another's deletion of its
    files, or after the data's creation). Returns the wall seconds and the CPU seconds of each
    tool's runs."""
    walls: dict[str, list[float]] = {name: [] for name in tools}
    cpus: dict[str, list[float]] = {name: [] for name in tools}
    names = list(tools)
    if not _WARMED:  # once per process: each Python tool's bytecode written, not timed
        _WARMED.append(True)
        for name in names:
            dest = root / f"warm-up-{abs(hash(name))}"
            tools[name](dest)
            shutil.rmtree(dest, ignore_errors=True)
    for index in range(rounds):
        turn = index % len(names)
        for name in names[turn:] + names[:turn]:
            tool = tools[name]
            dest = root / f"dest-{index}-{len(walls[name])}-{abs(hash(name))}"
            walls[name].append(tool(dest))
            cpus[name].append(_CPU[-1])
            shutil.rmtree(dest, ignore_errors=True)
    return walls, cpus


def _summary(walls: list[float]) -> dict[str, float]:
    return {
        "median_s": round(statistics.median(walls), 3),
        "min_s": round(min(walls), 3),
        "max_s": round(max(walls), 3),
    }


# -- the bucket -----------------------------------------------------------------------------


def _write(data: Path, name: str, size: int) -> None:
    path = data / BUCKET / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size))


def _manifest(data: Path, name: str, lines: Sequence[str]) -> tuple[str, int]:
    text = "".join(f"{line}\n" for line in lines).encode()
    path = data / BUCKET / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    return name, len(text)


def _shot(data: Path, quick: bool) -> Shape:
    frame_bytes, tex_bytes = (1 * MiB, 512 << 10) if quick else (16 * MiB, 8 * MiB)
    objects = []
    for layer in ("beauty", "depth", "crypto", "bg"):
        for frame in range(1001, 1011):
            name = f"shot/{layer}/{layer}.{frame:04d}.exr"
            _write(data, name, frame_bytes)
            objects.append((name, frame_bytes))
    for index in range(30):
        name = f"shot/tex/t{index:02d}.tx"
        _write(data, name, tex_bytes)
        objects.append((name, tex_bytes))
    lines = [f"gs://{BUCKET}/shot/{layer}/{layer}.####.exr" for layer in ("beauty", "depth")]
    lines += [f"gs://{BUCKET}/shot/{layer}/{layer}.####.exr" for layer in ("crypto", "bg")]
    lines += [f"gs://{BUCKET}/shot/tex/"]
    objects.append(_manifest(data, "shot/shot.txt", lines))
    return Shape("shot", tuple(objects), "shot/shot.txt", "1001-1010")


def _many(data: Path, name: str, count: int, size: int, per_folder: int = 1000) -> Shape:
    objects = []
    for index in range(count):
        obj = f"{name}/d{index // per_folder:03d}/f{index:06d}.bin"
        _write(data, obj, size)
        objects.append((obj, size))
    folders = sorted({obj.rpartition("/")[0] for obj, _ in objects})
    scene = _manifest(data, f"{name}.txt", [f"gs://{BUCKET}/{f}/" for f in folders])
    return Shape(name, (*objects, scene), scene[0])


def _explicit(data: Path, name: str, shape: Shape) -> Shape:
    """The same objects named one per line, as a resolver hands them over (no prefixes)."""
    lines = [f"gs://{BUCKET}/{obj}" for obj, _ in shape.objects if obj != shape.scene]
    scene = _manifest(data, f"{name}.txt", lines)
    return Shape(name, (*shape.objects, scene), scene[0])


# -- the measurements ----------------------------------------------------------------------


def _compare(
    emu: Emulator, root: Path, shape: Shape, which: Sequence[str], rounds: int
) -> dict[str, Any]:
    walls, cpus = _rounds(_tools(emu, root, shape, which), root, rounds)
    count = len(shape.objects)
    tools = {}
    for name, series in walls.items():
        s = _summary(series)
        tools[name] = s | {
            "walls_s": [round(w, 3) for w in series],
            "cpu_s": [round(c, 3) for c in cpus[name]],
            "cpu_median_s": round(statistics.median(cpus[name]), 3),
            "files_per_s": round(count / s["median_s"], 1),
            "MB_per_s": round(shape.bytes / s["median_s"] / 1e6, 1),
        }
    alts = {k: v["median_s"] for k, v in tools.items() if k != "jitrender"}
    best = min(alts, key=alts.__getitem__) if alts else None
    return {
        "files": count,
        "bytes": shape.bytes,
        "tools": tools,
        "best_alternative": best,
        "ratio_vs_best": ratio(alts[best], tools["jitrender"]["median_s"]) if best else None,
    }


_PLAN_CHILD = """
import json, sys, threading, time
from pathlib import Path
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
import google.cloud.storage
from jitrender.job import load_job
from jitrender.plan import fetch_order
from jitrender.run import RunOptions, resolve_job
job = load_job(Path(sys.argv[1]))
base = rss(); peak = [base]; done = threading.Event()
def sample():
    while not done.wait(0.01):
        peak[0] = max(peak[0], rss())
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
deps = resolve_job(job, job.frame_list(), RunOptions(cache_dir=Path(sys.argv[2])))
order = fetch_order(deps.deps)
wall = time.perf_counter() - t0
done.set()
print(json.dumps({"wall_s": wall, "deps": len(order), "growth": max(peak[0], rss()) - base}))
"""


def _plan(root: Path, count: int, rounds: int) -> dict[str, Any]:
    """Resolve + stat ``count`` dependencies named one per line in a manifest, on a file://
    bucket (fake-gcs-server cannot hold 100,000 objects in reasonable time): jitrender's own
    cost per dependency, in a fresh process each round."""
    bucket = root / "plan-bucket"
    lines = []
    for index in range(count):
        folder = bucket / f"d{index // 1000:03d}"
        if index % 1000 == 0:
            folder.mkdir(parents=True)
        path = folder / f"f{index:06d}.bin"
        path.write_bytes(b"%d" % index)
        lines.append(path.as_uri())
    scene = root / "plan.txt"
    scene.write_text("".join(f"{line}\n" for line in lines))
    job = root / "plan.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "version": 1,
                "scene": scene.as_uri(),
                "frames": "1",
                "stages": [{"name": "read", "command": MARK_FRAMES}],
                "outputs": {"to": (root / "out-plan").as_uri()},
            }
        )
    )
    results = []
    env = os.environ | {
        "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "jitrender-bench-pyc")
    }
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    for index in range(rounds):
        out = subprocess.run(
            [sys.executable, "-c", _PLAN_CHILD, str(job), str(root / f"plan-cache-{index}")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            check=True,
        )
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    walls = [r["wall_s"] for r in results]
    per_dep = [r["growth"] / max(1, r["deps"]) for r in results]
    return _summary(walls) | {
        "deps": results[0]["deps"],
        "bytes_per_dep_median": round(statistics.median(per_dep)),
        "bytes_per_dep_max": round(max(per_dep)),
    }


def _cell(s: dict[str, float]) -> str:
    return f"{s['median_s']:.2f} ({s['min_s']:.2f}-{s['max_s']:.2f})"


def run(quick: bool) -> dict[str, Any]:
    rounds = 2 if quick else 3
    small_n = 200 if quick else 2000
    large = (4, 32 * MiB) if quick else (4, 512 * MiB)
    cold_n = 500 if quick else 10000
    plan_n = 10000 if quick else 100000
    out: dict[str, Any] = {"rounds": rounds, "link": LINK | {"unlimited": UNLIMITED}}
    # BENCH_LINK_SHAPES=small,warm runs only those shapes (for working on one of them).
    only = set(os.environ.get("BENCH_LINK_SHAPES", "").split(",")) - {""}

    def want(shape: str) -> bool:
        return not only or shape in only

    rows: list[list[Any]] = []

    def add(label: str, result: dict[str, Any], unit: str) -> None:
        for name, s in result["tools"].items():
            rate = (
                f"{s['files_per_s']:.0f} files/s"
                if unit == "files"
                else f"{s['MB_per_s']:.0f} MB/s"
            )
            mark = result["ratio_vs_best"] if name == "jitrender" else ""
            rows.append([label, name, _cell(s), f"{s['cpu_median_s']:.2f}", rate, mark])

    with workdir("link") as root:
        data, cold_data = root / "data", root / "cold-data"
        shot = _shot(data, quick)
        small = _many(data, "small", small_n, 64 << 10)
        big_names = tuple((f"large/sim{i}.vdb", large[1]) for i in range(large[0]))
        for name, size in big_names:
            _write(data, name, size)
        big_scene = _manifest(data, "large.txt", [f"gs://{BUCKET}/{n}" for n, _ in big_names])
        big = Shape("large", (*big_names, big_scene), big_scene[0])
        warm = _explicit(data, "warm", _many(data, "warmset", 1000, 1024, per_folder=100))
        # Its own bucket: fake-gcs-server's start-up time grows with the square of the objects.
        cold = _many(cold_data, "cold", cold_n, 1024)
        os.sync()  # the data written back now, not during the first tool's run
        with emulator(data, **LINK) as emu:
            if want("shot"):
                out["shot"] = _compare(emu, root, shot, ("rclone", "tm", "gcsfs"), rounds)
                add(
                    f"shot: {len(shot.objects)} files, {shot.bytes / 1e6:.0f} MB", out["shot"], "MB"
                )
            if want("small"):
                out["small"] = _compare(emu, root, small, ("rclone", "tm", "gcsfs"), rounds)
                add(f"{small_n} x 64 KiB", out["small"], "files")
            if want("large"):
                out["large"] = _compare(emu, root, big, ("rclone", "chunks", "gcsfs"), rounds)
                add(f"{large[0]} x {large[1] // MiB} MiB (node link)", out["large"], "MB")
            if want("warm"):
                out["warm"] = _warm(emu, root, warm, rounds)
            for name, label in (
                ("jitrender", "jitrender, a job file run before"),
                ("jitrender, new job file", "jitrender, a new job file"),
                ("rclone", "rclone (all present)"),
            ):
                if name in out.get("warm", {}):
                    warm_s = out["warm"][name]
                    cpu = f"{warm_s['cpu_median_s']:.2f}"
                    rows.append(["1,000 cached deps, warm", label, _cell(warm_s), cpu, "", ""])
        with emulator(data, **UNLIMITED) as emu:
            if want("large_unlimited"):
                out["large_unlimited"] = _compare(
                    emu, root, big, ("rclone", "chunks", "gcsfs"), rounds
                )
                add(
                    f"{large[0]} x {large[1] // MiB} MiB, no link limit",
                    out["large_unlimited"],
                    "MB",
                )
        shutil.rmtree(data, ignore_errors=True)
        with emulator(cold_data, **LINK) as emu:
            if want("cold_small"):
                out["cold_small"] = _compare(emu, root, cold, ("rclone",), rounds)
                add(f"{cold_n} x 1 KB deps, cold", out["cold_small"], "files")
        if want("plan"):
            out["plan"] = _plan(root, plan_n, rounds)
            plan = out["plan"]
            label = f"plan of {plan['deps']} deps (resolve + stat, file://)"
            per_dep = f"{plan['bytes_per_dep_median']} B/dep"
            rows.append([label, "jitrender", _cell(plan), "", per_dep, ""])
    link_share = (
        out["large"]["tools"]["jitrender"]["MB_per_s"] / NODE_MB_S if "large" in out else 0.0
    )
    out["large_link_share"] = round(link_share, 3)
    header = ["shape", "tool", "wall s median (min-max)", "CPU s", "rate", "vs best"]
    text = table(TITLE, header, rows)
    text += (
        f"\n\n{rounds} interleaved rounds; every tool a whole process (start-up included); "
        f"CPU s = the median user + sys seconds of the process (steadier than wall where other "
        f"work shares the machine); 'vs best' = best alternative's median wall / jitrender's "
        f"(>1: jitrender faster). Large files: jitrender's whole run at {link_share:.0%} of "
        f"the {NODE_MB_S:.0f} MB/s link."
    )
    out["table"] = text
    out["title"] = TITLE
    checks: dict[str, Callable[[], bool]] = {
        "shot_at_least_best": lambda: (out["shot"]["ratio_vs_best"] or 0) >= 1.0,
        "small_at_least_rclone": lambda: _vs(out["small"], "rclone --transfers 64") >= 1.0,
        "large_95pct_of_link": lambda: link_share >= 0.95,
        "large_unlimited_at_least_rclone": lambda: (
            _vs(out["large_unlimited"], "rclone --transfers 64") >= 1.0
        ),
        "warm_1000_under_0.4s": lambda: out["warm"]["jitrender"]["median_s"] < 0.4,
        "plan_under_3s_and_2KB_per_dep": lambda: (
            out["plan"]["median_s"] < 3.0 and out["plan"]["bytes_per_dep_median"] < 2048
        ),
    }
    shapes = {"shot_at_least_best": "shot", "small_at_least_rclone": "small",
              "large_95pct_of_link": "large", "large_unlimited_at_least_rclone": "large_unlimited",
              "warm_1000_under_0.4s": "warm", "plan_under_3s_and_2KB_per_dep": "plan"}  # fmt: skip
    out["targets"] = {name: check() for name, check in checks.items() if shapes[name] in out}
    return out


def _vs(result: dict[str, Any], tool: str) -> float:
    tools = result["tools"]
    if tool not in tools:
        return 0.0
    return float(tools[tool]["median_s"]) / float(tools["jitrender"]["median_s"])


def _warm(emu: Emulator, root: Path, shape: Shape, rounds: int) -> dict[str, Any]:
    """A warm cache, two ways: ``jitrender`` runs the job file the node ran before (a later
    task of the same job: its values come from the memo of checked job files), ``jitrender,
    new job file`` a job file the node has not seen (read and checked with PyYAML and
    pydantic)."""
    cache = root / "warm-cache"
    tools = _tools(emu, root, shape, ("rclone",))
    tools["jitrender"](cache)  # fill the cache (not timed)
    tag = f"{shape.name}-same"
    _jitrender(emu, root, shape, cache, tag, again=True)  # the node has run this job file
    rclone_dest = root / "warm-rclone"
    if "rclone --transfers 64" in tools:
        tools["rclone --transfers 64"](rclone_dest)
    runs: dict[str, Callable[[], float]] = {
        "jitrender": lambda: _jitrender(emu, root, shape, cache, tag, again=True),
        "jitrender, new job file": lambda: tools["jitrender"](cache),
    }
    if rclone_dest.exists():
        runs["rclone"] = lambda: tools["rclone --transfers 64"](rclone_dest)
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, once in runs.items():
            walls[name].append(once())
            cpus[name].append(_CPU[-1])
    return {
        name: _summary(series)
        | {"walls_s": series, "cpu_median_s": round(statistics.median(cpus[name]), 3)}
        for name, series in walls.items()
    }
