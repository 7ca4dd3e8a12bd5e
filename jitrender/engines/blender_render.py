"""Render frames of a Blender scene in one process; the script the ``blender`` engine runs.

Runs inside a Blender binary (``blender -b SCENE --python blender_render.py -- OPTIONS``) or
with the ``bpy`` module (``python -m jitrender.engines.blender_render OPTIONS``), so it uses
the standard library and ``bpy`` only and never imports jitrender.

For each frame it checks that every image file the scene reads for that frame exists (so a
missing texture fails the frame instead of rendering magenta), renders with Blender writing to
a hidden temporary name next to the output, and renames that file into place: a watcher of
``outputs/`` only ever sees whole files. One line per frame on stdout::

    jitrender-blender: frame 3 done /ws/outputs/turntable.0003.png 1.82s

Exit status: 0 every frame rendered; 65 a frame's data is wrong (missing image, scene, camera,
or the GPU asked for is gone); 1 a render failed; 2 bad options. The last line printed says why.
``--probe-gpu OPTIX,CUDA`` prints the node's Cycles GPU devices of those backends instead.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PREFIX = "jitrender-blender:"
EXIT_RENDER_FAILED = 1
EXIT_USAGE = 2
EXIT_DATA = 65

FORMATS = ("PNG", "OPEN_EXR", "JPEG")
# Cycles' GPU backends, in the order ``device: GPU`` prefers them.
GPU_BACKENDS = ("OPTIX", "CUDA", "HIP", "ONEAPI", "METAL")
PROBE_MARK = "jitrender-gpu-probe:"
ENGINES = ("CYCLES", "BLENDER_EEVEE", "BLENDER_WORKBENCH")
_HASHES = re.compile(r"#+")


class FrameDataError(Exception):
    """A frame cannot be rendered because of the scene's data (a missing image, say)."""


class SetupError(Exception):
    """The scene or an option cannot be used; nothing was rendered."""


@dataclass(frozen=True)
class ImageRead:
    """One image file the scene reads for a frame, and who reads it."""

    image: str
    user: str
    written: str  # the path as Blender stores it (may start with //)
    path: Path  # absolute


# -- options -------------------------------------------------------------------------------


def _frames(text: str) -> list[int]:
    try:
        frames = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated frame list: {text!r}") from None
    if not frames:
        raise argparse.ArgumentTypeError("no frames given")
    return frames


