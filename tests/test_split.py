"""One frame across many tasks (``split:``), through ``jitrender run`` with real Blender (bpy)
and OpenImageIO: a small Cycles scene rendered as four (frame, part) tasks equals the same
frame rendered by one task, is assembled exactly once, and a killed task's rerun renders only
its missing part."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from jitrender.engines.blender_render import tile_window
from jitrender.farm import TaskSlot, task_parts
from jitrender.job import SplitSpec
from jitrender.split import part_options
from tests.conftest import cli, put_object
from tests.renderjobs import bucket_objects

pytest.importorskip("bpy")
oiio = pytest.importorskip("OpenImageIO")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

WIDTH, HEIGHT, SAMPLES = 64, 48, 16

SPLIT_SCENE = Path(__file__).with_name("split_scene.py")  # plain.blend, denoised.blend


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scenes")
    subprocess.run([sys.executable, str(SPLIT_SCENE), str(folder)], check=True, capture_output=True)
    return folder


def write_job(root: Path, scene_url: str, outputs_url: str, split: dict[str, Any] | None) -> Path:
    stage: dict[str, Any] = {
        "name": "render",
        "engine": "blender",
        "args": {"format": "OPEN_EXR", "output": "shot.####.exr", "threads": 2},
    }
    if split is not None:
        stage["split"] = split
    job = {
        "name": "split" if split else "whole",
        "scene": scene_url,
        "frames": "1",
        "stages": [stage],
        "outputs": {"to": outputs_url, "files": ["shot.####.exr"]},
        "cache": {"dir": str(root / "cache")},
    }
    path = root / f"{job['name']}.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(JITRENDER_HEARTBEAT_INTERVAL="0", JITRENDER_PREEMPTION_WATCH="off")
    for key in ("BATCH_TASK_INDEX", "BATCH_TASK_COUNT", "JITRENDER_BLENDER"):
        env.pop(key, None)
    return env


def start_task(job: Path, index: int, count: int) -> subprocess.Popen[str]:
    """``jitrender run`` of one task in its own session (to be killed with it), stderr piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "jitrender.cli", "run", str(job), "--task-index", str(index),
         "--task-count", str(count), "--progress", "plain"],
        env=cli_env(), stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip


def jitrender(*args: str, timeout: float = 240) -> tuple[int, str, dict[str, Any]]:
    done = cli(*args, "--json", env=cli_env(), timeout=timeout)
    report = json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}
    return done.returncode, done.stderr, report


def run_task(job: Path, index: int | None = None, count: int = 4) -> dict[str, Any]:
    task = ["--task-index", str(index), "--task-count", str(count)] if index is not None else []
    code, err, report = jitrender("run", str(job), *task)
    assert code == 0, err[-3000:]
    return report


def pixels(path: Path) -> np.ndarray[Any, np.dtype[np.float32]]:
    buf = oiio.ImageBuf(str(path))
    assert buf.spec().format == oiio.FLOAT, f"{path.name} is {buf.spec().format}, not float"
    data: np.ndarray[Any, np.dtype[np.float32]] = buf.get_pixels(oiio.FLOAT)
    return data


def psnr(image: np.ndarray[Any, Any], reference: np.ndarray[Any, Any]) -> float:
    error = float(((image[..., :3] - reference[..., :3]) ** 2).mean())
    peak = float(reference[..., :3].max())
    return float("inf") if error == 0 else 10 * np.log10(peak**2 / error)


# -- pure functions -----------------------------------------------------------------------------


def test_tiles_cover_each_axis_once_and_overscan_stays_inside_the_frame() -> None:
    windows = [tile_window(i, 3, 64, 5) for i in range(3)]
    assert [(a, b) for a, b, _, _ in windows] == [(0, 21), (21, 42), (42, 64)]
    assert [(c, d) for _, _, c, d in windows] == [(0, 26), (16, 47), (37, 64)]


def test_parts_spread_over_tasks_as_frames_do() -> None:
    every = [task_parts([1, 2], 4, TaskSlot(i, 3, "test"), None) for i in range(3)]
    assert every == [
        [(1, 0), (1, 1), (1, 2)],
        [(1, 3), (2, 0), (2, 1)],
        [(2, 2), (2, 3)],
    ]
    assert part_options(SplitSpec(tiles=[2, 2], overscan=4), 1) == ["--part-tile=1,0,2,2,4"]
    assert part_options(SplitSpec(samples=4), 3) == ["--part-samples=3,4"]


@pytest.mark.parametrize(
    ("stage", "why"),
    [
        (
            "{name: render, command: 'true', split: {samples: 2}}",
            "only a per-frame 'blender' engine stage renders parts, not 'command' per frame",
        ),
        (
            "{name: render, engine: blender, args: {engine: BLENDER_EEVEE}, split: {samples: 2}}",
            "parts render with Cycles only, not args.engine 'BLENDER_EEVEE'",
        ),
    ],
)
def test_split_outside_a_cycles_blender_stage_is_a_one_line_config_error(
    stage: str, why: str, tmp_path: Path
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"frames: 1\noutputs: {{to: out}}\nstages:\n  - {stage}\n")
    code, err, _ = jitrender("validate", str(job))
    assert code == 78
    assert err.strip().splitlines() == [f"jitrender: error: {job}:4: stages[0]: split: {why}"]


