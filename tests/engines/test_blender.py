"""The blender engine, end to end with real Blender (the bpy module): a tiny scene whose left
half shows a static texture and whose right half shows an image sequence (red on frame 1,
blue on frame 2) is rendered through the engine's Invocation in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jitrender.engines import Invocation, StageCall, Workspace, engine_named
from jitrender.errors import ConfigError

pytest.importorskip("bpy")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

GREEN, RED, BLUE, MAGENTA = (0, 200, 0), (200, 0, 0), (0, 0, 200), (255, 0, 255)

BUILD_SCENE = textwrap.dedent(
    """
    import sys
    import bpy

    folder = sys.argv[1]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene

    def solid(name, path, rgb):
        image = bpy.data.images.new(name, 8, 8)
        image.pixels = [*(c / 255 for c in rgb), 1.0] * 64
        image.filepath_raw = path
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)

    solid("wood", folder + "/textures/wood.png", (0, 200, 0))
    solid("p1", folder + "/plates/plate.0001.png", (200, 0, 0))
    solid("p2", folder + "/plates/plate.0002.png", (0, 0, 200))

    def card(name, x, image):
        bpy.ops.mesh.primitive_plane_add(size=1, location=(x, 0, 0))
        obj = bpy.context.object
        obj.name = name
        obj.scale = (1.0, 1.5, 1)
        mat = bpy.data.materials.new(name)
        if mat.node_tree is None:
            mat.use_nodes = True
        nodes = mat.node_tree.nodes
        nodes.clear()
        tex = nodes.new("ShaderNodeTexImage")
        tex.image = image
        emit = nodes.new("ShaderNodeEmission")
        out = nodes.new("ShaderNodeOutputMaterial")
        mat.node_tree.links.new(tex.outputs["Color"], emit.inputs["Color"])
        mat.node_tree.links.new(emit.outputs[0], out.inputs["Surface"])
        obj.data.materials.append(mat)
        return tex

    card("static", -0.5, bpy.data.images.load(folder + "/textures/wood.png"))
    plates = bpy.data.images.load(folder + "/plates/plate.0001.png")
    plates.name = "plate"
    plates.source = "SEQUENCE"
    user = card("sequence", 0.5, plates).image_user
    user.frame_start, user.frame_duration, user.use_auto_refresh = 1, 2, True

    bpy.ops.object.camera_add(location=(0, 0, 5))
    scene.camera = bpy.context.object
    scene.camera.data.type = "ORTHO"
    scene.camera.data.ortho_scale = 2.0
    world = bpy.data.worlds.new("black")
    world.color = (0, 0, 0)
    scene.world = world
    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    scene.cycles.samples = 4
    scene.cycles.use_denoising = False
    scene.view_settings.view_transform = "Standard"
    bpy.ops.wm.save_as_mainfile(filepath=folder + "/tiny.blend", relative_remap=True)
    """
)

FAKE_BLENDER = textwrap.dedent(
    """\
    #!{python}
    # Stands in for a Blender binary: checks the command line, then runs the script the way
    # Blender does (the .blend already named, options after "--" in sys.argv).
    import runpy, sys
    args = sys.argv[1:]
    assert args[0] == "-b" and args[2:4] == ["--python-exit-code", "1"], args
    assert args[4] == "--python" and args[6] == "--", args
    sys.argv = ["blender", *args]
    runpy.run_path(args[5], run_name="__main__")
    """
)


@pytest.fixture(scope="module")
def scene_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("bucket")
    script = folder / "build_scene.py"
    script.write_text(BUILD_SCENE)
    subprocess.run([sys.executable, str(script), str(folder)], check=True, capture_output=True)
    assert (folder / "tiny.blend").is_file()
    return folder


@pytest.fixture
def workspace(tmp_path: Path, scene_folder: Path) -> Workspace:
    """A workspace whose inputs hold a copy of the scene folder, as a run would link it."""
    inputs = tmp_path / "ws" / "inputs" / "file" / "_" / "bucket"
    shutil.copytree(scene_folder, inputs, ignore=shutil.ignore_patterns("*.py"))
    ws = Workspace(tmp_path / "ws", inputs / "tiny.blend")
    ws.create()
    return ws


def call_for(
    ws: Workspace, frames: tuple[int, ...], args: Mapping[str, Any] | None = None
) -> StageCall:
    return StageCall("render", frames, ws, {"threads": 2, **(args or {})})


def run(invocation: Invocation) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **invocation.env}
    return subprocess.run(
        invocation.argv,
        cwd=invocation.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def without_blender_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JITRENDER_BLENDER", raising=False)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))


def read_png(path: Path) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """8-bit RGB(A) PNG -> (h, w, c) array; handles every row filter Blender may use."""
    data = path.read_bytes()
    pos, idat = 8, b""
    width = height = channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8
            channels = {2: 3, 6: 4}[colour]
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    out = bytearray(height * stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        for x in range(stride):
            a = out[y * stride + x - channels] if x >= channels else 0
            b = out[(y - 1) * stride + x] if y else 0
            c = out[(y - 1) * stride + x - channels] if y and x >= channels else 0
            if kind == 0:
                pred = 0
            elif kind == 1:
                pred = a
            elif kind == 2:
                pred = b
            elif kind == 3:
                pred = (a + b) // 2
            else:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            out[y * stride + x] = (line[x] + pred) & 0xFF
    return np.frombuffer(bytes(out), np.uint8).reshape(height, width, channels)


def colour_at(image: np.ndarray[Any, np.dtype[np.uint8]], x: int, y: int) -> tuple[int, ...]:
    return tuple(int(v) for v in image[y, x, :3])


def assert_close(found: tuple[int, ...], wanted: tuple[int, int, int]) -> None:
    assert all(abs(f - w) <= 12 for f, w in zip(found, wanted, strict=True)), (found, wanted)


def test_renders_each_frame_to_its_own_file_showing_its_own_plate(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_blender_on_path(monkeypatch)
    invocation = engine_named("blender")(call_for(workspace, (1, 2)))
    assert invocation.argv[:3] == [sys.executable, "-m", "jitrender.engines.blender_render"]

    result = run(invocation)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert sorted(p.name for p in workspace.outputs.iterdir()) == [
        "tiny.0001.png",
        "tiny.0002.png",
    ]
    progress = [line for line in result.stdout.splitlines() if line.startswith("jitrender")]
    assert progress[0].startswith(f"jitrender-blender: frame 1 done {workspace.outputs}/tiny.0001")
    assert progress[1].startswith("jitrender-blender: frame 2 done")
    for frame, plate in ((1, RED), (2, BLUE)):
        image = read_png(workspace.outputs / f"tiny.{frame:04d}.png")
        assert image.shape[:2] == (48, 64)
        left, right = colour_at(image, 16, 24), colour_at(image, 48, 24)
        assert left != MAGENTA and right != MAGENTA
        assert_close(left, GREEN)
        assert_close(right, plate)


def test_a_missing_plate_fails_its_frame_naming_the_image_and_renders_the_others(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_blender_on_path(monkeypatch)
    assert workspace.scene is not None
    missing = workspace.scene.parent / "plates" / "plate.0002.png"
    missing.unlink()

    result = run(engine_named("blender")(call_for(workspace, (1, 2))))

    assert result.returncode == 65
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("jitrender-blender: error: frame 2 not rendered")
    assert "image 'plate'" in last and str(missing) in last
    assert [p.name for p in workspace.outputs.iterdir()] == ["tiny.0001.png"]


def test_a_blender_binary_gets_the_scene_and_options_after_double_dash(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "blender"
    fake.parent.mkdir()
    fake.write_text(FAKE_BLENDER.format(python=sys.executable))
    fake.chmod(0o755)
    monkeypatch.setenv("JITRENDER_BLENDER", str(fake))
    call = call_for(workspace, (2,), {"output": "beauty/{scene_stem}_#.png", "samples": 2})

    invocation = engine_named("blender")(call)
    assert invocation.argv[:3] == [str(fake), "-b", str(workspace.scene)]
    result = run(invocation)

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    image = read_png(workspace.outputs / "beauty" / "tiny_2.png")
    assert_close(colour_at(image, 48, 24), BLUE)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        ({"sampels": 16}, "sampels"),
        ({"samples": "16"}, "samples"),
        ({"samples": True}, "samples"),
        ({"resolution": [320]}, "resolution"),
        ({"format": "TIFF"}, "format"),
        ({"engine": "LUXCORE"}, "engine"),
        ({"device": "VULKAN"}, "device"),
        ({"percentage": 0}, "percentage"),
        ({"output": "/abs/frame.####.png"}, "output"),
        ({"output": "../up.####.png"}, "output"),
        ({"output": "no_frame_number.png"}, "output"),
        ({"output": "{shot}.####.png"}, "output"),
        ({"blender": "/nowhere/blender"}, "blender"),
    ],
)
def test_bad_args_are_one_line_config_errors_naming_the_key(
    workspace: Workspace, args: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        engine_named("blender")(call_for(workspace, (1,), args))
    assert caught.value.message.startswith(f"stages.render.args.{key}: ")
    assert "\n" not in caught.value.message


def test_args_are_passed_as_render_options(
    workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    without_blender_on_path(monkeypatch)
    args = {"format": "open_exr", "resolution": [320, 240], "camera": "cam", "percentage": 50}

    argv = engine_named("blender")(call_for(workspace, (1, 2, 5), args)).argv

    assert "--frames=1,2,5" in argv
    assert "--output=tiny.####.exr" in argv
    assert {"--format=OPEN_EXR", "--resolution=320x240", "--camera=cam"} <= set(argv)
    assert "--percentage=50" in argv and "--threads=2" in argv


def test_a_job_without_a_scene_is_a_config_error(tmp_path: Path) -> None:
    call = StageCall("render", (1,), Workspace(tmp_path, None))
    with pytest.raises(ConfigError, match=r"^stages\.render: engine 'blender' needs"):
        engine_named("blender")(call)


BUILD_SEQUENCER_SCENE = textwrap.dedent(
    """
    import sys
    import bpy

    folder = sys.argv[1]
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    for number, rgb in ((1, (0, 200, 0)), (2, (0, 0, 200))):
        image = bpy.data.images.new(f"e{number}", 8, 8)
        image.pixels = [*(c / 255 for c in rgb), 1.0] * 64
        image.filepath_raw = f"{folder}/edit/shot.{number:04d}.png"
        image.file_format = "PNG"
        image.save()
        bpy.data.images.remove(image)
    editor = scene.sequence_editor_create()
    strip = editor.strips.new_image("shot", folder + "/edit/shot.0001.png", 1, 1)
    strip.elements.append("shot.0002.png")
    assert scene.camera is None and not any(o.type == "CAMERA" for o in bpy.data.objects)
    scene.render.resolution_x, scene.render.resolution_y = 32, 24
    scene.view_settings.view_transform = "Standard"
    bpy.ops.wm.save_as_mainfile(filepath=folder + "/edit.blend", relative_remap=True)
    """
)


def test_a_sequencer_only_scene_without_a_camera_renders_its_strips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blender renders the video sequencer's strips without a camera; so does the engine."""
    without_blender_on_path(monkeypatch)
    inputs = tmp_path / "ws" / "inputs" / "file" / "_" / "bucket"
    inputs.mkdir(parents=True)
    script = tmp_path / "build_edit.py"
    script.write_text(BUILD_SEQUENCER_SCENE)
    subprocess.run([sys.executable, str(script), str(inputs)], check=True, capture_output=True)
    ws = Workspace(tmp_path / "ws", inputs / "edit.blend")
    ws.create()

    result = run(engine_named("blender")(call_for(ws, (1, 2))))

    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for frame, rgb in ((1, GREEN), (2, BLUE)):
        image = read_png(ws.outputs / f"edit.{frame:04d}.png")
        assert image.shape[:2] == (24, 32)
        assert_close(colour_at(image, 16, 12), rgb)


