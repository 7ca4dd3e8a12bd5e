"""The Blender plugin with real Blender (the bpy module, in subprocesses): a scene whose
textures and image sequence are absolute studio paths (``/mnt/show/...``) that do not exist
on the node renders the right pixels, fetching only what the rendered frames read."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from jitrender.cache import Cache
from jitrender.paths import PathMap, rule_from
from jitrender.plan import resolve_scene
from tests.conftest import put_object
from tests.hooks.conftest import HOOKS, RunningAgent, make_bucket, start_test_agent

pytestmark = [
    pytest.mark.blender,
    pytest.mark.skipif(importlib.util.find_spec("bpy") is None, reason="needs the bpy module"),
]

REPO = Path(__file__).resolve().parents[2]
WOOD = (40, 200, 60)


def plate_colour(number: int) -> tuple[int, int, int]:
    return (200, 30 * number, 20)


def _pngio() -> Any:
    spec = importlib.util.spec_from_file_location("pngio", REPO / "examples/turntable/pngio.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


PNG = _pngio()


def solid_png(rgb: tuple[int, int, int]) -> bytes:
    data: bytes = PNG.encode_png(np.full((4, 4, 3), rgb, np.uint8))
    return data


def show_files(with_wood: bool = True) -> dict[str, bytes]:
    files = {f"seq/plate.{n:04d}.png": solid_png(plate_colour(n)) for n in range(1, 6)}
    if with_wood:
        files["tex/wood.png"] = solid_png(WOOD)
    return files


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scene") / "shot.blend"
    subprocess.run(
        [sys.executable, str(Path(__file__).with_name("blend_hook_scene.py")), str(out)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def assert_frame_pixels(image_path: Path, frame: int) -> None:
    pixels = PNG.read_png(image_path)
    assert pixels.shape[:2] == (48, 64)
    left, right = pixels[24, 16, :3].astype(int), pixels[24, 48, :3].astype(int)
    assert np.abs(left - WOOD).max() <= 2, f"left half is {left}, not the wood texture"
    expected = plate_colour(frame)
    assert np.abs(right - expected).max() <= 2, f"right half is {right}, not plate {frame}"


def run_jitrender(
    job: dict[str, Any], tmp_path: Path
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    report = tmp_path / "report.json"
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("jitrender")),
            "run",
            str(job_file),
            "--report",
            str(report),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--keep-workspace",
            "--progress",
            "quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JITRENDER_HOOKS": str(HOOKS)},
    )
    return done, json.loads(report.read_text())


def blender_job(scene_url: str, bucket: str, out: Path, frames: str) -> dict[str, Any]:
    return {
        "scene": scene_url,
        "frames": frames,
        "path_map": [{"from": "/mnt/show", "to": f"{bucket}/show"}],
        "stages": [
            {
                "name": "render",
                "engine": "blender",
                "args": {"resolution": [64, 48], "samples": 2, "output": "beauty.####.png"},
            }
        ],
        "outputs": {"to": f"file://{out}", "files": ["beauty.*.png"]},
        "retries": {"frame": 0},
    }


def run_from_gcs(
    scene: Path,
    files: dict[str, bytes],
    bucket: str,
    tmp_path: Path,
    frames: str,
    resolution: tuple[int, int] = (64, 48),
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], Path]:
    """``jitrender run`` of ``scene`` uploaded to ``bucket``/shots, with ``files`` below
    ``bucket``/show (where /mnt/show maps): (the process, its report, the outputs folder)."""
    for rel, data in files.items():
        put_object(f"{bucket}/show/{rel}", data)
    scene_url = f"{bucket}/shots/{scene.name}"
    put_object(scene_url, scene.read_bytes())
    out = tmp_path / "out"
    job = blender_job(scene_url, bucket, out, frames)
    job["stages"][0]["args"]["resolution"] = list(resolution)
    done, report = run_jitrender(job, tmp_path)
    return done, report, out


def test_jitrender_run_renders_studio_paths_from_gcs_with_only_the_frames_plates(
    scene: Path, gcs_bucket: str, tmp_path: Path
) -> None:
    done, report, out = run_from_gcs(scene, show_files(), gcs_bucket, tmp_path, "2-3")
    assert done.returncode == 0, done.stderr[-3000:]
    for frame in (2, 3):
        assert_frame_pixels(out / f"beauty.{frame:04d}.png", frame)
    # Fetched: the scene, the texture and plates 2 and 3 only (never 1, 4 or 5).
    assert report["cache"]["misses"] == 4, report
    workspace = Path(report["workspace"])
    plates = sorted(p.name for p in workspace.rglob("plate.*.png"))
    assert plates == ["plate.0002.png", "plate.0003.png"]
    agent_log = (workspace / "logs" / "agent.log").read_text()
    assert "stopped" in agent_log


def test_a_texture_missing_from_the_bucket_fails_the_run_with_65_naming_it(
    scene: Path, gcs_bucket: str, tmp_path: Path
) -> None:
    files = show_files(with_wood=False)
    done, report, out = run_from_gcs(scene, files, gcs_bucket, tmp_path, "2")
    assert done.returncode == 65, done.stderr[-3000:]
    assert "wood.png" in done.stderr
    assert report["status"] == "failed" and not list(out.glob("*.png"))


def agent_for(scene: Path, tmp_path: Path, files: dict[str, bytes], frames: str) -> RunningAgent:
    """An agent over a local bucket holding ``files`` (at /mnt/show), told by the blend
    resolver which files ``frames`` need, as ``jitrender run`` tells its agent, and with
    nothing fetched: every file the render reads comes through the plugin's requests."""
    bucket = make_bucket(tmp_path / "bucket", files)
    deps = resolve_scene(
        Cache(tmp_path / "resolve-cache"),
        f"file://{scene}",
        [int(f) for f in frames.split(",")],
        path_map=PathMap([rule_from("/mnt/show", f"file://{bucket}")]),
    )
    return start_test_agent(tmp_path, files, deps=deps.deps)