# -- through the CLI ------------------------------------------------------------------------------


def test_tiles_2x2_as_four_tasks_equal_one_task_to_float_rounding_with_no_seam(
    tmp_path: Path, scenes: Path, gcs_bucket: str
) -> None:
    scene_url = f"{gcs_bucket}/shots/plain.blend"
    put_object(scene_url, (scenes / "plain.blend").read_bytes())
    whole = write_job(tmp_path, scene_url, f"{gcs_bucket}/whole", None)
    split = write_job(tmp_path, scene_url, f"{gcs_bucket}/split", {"tiles": [2, 2], "overscan": 4})

    run_task(whole)
    reports = [run_task(split, index) for index in range(4)]

    assert [r["parts"]["rendered"] for r in reports] == [[[1, p]] for p in range(4)]
    assert [r["parts"]["assembled"] for r in reports] == [[], [], [], [1]]
    assert [r["frames"]["done"] for r in reports] == [[], [], [], [1]]
    objects = bucket_objects(gcs_bucket)
    parts = [n for n in objects if "/parts/" in n]
    assert len(parts) == 8  # four EXRs, four part markers
    for name in ("whole/shot.0001.exr", "split/shot.0001.exr"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(objects[name][1])
    one, four = pixels(tmp_path / "whole/shot.0001.exr"), pixels(tmp_path / "split/shot.0001.exr")
    assert one.shape == four.shape == (HEIGHT, WIDTH, 4)
    assert np.abs(four - one).max() <= 1e-5
    for x in (WIDTH // 2 - 1, WIDTH // 2):  # the columns and rows either side of the tile edges
        assert np.abs(four[:, x] - one[:, x]).max() <= 1e-5
    for y in (HEIGHT // 2 - 1, HEIGHT // 2):
        assert np.abs(four[y] - one[y]).max() <= 1e-5
    specs = [oiio.ImageBuf(str(tmp_path / n)).spec() for n in ("whole/shot.0001.exr",
                                                                "split/shot.0001.exr")]  # fmt: skip
    for key in ("cycles.ViewLayer.samples", "Camera", "Frame", "Scene", "Software"):
        assert specs[1].get_string_attribute(key) == specs[0].get_string_attribute(key) != ""
    marker = json.loads(next(v for n, (_, v) in objects.items() if n.endswith("/frame.1.json")))
    assert list(marker["outputs"]) == [f"{gcs_bucket}/split/shot.0001.exr"]


def test_four_sample_subsets_average_to_the_full_render_and_denoise_once(
    tmp_path: Path, scenes: Path
) -> None:
    bucket = tmp_path / "bucket"
    scene_url = f"file://{bucket}/denoised.blend"
    put_object(scene_url, (scenes / "denoised.blend").read_bytes())
    whole = write_job(tmp_path, scene_url, f"file://{bucket}/whole", None)
    split = write_job(tmp_path, scene_url, f"file://{bucket}/split", {"samples": 4})

    run_task(whole)
    reports = [run_task(split, index) for index in range(4)]

    assert [r["parts"]["assembled"] for r in reports] == [[], [], [], [1]]
    one, four = pixels(bucket / "whole/shot.0001.exr"), pixels(bucket / "split/shot.0001.exr")
    # Denoised once on the whole frame (a Denoise node fed the parts' albedo and normal)
    # against Cycles' own denoiser on the unsplit frame.
    assert abs(float(four.mean()) - float(one.mean())) <= 1e-4 * float(one.mean())
    assert psnr(four, one) >= 40
    part = json.loads((bucket / "split/_jitrender").glob("*/parts/frame.1.part.2.json").__next__()
                      .read_text())  # fmt: skip
    assert (part["offset"], part["samples"], part["total"]) == (8, 4, 16)
    samples = oiio.ImageBuf(str(bucket / "split/shot.0001.exr")).spec()
    assert samples.get_string_attribute("cycles.ViewLayer.samples") == "16"


def test_a_task_killed_mid_part_rerenders_only_that_part_and_the_frame_is_assembled_once(
    tmp_path: Path, scenes: Path, gcs_bucket: str
) -> None:
    scene_url = f"{gcs_bucket}/shots/plain.blend"
    put_object(scene_url, (scenes / "plain.blend").read_bytes())
    split = write_job(tmp_path, scene_url, f"{gcs_bucket}/split", {"tiles": [2, 2], "overscan": 4})

    run_task(split, 0)
    victim = start_task(split, 1, 4)
    assert victim.stderr is not None
    for line in victim.stderr:
        if "stage_start stage=render frames=1 part 1 " in line:
            break
    time.sleep(0.3)  # the part's Blender process is starting (it takes seconds to render)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    names = set(bucket_objects(gcs_bucket, "split/"))
    assert not any(n.endswith("frame.1.part.1.json") for n in names)

    later = [run_task(split, index) for index in (2, 3)]
    assert [r["parts"]["waiting_for_other_parts"] for r in later] == [[1], [1]]
    assert "split/shot.0001.exr" not in bucket_objects(gcs_bucket, "split/")
    rerun = run_task(split, 1)  # the killed task, last to finish: assembles the frame
    assert rerun["parts"]["rendered"] == [[1, 1]]
    assert rerun["parts"]["assembled"] == [1]
    assert rerun["frames"]["done"] == [1]
    written = {n: g for n, (g, _) in bucket_objects(gcs_bucket, "split/").items()}

    again = run_task(split, 0)  # a retry of a finished task renders and assembles nothing
    assert again["frames"]["skipped_already_done"] == [1]
    assert "parts" not in again
    code, err, report = jitrender("assemble", str(split))
    assert code == 0, err
    assert report["frames"]["skipped_already_done"] == [1]
    code, err, status = jitrender("status", str(split))
    assert code == 0, err
    assert (status["complete"], status["frames"]["done"]) == (True, [1])

    # One object generation for the frame, its marker and every part: written once, never
    # replaced by the later runs.
    assert {n: g for n, (g, _) in bucket_objects(gcs_bucket, "split/").items()} == written
    assert [n for n in written if n.endswith(".exr") and "/parts/" not in n] == [
        "split/shot.0001.exr"
    ]


def test_submit_starts_one_task_per_chunk_of_frame_part_pairs(tmp_path: Path) -> None:
    job = write_job(tmp_path, "shots/plain.blend", f"file://{tmp_path}/out", {"samples": 4})
    data = yaml.safe_load(job.read_text())
    data.update(frames="1-2", chunk=1)
    job.write_text(yaml.safe_dump(data))
    done = cli("submit", str(job), "--farm", "slurm", "--dry-run", env=cli_env())
    assert done.returncode == 0, done.stderr
    assert "#SBATCH --array=0-7\n" in done.stdout  # 2 frames x 4 parts


def test_two_tasks_racing_to_assemble_leave_one_object_and_a_denoised_frame_without_seams(
    tmp_path: Path, scenes: Path, gcs_bucket: str
) -> None:
    scene_url = f"{gcs_bucket}/shots/denoised.blend"
    put_object(scene_url, (scenes / "denoised.blend").read_bytes())
    split = write_job(tmp_path, scene_url, f"{gcs_bucket}/split", {"tiles": [2, 1]})
    run_task(split, 0, count=2)
    victim = start_task(split, 1, 2)
    assert victim.stderr is not None
    for line in victim.stderr:
        if "stage_start stage=render frames=1 assembly " in line:
            break
    os.killpg(victim.pid, signal.SIGKILL)  # killed while assembling, after its last part
    victim.wait(timeout=30)
    assert "split/shot.0001.exr" not in bucket_objects(gcs_bucket, "split/")

    # Its retry and a wrangler's `jitrender assemble` both find every part and assemble.
    racers = [
        subprocess.Popen(
            [sys.executable, "-m", "jitrender.cli", *argv, "--json"],
            env=cli_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for argv in (
            ["run", str(split), "--task-index", "1", "--task-count", "2"],
            ["assemble", str(split)],
        )
    ]
    results = [proc.communicate(timeout=240) for proc in racers]
    assert [proc.returncode for proc in racers] == [0, 0], [err[-2000:] for _, err in results]
    reports = [json.loads(out) for out, _ in results]
    assert all(r["frames"]["done"] + r["frames"]["skipped_already_done"] == [1] for r in reports)
    assert reports[0]["parts"]["rendered"] == []  # its part was in the bucket already
    objects = bucket_objects(gcs_bucket, "split/")
    assert [n for n in objects if n.endswith(".exr") and "/parts/" not in n] == [
        "split/shot.0001.exr"
    ]
    assert len([n for n in objects if n.endswith("/frame.1.json")]) == 1
    # Denoised once on the whole frame, so no tile edge: the frame is the unsplit denoised
    # render's, the columns either side of the edge (x = 31 | 32) included.
    whole = write_job(tmp_path, scene_url, f"{gcs_bucket}/whole", None)
    run_task(whole)
    objects = bucket_objects(gcs_bucket)
    for name in ("whole/shot.0001.exr", "split/shot.0001.exr"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(objects[name][1])
    one, two = pixels(tmp_path / "whole/shot.0001.exr"), pixels(tmp_path / "split/shot.0001.exr")
    assert np.abs(two - one).max() <= 1e-4
    assert np.abs(two[:, 31:33] - one[:, 31:33]).max() <= 1e-4