def run_job(job: Mapping[str, Any], job_file: Path) -> subprocess.CompletedProcess[str]:
    """``jitrender run JOB --json`` of ``job`` written to ``job_file`` (JSON is YAML), with
    Blender from the bpy module: no ``blender`` binary on PATH, no ``JITRENDER_BLENDER``."""
    job_file.write_text(json.dumps(job))
    env = {k: v for k, v in os.environ.items() if k != "JITRENDER_BLENDER"}
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + "/usr/bin:/bin"
    return subprocess.run(
        [sys.executable, "-m", "jitrender.cli", "run", str(job_file), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def png_bytes(rgb: tuple[int, int, int], width: int = 8, height: int = 8) -> bytes:
    """A solid 8-bit RGB PNG."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))


def test_jitrender_run_renders_a_public_sequencer_only_scene_that_has_no_camera(
    tmp_path: Path,
) -> None:
    """blender-asset-tracer's ``subdir/image_sequence_dir_up.blend`` (Blender 2.79) is an image
    strip of ``//../imgseq/000210.png`` ... ``000214.png`` and no camera: Blender renders it, and
    so does a ``jitrender run`` of it, each frame showing its own element."""
    import gzip

    corpus = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "blend"
    rel = "bam/blender-asset-tracer/tests/blendfiles/subdir/image_sequence_dir_up.blend"
    packed = corpus / "blends" / f"{rel}.gz"
    if not packed.is_file():
        pytest.skip(f"the public corpus is not here: {corpus}")
    bucket = tmp_path / "bucket"
    (bucket / rel).parent.mkdir(parents=True)
    (bucket / rel).write_bytes(gzip.decompress(packed.read_bytes()))
    colours = {210: MAGENTA, 211: GREEN, 212: BLUE, 213: RED, 214: MAGENTA}
    for number, rgb in colours.items():
        element = bucket / "bam/blender-asset-tracer/tests/blendfiles/imgseq" / f"{number:06d}.png"
        element.parent.mkdir(parents=True, exist_ok=True)
        element.write_bytes(png_bytes(rgb, 1920, 1080))  # the scene's size: no scaling
    job = {
        "name": "edit",
        "scene": f"file://{bucket}/{rel}",
        "frames": "2-3",
        "stages": [
            {
                "name": "render",
                "engine": "blender",
                "args": {
                    "output": "edit.####.png",
                    "resolution": [32, 18],
                    "percentage": 100,
                    "threads": 2,
                },
            }
        ],
        "outputs": {"to": f"file://{tmp_path}/out/", "files": ["edit.####.png"]},
        "cache": {"dir": str(tmp_path / "cache")},
    }
    result = run_job(job, tmp_path / "edit.yaml")

    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["frames"]["done"] == [2, 3]
    for frame, rgb in ((2, GREEN), (3, BLUE)):  # frame 1 shows 000210, frame 2 000211, ...
        image = read_png(tmp_path / "out" / f"edit.{frame:04d}.png")
        assert_close(colour_at(image, 16, 9), rgb)


BUILD_CAMERALESS_SCENE = textwrap.dedent(
    """
    import sys
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.mesh.primitive_plane_add()
    assert bpy.context.scene.camera is None
    bpy.ops.wm.save_as_mainfile(filepath=sys.argv[1])
    """
)


def test_a_frame_whose_data_the_engine_calls_wrong_is_not_rendered_again(
    tmp_path: Path,
) -> None:
    """The engine's exit 65 (here: the scene has no camera) is the same on every attempt: the
    frames fail at once, with the engine's line, instead of loading the scene
    ``retries.frame`` more times."""
    bucket = tmp_path / "bucket"
    bucket.mkdir()
    script = tmp_path / "build.py"
    script.write_text(BUILD_CAMERALESS_SCENE)
    scene = bucket / "plane.blend"
    subprocess.run([sys.executable, str(script), str(scene)], check=True, capture_output=True)
    job = {
        "name": "nocam",
        "scene": scene.as_uri(),
        "frames": "1-2",
        "retries": {"frame": 2},
        "stages": [
            {
                "name": "render",
                "engine": "blender",
                "per": "chunk",
                "args": {"output": "p.####.png", "resolution": [8, 8], "threads": 1},
            }
        ],
        "outputs": {"to": (tmp_path / "out").as_uri(), "files": ["p.####.png"]},
        "cache": {"dir": str(tmp_path / "cache")},
    }

    result = run_job(job, tmp_path / "nocam.yaml")

    assert result.returncode == 65, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["frames"]["failed"] == [1, 2]
    assert "camera" in report["error"]
    assert result.stderr.count("stage_start") == 1  # one attempt, not 1 + retries.frame