def render_with_plugin(
    scene: Path, socket: str, out: Path, frame: int | str, resolution: str = "64x48"
) -> subprocess.CompletedProcess[str]:
    """blender_render with the plugin, as the blender engine runs it, against an agent (see
    :func:`agent_for`) that fetches only what the plugin asks for."""
    env = {
        **os.environ,
        "JITRENDER_SOCKET": socket,
        "JITRENDER_BLENDER_HOOK": str(HOOKS / "blender" / "jitrender_blender.py"),
    }
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "jitrender.engines.blender_render",
            f"--blend={scene}",
            f"--frames={frame}",
            f"--outputs={out}",
            "--output=beauty.####.png",
            "--samples=2",
            f"--resolution={resolution}",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_plugin_fetches_on_request_exactly_the_texture_and_that_frames_plate(
    scene: Path, tmp_path: Path
) -> None:
    running = agent_for(scene, tmp_path, show_files(), "4")
    try:
        done = render_with_plugin(scene, running.socket, tmp_path / "out", 4)
    finally:
        running.agent.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    assert_frame_pixels(tmp_path / "out" / "beauty.0004.png", 4)
    assert sorted(u.rsplit("/", 1)[1] for u in running.fetched) == ["plate.0004.png", "wood.png"]


def test_the_plugin_fails_the_frame_naming_a_texture_missing_from_storage(
    scene: Path, tmp_path: Path
) -> None:
    running = agent_for(scene, tmp_path, show_files(with_wood=False), "4")
    try:
        done = render_with_plugin(scene, running.socket, tmp_path / "out", 4)
    finally:
        running.agent.stop()
    assert done.returncode == 65
    assert "image 'wood' needs /mnt/show/tex/wood.png" in done.stderr
    assert "tex/wood.png: does not exist in storage" in done.stderr
    assert not (tmp_path / "out" / "beauty.0004.png").exists()


LINKED_SCENE = """
import sys, bpy
root = sys.argv[-1]
bpy.ops.wm.read_factory_settings(use_empty=True)
bpy.ops.mesh.primitive_cube_add()
bpy.context.active_object.name = "LibCube"
bpy.ops.wm.save_as_mainfile(filepath=root + "/bucket/lib/cube.blend")
bpy.ops.wm.read_factory_settings(use_empty=True)
with bpy.data.libraries.load(root + "/bucket/lib/cube.blend", link=True) as (src, dst):
    dst.objects = ["LibCube"]
for obj in dst.objects:
    bpy.context.scene.collection.objects.link(obj)
bpy.data.libraries[0].filepath = "/mnt/show/lib/cube.blend"
bpy.ops.wm.save_as_mainfile(filepath=root + "/shot.blend", relative_remap=False)
"""

OPEN_WITH_PLUGIN = """
import sys, importlib.util, bpy
spec = importlib.util.spec_from_file_location("jitrender_blender", sys.argv[-2])
plugin = importlib.util.module_from_spec(spec)
spec.loader.exec_module(plugin)
plugin.register()
bpy.ops.wm.open_mainfile(filepath=sys.argv[-1])
cube = bpy.data.objects["LibCube"]
print("LINKED", cube.library is not None, cube.data is not None and len(cube.data.vertices))
"""


def test_a_linked_library_at_a_studio_path_is_fetched_remapped_and_reloaded(
    tmp_path: Path,
) -> None:
    (tmp_path / "bucket" / "lib").mkdir(parents=True)
    subprocess.run(
        [sys.executable, "-c", LINKED_SCENE, str(tmp_path)], check=True, capture_output=True
    )
    library = (tmp_path / "bucket" / "lib" / "cube.blend").read_bytes()
    running = start_test_agent(tmp_path / "run", {"lib/cube.blend": library})
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                OPEN_WITH_PLUGIN,
                str(HOOKS / "blender" / "jitrender_blender.py"),
                str(tmp_path / "shot.blend"),
            ],
            env={**os.environ, "JITRENDER_SOCKET": running.socket},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        running.agent.stop()
    assert "LINKED True 8" in done.stdout, done.stdout + done.stderr
    assert [u.rsplit("/", 1)[1] for u in running.fetched] == ["cube.blend"]


