"""Split frames: one Cycles frame as 1 task vs 4 (frame, part) tasks (tiles [2, 2] and
4 sample subsets), the tasks run one after another and all at once on this machine; PSNR of
the assembled frame against the unsplit one; the assembly time of a 2K (2048x1080) frame.
Real Blender (bpy) and OpenImageIO, file:// buckets, ``jitrender run`` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import table, workdir

TITLE = "Split frames: 1 task vs 4 part tasks"

# Writes plain.blend and denoised.blend: the scenes tests/test_split.py renders too.
SCENE = Path(__file__).resolve().parents[1] / "tests" / "split_scene.py"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(JITRENDER_HEARTBEAT_INTERVAL="0", JITRENDER_PREEMPTION_WATCH="off")
    return env


def _job(root: Path, name: str, scene: Path, args: dict[str, Any], split: Any) -> Path:
    stage: dict[str, Any] = {"name": "render", "engine": "blender", "args": args}
    if split is not None:
        stage["split"] = split
    path = root / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "scene": str(scene),
                "frames": "1",
                "stages": [stage],
                "outputs": {"to": f"file://{root}/out/{name}", "files": ["f.####.exr"]},
                "cache": {"dir": str(root / "cache")},
            }
        )
    )
    return path


def _start(job: Path, index: int | None, report: Path) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "jitrender.cli", "run", str(job), "--report", str(report)]
    if index is not None:
        argv += ["--task-index", str(index), "--task-count", "4"]
    return subprocess.Popen(argv, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait(proc: subprocess.Popen[bytes]) -> None:
    _, err = proc.communicate(timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"jitrender run failed: {err.decode()[-2000:]}")


def _tasks(job: Path, root: Path, parallel: bool) -> tuple[float, list[dict[str, Any]]]:
    """Wall seconds of the 4 tasks (one after another, or all started at once), and reports."""
    reports = [root / f"{job.stem}.{'par' if parallel else 'seq'}.{i}.json" for i in range(4)]
    started = time.monotonic()
    if parallel:
        procs = [_start(job, i, reports[i]) for i in range(4)]
        for proc in procs:
            _wait(proc)
    else:
        for i in range(4):
            _wait(_start(job, i, reports[i]))
    wall = time.monotonic() - started
    return wall, [json.loads(r.read_text()) for r in reports]


def _pixels(path: Path) -> Any:
    import OpenImageIO as oiio

    return oiio.ImageBuf(str(path)).get_pixels(oiio.FLOAT)


def _psnr(image: Any, reference: Any) -> float:
    import numpy as np

    error = float(((image[..., :3] - reference[..., :3]) ** 2).mean())
    peak = float(reference[..., :3].max())
    return float("inf") if error == 0 else float(10 * np.log10(peak**2 / error))


def _clear(root: Path, name: str) -> None:
    import shutil

    shutil.rmtree(root / "out" / name, ignore_errors=True)


def run(quick: bool) -> dict[str, Any]:
    size, samples = ([160, 120], 16) if quick else ([320, 240], 64)
    args = {"format": "OPEN_EXR", "output": "f.####.exr", "resolution": size, "samples": samples}
    rows: list[list[Any]] = []
    figures: dict[str, Any] = {"size": size, "samples": samples}
    with workdir("split") as root:
        subprocess.run([sys.executable, str(SCENE), str(root)], check=True, capture_output=True)
        scenes = {kind: root / f"{kind}.blend" for kind in ("plain", "denoised")}
        for kind, split in (("plain", {"tiles": [2, 2], "overscan": 8}),
                            ("denoised", {"samples": 4})):  # fmt: skip
            label = f"{kind} {'tiles 2x2' if 'tiles' in split else 'samples 4'}"
            whole = _job(root, f"{kind}-whole", scenes[kind], args, None)
            parts = _job(root, f"{kind}-split", scenes[kind], args, split)
            started = time.monotonic()
            _wait(_start(whole, None, root / f"{kind}-whole.json"))
            one = time.monotonic() - started
            sequential, _ = _tasks(parts, root, parallel=False)
            reference = _pixels(root / "out" / whole.stem / "f.0001.exr")
            image = _pixels(root / "out" / parts.stem / "f.0001.exr")
            _clear(root, parts.stem)
            parallel, reports = _tasks(parts, root, parallel=True)
            psnr, max_diff = _psnr(image, reference), float(abs(image - reference).max())
            rows.append([label, one, sequential, parallel, psnr, max_diff])
            figures[label] = {"one_task_s": one, "four_tasks_sequential_s": sequential,
                              "four_tasks_parallel_s": parallel, "psnr_db": psnr,
                              "max_abs_diff": max_diff,
                              "parts": [r.get("parts") for r in reports]}  # fmt: skip
        two_k = {**args, "resolution": [2048, 1080], "samples": 1}
        job = _job(root, "2k", scenes["denoised"], two_k, {"tiles": [2, 2], "overscan": 16})
        _, reports = _tasks(job, root, parallel=False)
        summary = next(r["parts"] for r in reports if r["parts"]["assembled"])
        figures["2k"] = summary
    text = table(
        TITLE,
        ["frame", "1 task s", "4 tasks one by one s", "4 tasks at once s", "PSNR dB", "max diff"],
        rows,
        note=(
            f"{size[0]}x{size[1]}, {samples} samples, on this machine's cores (all 4 'at once' "
            f"share them). 2K (2048x1080, 4 tiles, denoised): download + paste "
            f"{summary['assemble_s']:.2f} s, Blender denoise + compositor + write "
            f"{summary['finish_s']:.2f} s"
        ),
    )
    return {"title": TITLE, "table": text, **figures}