def _resolution(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return size


def parse_options(argv: Sequence[str]) -> argparse.Namespace:
    """Options after ``--`` when run by a Blender binary, else every argument."""
    args = list(argv)
    if "--" in args:
        args = args[args.index("--") + 1 :]
    parser = argparse.ArgumentParser(
        prog="blender_render", description="Render frames of a Blender scene, one file each."
    )
    parser.add_argument("--blend", type=Path, required=True, help="the .blend file")
    parser.add_argument("--frames", type=_frames, required=True, help="e.g. 1,2,3")
    parser.add_argument("--outputs", type=Path, required=True, help="the outputs folder")
    parser.add_argument(
        "--output", required=True, help="file name below --outputs; #### is the frame"
    )
    parser.add_argument("--format", choices=FORMATS, default="PNG")
    parser.add_argument("--engine", choices=ENGINES, default="CYCLES")
    parser.add_argument("--samples", type=int)
    parser.add_argument("--resolution", type=_resolution, help="WIDTHxHEIGHT")
    parser.add_argument("--percentage", type=int)
    parser.add_argument("--threads", type=int, help="0 = as many as there are cores")
    parser.add_argument("--camera", help="camera object name")
    parser.add_argument("--scene", help="scene datablock name (default: the file's scene)")
    parser.add_argument("--device", choices=("CPU", "GPU"), default="CPU")
    parser.add_argument(
        "--gpu-backend", choices=GPU_BACKENDS, help="with --device=GPU: the Cycles backend"
    )
    options = parser.parse_args(args)
    if "#" not in options.output:
        parser.error(f"--output {options.output!r} has no #### frame number")
    return options


def output_name(pattern: str, frame: int) -> str:
    """``pattern`` with every run of ``#`` replaced by the frame, zero-padded to the run's
    length (Blender's rule: ``####`` is 0007, ``#`` is 7)."""
    return _HASHES.sub(lambda m: f"{frame:0{len(m.group())}d}", pattern)


# -- image sequences -------------------------------------------------------------------------


def sequence_frame(
    frame: int, frame_start: int, frame_duration: int, frame_offset: int, cyclic: bool
) -> int:
    """The file number an image-sequence user reads at scene ``frame``; mirrors Blender's
    ``BKE_image_user_frame_get`` (clamped to the sequence unless cyclic, then offset)."""
    length = frame_duration
    if length == 0:
        return 0
    number = frame - frame_start + 1
    if cyclic:
        number %= length
        if number == 0:
            number = length
    number = max(0, min(number, length))
    return number + frame_offset


def _image_users(bpy: Any) -> Iterator[tuple[Any, Any, str]]:
    """(image, image user, who) for every node, texture and object that reads an image."""
    trees: list[tuple[str, Any]] = []
    for collection, kind in (
        (bpy.data.materials, "material"),
        (bpy.data.worlds, "world"),
        (bpy.data.lights, "light"),
        (bpy.data.node_groups, "node group"),
        (bpy.data.textures, "texture"),
        (bpy.data.scenes, "scene"),
    ):
        for block in collection:
            tree = getattr(block, "node_tree", None)
            if tree is not None:
                trees.append((f"{kind} {block.name!r}", tree))
            image_user = getattr(block, "image_user", None)
            image = getattr(block, "image", None)
            if image is not None and image_user is not None:
                yield image, image_user, f"{kind} {block.name!r}"
    for owner, tree in trees:
        for node in tree.nodes:
            image = getattr(node, "image", None)
            image_user = getattr(node, "image_user", None)
            if image is not None and image_user is not None:
                yield image, image_user, f"{owner}, node {node.name!r}"
    for obj in bpy.data.objects:
        if obj.type == "EMPTY" and getattr(obj, "data", None) is not None:
            yield obj.data, obj.image_user, f"object {obj.name!r}"


def _absolute(bpy: Any, image: Any, written: str) -> Path:
    return Path(os.path.normpath(bpy.path.abspath(written, library=image.library)))


def images_read(bpy: Any, frame: int) -> list[ImageRead]:
    """Every image file the file's images with users read at ``frame``: single files, each
    tile of a UDIM set, and the one file of an image sequence each of its users needs."""
    reads: dict[Path, ImageRead] = {}

    def add(image: Any, user: str, written: str) -> None:
        path = _absolute(bpy, image, written)
        reads.setdefault(path, ImageRead(image.name, user, written, path))

    sequence_users: dict[str, list[tuple[Any, str]]] = {}
    for image, image_user, who in _image_users(bpy):
        if image.source == "SEQUENCE":
            sequence_users.setdefault(image.name, []).append((image_user, who))

    for image in bpy.data.images:
        if image.users - int(image.use_fake_user) <= 0 or image.packed_file is not None:
            continue
        if image.source in ("FILE", "MOVIE"):
            add(image, "", image.filepath)
        elif image.source == "TILED":
            for tile in image.tiles:
                u, v = (tile.number - 1001) % 10 + 1, (tile.number - 1001) // 10 + 1
                written = image.filepath.replace("<UDIM>", str(tile.number))
                add(image, f"tile {tile.number}", written.replace("<UVTILE>", f"u{u}_v{v}"))
        elif image.source == "SEQUENCE":
            for image_user, who in sequence_users.get(image.name, []):
                image_user.frame_current = sequence_frame(
                    frame,
                    image_user.frame_start,
                    image_user.frame_duration,
                    image_user.frame_offset,
                    image_user.use_cyclic,
                )
                written = image.filepath_from_user(image_user=image_user)
                add(image, f"{who}, sequence {image.filepath}", written)
    return list(reads.values())


def check_images(bpy: Any, frame: int) -> None:
    """Raise :class:`FrameDataError` naming the first image file missing for ``frame``."""
    missing = [read for read in images_read(bpy, frame) if not read.path.is_file()]
    if missing:
        first = missing[0]
        who = f" (read by {first.user})" if first.user else ""
        more = f"; {len(missing) - 1} more missing" if len(missing) > 1 else ""
        written = f" (written as {first.written})" if first.written != str(first.path) else ""
        raise FrameDataError(
            f"image {first.image!r}{who}: {first.path} does not exist{written}{more}"
        )


# -- scene set-up ----------------------------------------------------------------------------


def open_scene(bpy: Any, options: argparse.Namespace) -> Any:
    """Load the .blend (unless Blender already has it open) and pick the scene to render."""
    blend = options.blend.resolve()
    if not blend.is_file():
        raise SetupError(f"scene {blend} does not exist")
    current = bpy.data.filepath
    if not current or Path(current).resolve() != blend:
        bpy.ops.wm.open_mainfile(filepath=str(blend), load_ui=False)
    if options.scene is None:
        return bpy.context.scene
    scene = bpy.data.scenes.get(options.scene)
    if scene is None:
        known = ", ".join(repr(s.name) for s in bpy.data.scenes)
        raise SetupError(f"{blend.name} has no scene {options.scene!r} (it has {known})")
    return scene


def apply_settings(bpy: Any, scene: Any, options: argparse.Namespace) -> None:
    render = scene.render
    render.engine = options.engine
    if options.engine == "CYCLES":
        if options.device == "GPU":
            use_gpu(bpy, options.gpu_backend)
        scene.cycles.device = options.device
        if options.samples is not None:
            scene.cycles.samples = options.samples
    elif options.engine == "BLENDER_EEVEE" and options.samples is not None:
        scene.eevee.taa_render_samples = options.samples
    if options.resolution is not None:
        render.resolution_x, render.resolution_y = options.resolution
    if options.percentage is not None:
        render.resolution_percentage = options.percentage
    if options.threads is not None:
        render.threads_mode = "AUTO" if options.threads == 0 else "FIXED"
        if options.threads:
            render.threads = options.threads
    if options.camera is not None:
        camera = bpy.data.objects.get(options.camera)
        if camera is None or camera.type != "CAMERA":
            raise SetupError(f"scene {scene.name!r} has no camera object {options.camera!r}")
        scene.camera = camera
    if scene.camera is None and not sequencer_renders(scene):
        # as Blender's check_valid_camera: the view layer's first camera stands in
        scene.camera = next((o for o in scene.objects if o.type == "CAMERA"), None)
        if scene.camera is None:
            raise SetupError(f"scene {scene.name!r} has no camera")
    settings = render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "IMAGE"  # Blender 5: a video output would refuse still formats
    settings.file_format = options.format
    render.use_file_extension = False  # the temporary name is chosen here, exactly
    render.use_overwrite = True
    render.use_placeholder = False


def sequencer_renders(scene: Any) -> bool:
    """Whether the frame comes from the video sequencer, which needs no camera: Blender's
    ``RE_seq_render_active`` (Sequencer on in the post-processing options, and a strip other
    than a sound strip at the top level)."""
    editor = scene.sequence_editor
    if not scene.render.use_sequencer or editor is None:
        return False
    strips = editor.strips if hasattr(editor, "strips") else editor.sequences
    return any(strip.type != "SOUND" for strip in strips)


# -- rendering -------------------------------------------------------------------------------


def say(message: str, *, error: bool = False) -> None:
    stream = sys.stderr if error else sys.stdout
    print(f"{PREFIX} {message}", file=stream, flush=True)


def render_frame(bpy: Any, scene: Any, frame: int, final: Path) -> float:
    """Render ``frame`` to ``final`` via a hidden temporary file and a rename; the seconds."""
    started = time.monotonic()
    scene.frame_set(frame)
    check_images(bpy, frame)
    final.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(final.parent / f".{final.name}.{os.getpid()}.part")
    written = Path(scene.render.filepath)
    written.unlink(missing_ok=True)
    result = bpy.ops.render.render(write_still=True, scene=scene.name)
    if "FINISHED" not in result or not written.is_file():
        written.unlink(missing_ok=True)
        raise RuntimeError(f"Blender wrote no image (render returned {sorted(result)})")
    os.replace(written, final)
    return time.monotonic() - started


def load_plugin(path: str | None) -> None:
    """Register jitrender's Blender plugin (``hooks/blender/jitrender_blender.py``) so the
    scene's files come through the run's agent; it stays inert without ``JITRENDER_SOCKET``."""
    if not path:
        return
    import importlib.util

    spec = importlib.util.spec_from_file_location("jitrender_blender", path)
    if spec is None or spec.loader is None:
        raise SetupError(f"cannot load the jitrender Blender plugin {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    module.register()


def render(bpy: Any, options: argparse.Namespace) -> int:
    """Render every frame, carrying on past a frame whose data is wrong; the exit status."""
    load_plugin(os.environ.get("JITRENDER_BLENDER_HOOK"))
    scene = open_scene(bpy, options)
    apply_settings(bpy, scene, options)
    outputs = options.outputs.resolve()
    failed: dict[int, str] = {}
    for frame in options.frames:
        final = outputs / output_name(options.output, frame)
        try:
            seconds = render_frame(bpy, scene, frame, final)
        except FrameDataError as exc:
            failed[frame] = str(exc)
            say(f"frame {frame} failed: {exc}", error=True)
            continue
        say(f"frame {frame} done {final} {seconds:.2f}s")
    if failed:
        first = min(failed)
        listed = ",".join(str(f) for f in sorted(failed))
        frames = "frame" if len(failed) == 1 else "frames"
        say(f"error: {frames} {listed} not rendered; frame {first}: {failed[first]}", error=True)
        return EXIT_DATA
    return 0


def gpu_devices(bpy: Any, backends: Sequence[str] = GPU_BACKENDS) -> dict[str, list[str]]:
    """Cycles' GPU devices on this node, by backend (only backends with a device)."""
    prefs = bpy.context.preferences.addons["cycles"].preferences
    found: dict[str, list[str]] = {}
    for backend in backends:
        try:
            prefs.compute_device_type = backend
        except TypeError:  # a backend this Blender was not built with (METAL off macOS)
            continue
        names = [d.name for d in prefs.get_devices_for_type(backend) if d.type == backend]
        if names:
            found[backend] = names
    return found


def use_gpu(bpy: Any, backend: str | None) -> None:
    """Make Cycles render on ``backend``'s devices (every one of them) or fail saying so."""
    wanted = [backend] if backend else list(GPU_BACKENDS)
    found = gpu_devices(bpy, wanted)
    if not found:
        raise SetupError(f"GPU error: no Cycles device of type {', '.join(wanted)} on this node")
    chosen = next(b for b in wanted if b in found)
    prefs = bpy.context.preferences.addons["cycles"].preferences
    prefs.compute_device_type = chosen
    for device in prefs.get_devices_for_type(chosen):
        device.use = device.type == chosen


def probe(backends: Sequence[str]) -> int:
    """Print the node's GPU devices for ``backends`` as one JSON line after PROBE_MARK."""
    import json

    try:
        import bpy
    except ImportError:
        print(PROBE_MARK, json.dumps({"error": "the bpy module is not installed"}), flush=True)
        return EXIT_USAGE
    print(PROBE_MARK, json.dumps({"devices": gpu_devices(bpy, backends)}), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--probe-gpu" in args:  # --probe-gpu BACKEND[,BACKEND...]
        return probe(args[args.index("--probe-gpu") + 1].split(","))
    try:
        options = parse_options(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    try:
        import bpy
    except ImportError:
        say("error: the bpy module is not installed (pip install 'jitrender[blender]')", error=True)
        return EXIT_USAGE
    try:
        return render(bpy, options)
    except SetupError as exc:
        say(f"error: {exc}", error=True)
        return EXIT_DATA
    except Exception as exc:  # any Blender failure ends the process with one line, no traceback
        message = " ".join(str(exc).split()) or type(exc).__name__
        say(f"error: render failed: {message}", error=True)
        return EXIT_RENDER_FAILED


if __name__ == "__main__":
    sys.exit(main())