# -- the video sequencer (blend_hook_scene.py ... vse) ---------------------------------------

CLIP = (51, 204, 102)  # the colour of both frames of clip.mov


def shot_colour(number: int) -> tuple[int, int, int]:
    return (20 * number + 20, 230 - 20 * number, 60)


def inner_colour(number: int) -> tuple[int, int, int]:
    return (240, 40 * number, 200)


@pytest.fixture(scope="module")
def vse_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("vse") / "edit.blend"
    subprocess.run(
        [sys.executable, str(Path(__file__).with_name("blend_hook_scene.py")), str(out), "vse"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return out


def vse_files(scene: Path, without: str = "") -> dict[str, bytes]:
    files = {f"vse/shot.{n:04d}.png": solid_png(shot_colour(n)) for n in range(1, 11)}
    files.update({f"vse/inner.{n:04d}.png": solid_png(inner_colour(n)) for n in range(1, 4)})
    files["vse/clip.mov"] = scene.with_name("clip.mov").read_bytes()
    files["vse/tone.wav"] = scene.with_name("tone.wav").read_bytes()
    files.pop(without, None)
    return files


def centre(image: Path) -> np.ndarray:
    pixels = PNG.read_png(image)
    assert pixels.shape[:2] == (16, 16)
    return pixels[8, 8, :3].astype(int)


def test_sequencer_strips_render_each_frames_element_fetching_only_those(
    vse_scene: Path, tmp_path: Path
) -> None:
    running = agent_for(vse_scene, tmp_path, vse_files(vse_scene), "4,9,15")
    try:
        done = render_with_plugin(vse_scene, running.socket, tmp_path / "out", "4,9,15", "16x16")
    finally:
        running.agent.stop()
    assert done.returncode == 0, done.stderr[-3000:]
    expected = {
        4: shot_colour(2),  # "Shot" starts at frame 3: frame 4 shows its second element
        9: CLIP,  # the movie on channel 3 covers "Shot" (shot.0007) at frames 9-10
        15: inner_colour(3),  # the reversed meta strip shows its last element first
    }
    for frame, colour in expected.items():
        pixel = centre(tmp_path / "out" / f"beauty.{frame:04d}.png")
        assert np.abs(pixel - colour).max() <= 2, f"frame {frame} is {pixel}, not {colour}"
    # The sound whole, after load; then per frame the one element of each image strip the
    # sequencer renders there (shot.0007 under the movie at 9 too) and the movie where it
    # plays. Nothing of the muted channel, the muted movie, or elements of frames not rendered.
    assert sorted(u.rsplit("/", 1)[1] for u in running.fetched) == [
        "clip.mov",
        "inner.0003.png",
        "shot.0002.png",
        "shot.0007.png",
        "tone.wav",
    ]


def test_jitrender_run_renders_a_sequencer_edit_from_gcs(
    vse_scene: Path, gcs_bucket: str, tmp_path: Path
) -> None:
    """The whole run: the resolver's prediction and the plugin together, from fake GCS."""
    files = vse_files(vse_scene)
    done, report, out = run_from_gcs(vse_scene, files, gcs_bucket, tmp_path, "4,9,15", (16, 16))
    assert done.returncode == 0, done.stderr[-3000:]
    for frame, colour in {4: shot_colour(2), 9: CLIP, 15: inner_colour(3)}.items():
        pixel = centre(out / f"beauty.{frame:04d}.png")
        assert np.abs(pixel - colour).max() <= 2, f"frame {frame} is {pixel}, not {colour}"
    show = Path(report["workspace"]) / "inputs" / "gs" / gcs_bucket.split("/")[-1] / "show"
    assert sorted(p.name for p in (show / "vse").iterdir()) == [
        "clip.mov",
        "inner.0003.png",
        "shot.0002.png",
        "shot.0007.png",
        "tone.wav",
    ]


@pytest.mark.parametrize(
    ("missing", "frames", "rendered", "message"),
    [
        # an element: the frames before the one showing it render, that one fails
        ("vse/shot.0004.png", "4,6", [4], "SC:Scene/Shot needs /mnt/show/"),
        # a movie: only the frames it plays at fail
        ("vse/clip.mov", "4,9", [4], "SC:Scene/Clip needs /mnt/show/"),
    ],
)
def test_a_strip_file_missing_from_storage_fails_the_frame_with_65_naming_it(
    vse_scene: Path, tmp_path: Path, missing: str, frames: str, rendered: list[int], message: str
) -> None:
    running = agent_for(vse_scene, tmp_path, vse_files(vse_scene, without=missing), frames)
    try:
        done = render_with_plugin(vse_scene, running.socket, tmp_path / "out", frames, "16x16")
    finally:
        running.agent.stop()
    assert done.returncode == 65, done.stderr[-3000:]
    needs = message + missing
    assert needs in done.stderr, done.stderr[-3000:]
    assert f"error: frame {frames[-1]} not rendered" in done.stderr
    assert f"{missing}: does not exist in storage" in done.stderr
    written = sorted(int(p.name.split(".")[1]) for p in (tmp_path / "out").glob("beauty.*.png"))
    assert written == rendered
