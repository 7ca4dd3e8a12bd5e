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

Parts of a split frame (see :mod:`jitrender.split`): ``--part-tile=I,J,X,Y,OVERSCAN`` renders
tile column I (from the left), row J (from the top) of an X by Y grid, grown by OVERSCAN pixels,
as a cropped border; ``--part-samples=K,N`` renders the K-th of N disjoint Cycles sample
subsets, seed and every other setting unchanged. Either writes ``--part-output`` as a 32-bit
multilayer EXR with denoising, compositing and stamps off (the denoising passes stored when the
scene denoises), and ``--part-output`` + ``.json`` saying what the part holds. ``--finish=EXR``
takes an assembled multilayer EXR through the scene's compositor once (with a Denoise node fed
by the denoising passes when the scene denoises) and writes the frame as an unsplit render
would, without rendering anything.
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


def _counts(length: int) -> Any:
    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != length or min(values) < 0:
            raise argparse.ArgumentTypeError(f"expected {length} whole numbers, got {text!r}")
        return values

    return parse


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
    parser.add_argument("--part-tile", type=_counts(5), help="I,J,X,Y,OVERSCAN")
    parser.add_argument("--part-samples", type=_counts(2), help="K,N")
    parser.add_argument("--part-output", type=Path, help="the part's EXR")
    parser.add_argument("--finish", type=Path, help="an assembled multilayer EXR to finish")
    options = parser.parse_args(args)
    if (options.part_tile or options.part_samples) and options.part_output is None:
        parser.error("--part-tile/--part-samples need --part-output")
    if "#" not in options.output:
        parser.error(f"--output {options.output!r} has no #### frame number")
    return options


def output_name(pattern: str, frame: int) -> str:
    """``pattern`` with every run of ``#`` replaced by the frame, zero-padded to the run's
    length (Blender's rule: ``####`` is 0007, ``#`` is 7)."""
    return _HASHES.sub(lambda m: f"{frame:0{len(m.group())}d}", pattern)


# -- image sequences -------------------------------------------------------------------------


def blend_frames() -> Any:
    """:mod:`jitrender.resolve.blend_frames`, the one copy of Blender's file-sequence frame
    arithmetic (the resolver's), loaded from its file: it is standard library only, and this
    script runs where the jitrender package may not be importable (a Blender binary's Python)."""
    module = sys.modules.get("_jitrender_blend_frames")
    if module is None:
        import importlib.util

        path = Path(__file__).resolve().parents[1] / "resolve" / "blend_frames.py"
        spec = importlib.util.spec_from_file_location("_jitrender_blend_frames", path)
        if spec is None or spec.loader is None:
            raise SetupError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while defining
        spec.loader.exec_module(module)
    return module


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


# Datablocks a render never reads through (as the resolver's _NOT_RENDERED): an image or
# texture only these use is not read by a render. A Blender 2.7x file's default texture paint
# brush keeps its texture (and that texture's image) alive with a user, file or no file.
_NOT_RENDERED_TYPES = ("Brush", "Palette", "PaintCurve", "WorkSpace", "Screen", "WindowManager")


def rendered_images(bpy: Any) -> set[Any]:
    """The images a chain of users links to a scene (Blender's ``user_map``, walked upwards
    from each image): what a render of one of the file's scenes may read. Images only a brush
    (or a workspace, screen, palette) uses are left out, as the resolver leaves them out."""
    users = bpy.data.user_map()
    skipped = tuple(getattr(bpy.types, name) for name in _NOT_RENDERED_TYPES)

    def reaches_scene(block: Any) -> bool:
        # A walk with a visited set: user graphs have cycles (an object parented to another).
        seen = {block}
        stack = [block]
        while stack:
            for user in users.get(stack.pop(), ()):
                if isinstance(user, bpy.types.Scene):
                    return True
                if isinstance(user, skipped) or user in seen:
                    continue
                seen.add(user)
                stack.append(user)
        return False

    return {image for image in bpy.data.images if reaches_scene(image)}


def images_read(bpy: Any, frame: int, rendered: set[Any] | None = None) -> list[ImageRead]:
    """Every image file the file's rendered images (:func:`rendered_images`, or the set
    given) read at ``frame``: single files, each tile of a UDIM set, and the one file of an
    image sequence each of its users needs."""
    if rendered is None:
        rendered = rendered_images(bpy)
    reads: dict[Path, ImageRead] = {}

    def add(image: Any, user: str, written: str) -> None:
        path = _absolute(bpy, image, written)
        reads.setdefault(path, ImageRead(image.name, user, written, path))

    sequence_users: dict[str, list[tuple[Any, str]]] = {}
    for image, image_user, who in _image_users(bpy):
        if image.source == "SEQUENCE":
            sequence_users.setdefault(image.name, []).append((image_user, who))

    frames = blend_frames()
    for image in bpy.data.images:
        if image.packed_file is not None or image not in rendered:
            continue
        if image.source in ("FILE", "MOVIE"):
            add(image, "", image.filepath)
        elif image.source == "TILED":
            for tile in image.tiles:
                add(
                    image, f"tile {tile.number}", frames.udim_tile_path(image.filepath, tile.number)
                )
        elif image.source == "SEQUENCE":
            for image_user, who in sequence_users.get(image.name, []):
                user = frames.ImageUser(
                    frames=image_user.frame_duration,
                    start=image_user.frame_start,
                    offset=image_user.frame_offset,
                    cyclic=image_user.use_cyclic,
                )
                image_user.frame_current = user.file_frame(frame)[0]
                written = image.filepath_from_user(image_user=image_user)
                add(image, f"{who}, sequence {image.filepath}", written)
    return list(reads.values())


def check_images(bpy: Any, frame: int, rendered: set[Any] | None = None) -> None:
    """Raise :class:`FrameDataError` naming the first image file missing for ``frame``."""
    reads = images_read(bpy, frame, rendered)
    missing = [read for read in reads if not read.path.is_file()]
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


def render_frame(
    bpy: Any, scene: Any, frame: int, final: Path, rendered: set[Any] | None = None
) -> float:
    """Render ``frame`` to ``final`` via a hidden temporary file and a rename; the seconds.
    ``rendered``: the scene's :func:`rendered_images`, when the caller has them already."""
    started = time.monotonic()
    scene.frame_set(frame)
    check_images(bpy, frame, rendered)
    write_still(bpy, scene, final)
    return time.monotonic() - started


def write_still(bpy: Any, scene: Any, final: Path) -> None:
    """Render the scene's current frame to a hidden temporary name next to ``final`` and
    rename it into place, so a watcher of the folder only ever sees a whole file."""
    final.parent.mkdir(parents=True, exist_ok=True)
    scene.render.filepath = str(final.parent / f".{final.name}.{os.getpid()}.part")
    written = Path(scene.render.filepath)
    written.unlink(missing_ok=True)
    result = bpy.ops.render.render(write_still=True, scene=scene.name)
    if "FINISHED" not in result or not written.is_file():
        written.unlink(missing_ok=True)
        raise RuntimeError(f"Blender wrote no image (render returned {sorted(result)})")
    os.replace(written, final)


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
    if options.part_output is not None or options.finish is not None:
        frame = options.frames[0]
        try:
            if options.finish is not None:
                final = outputs / output_name(options.output, frame)
                seconds = finish_frame(bpy, scene, frame, options.finish, final)
            else:
                final = options.part_output.resolve()
                seconds = render_part(bpy, scene, frame, options, final)
        except FrameDataError as exc:
            say(f"error: frame {frame} not rendered; frame {frame}: {exc}", error=True)
            return EXIT_DATA
        say(f"frame {frame} done {final} {seconds:.2f}s")
        return 0
    failed: dict[int, str] = {}
    rendered = rendered_images(bpy)  # the users of images do not change from frame to frame
    for frame in options.frames:
        final = outputs / output_name(options.output, frame)
        try:
            seconds = render_frame(bpy, scene, frame, final, rendered)
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


# -- parts of a split frame -------------------------------------------------------------------


def frame_size(scene: Any) -> tuple[int, int]:
    """The frame's size in pixels, as Blender computes it (percentage, integer division)."""
    render = scene.render
    percent = render.resolution_percentage
    return render.resolution_x * percent // 100, render.resolution_y * percent // 100


def tile_window(index: int, count: int, size: int, overscan: int) -> tuple[int, int, int, int]:
    """Tile ``index`` of ``count`` along an axis of ``size`` pixels: (core start, core end,
    window start, window end), the window grown by ``overscan`` and kept inside the frame."""
    start, end = index * size // count, (index + 1) * size // count
    return start, end, max(0, start - overscan), min(size, end + overscan)


def _border(start: int, end: int, size: int) -> tuple[float, float]:
    """Border fractions Blender turns back into exactly ``start..end`` (it truncates
    ``fraction * size``; a quarter pixel in keeps float rounding from losing one)."""
    low = 0.0 if start == 0 else (start + 0.25) / size
    high = 1.0 if end == size else (end + 0.25) / size
    return low, high


def render_part(
    bpy: Any, scene: Any, frame: int, options: argparse.Namespace, final: Path
) -> float:
    """Render one part of ``frame`` to ``final`` (32-bit multilayer EXR) and describe it in
    ``final`` + ``.json``; the seconds."""
    import json

    render, cycles = scene.render, scene.cycles
    width, height = frame_size(scene)
    description: dict[str, Any] = {"frame": frame, "size": [width, height]}
    denoise = options.engine == "CYCLES" and bool(cycles.use_denoising)
    description["denoise"] = denoise
    if denoise:
        description["denoising"] = {
            "prefilter": cycles.denoising_prefilter,
            "input_passes": cycles.denoising_input_passes,
        }
    if options.part_tile is not None:
        column, row, columns, rows, overscan = options.part_tile
        if not (column < columns and row < rows and columns <= width and rows <= height):
            raise SetupError(f"tile {column},{row} of {columns}x{rows} on a {width}x{height} frame")
        x0, x1, wx0, wx1 = tile_window(column, columns, width, overscan)
        y0, y1, wy0, wy1 = tile_window(row, rows, height, overscan)
        render.use_border, render.use_crop_to_border = True, True
        render.border_min_x, render.border_max_x = _border(wx0, wx1, width)
        # Blender's border counts rows from the bottom, the EXR's data window from the top.
        render.border_min_y, render.border_max_y = _border(height - wy1, height - wy0, height)
        description.update(kind="tiles", core=[x0, y0, x1, y1], window=[wx0, wy0, wx1, wy1])
    else:
        index, count = options.part_samples
        if options.engine != "CYCLES":
            raise SetupError("a samples split needs the Cycles engine")
        total = int(cycles.samples)
        if not index < count <= total:
            raise FrameDataError(
                f"sample part {index} of {count}: the scene renders {total} samples"
            )
        base, extra = divmod(total, count)
        offset, length = index * base + min(index, extra), base + (1 if index < extra else 0)
        cycles.use_sample_subset = True
        cycles.sample_offset, cycles.sample_subset_length = offset, length
        description.update(kind="samples", total=total, offset=offset, samples=length)
    cycles.use_denoising = False  # once, on the whole frame, after assembly
    for layer in scene.view_layers:
        if denoise:
            layer.cycles.denoising_store_passes = True
    render.use_compositing = False
    render.use_stamp = False
    settings = render.image_settings
    if hasattr(settings, "media_type"):
        settings.media_type = "MULTI_LAYER_IMAGE"
    settings.file_format = "OPEN_EXR_MULTILAYER"
    settings.color_depth = "32"
    settings.exr_codec = "ZIP"
    seconds = render_frame(bpy, scene, frame, final)
    side = final.with_name(final.name + ".json")
    side.write_text(json.dumps(description, sort_keys=True))
    return seconds


_PREFILTERS = {"ACCURATE": "Accurate", "FAST": "Fast", "NONE": "None"}


def _denoised(bpy: Any, scene: Any, tree: Any, image_node: Any) -> Any:
    """A Denoise node on ``image_node``'s Combined, guided as the scene's Cycles denoiser is."""
    cycles = scene.cycles
    node = tree.nodes.new("CompositorNodeDenoise")
    tree.links.new(image_node.outputs["Combined"], node.inputs["Image"])
    passes = str(cycles.denoising_input_passes)
    guides = [("Albedo", "Denoising Albedo")] if "ALBEDO" in passes else []
    guides += [("Normal", "Denoising Normal")] if "NORMAL" in passes else []
    for socket, name in guides:
        source = image_node.outputs.get(name)
        if source is None:
            raise FrameDataError(f"the parts hold no {name} pass to denoise with")
        tree.links.new(source, node.inputs[socket])
    node.inputs["Prefilter"].default_value = _PREFILTERS.get(cycles.denoising_prefilter, "Accurate")
    return node.outputs["Image"]


def finish_frame(bpy: Any, scene: Any, frame: int, assembled: Path, final: Path) -> float:
    """Write ``frame`` from the assembled multilayer EXR: the scene's compositor (or a plain
    pass-through) runs once, on Render Layers fed from the file, with the scene's denoising;
    the output settings, color management and stamps are the unsplit render's. The seconds."""
    started = time.monotonic()
    render = scene.render
    denoise = render.engine == "CYCLES" and bool(scene.cycles.use_denoising)
    scene.cycles.use_denoising = False
    image = bpy.data.images.load(str(assembled), check_existing=False)
    tree = scene.compositing_node_group if render.use_compositing else None
    layers = [n for n in tree.nodes if n.bl_idname == "CompositorNodeRLayers"] if tree else []
    if tree is None or not layers:
        tree = bpy.data.node_groups.new("jitrender assembled", "CompositorNodeTree")
        tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
        output = tree.nodes.new("NodeGroupOutput")
        layer = next((v for v in scene.view_layers if v.use), scene.view_layers[0])
        source = tree.nodes.new("CompositorNodeRLayers")
        source.layer = layer.name
        tree.links.new(source.outputs["Image"], output.inputs[0])
        layers = [source]
        scene.compositing_node_group = tree
    for node in layers:
        image_node = tree.nodes.new("CompositorNodeImage")
        image_node.image = image
        image_node.layer = node.layer
        combined = _denoised(bpy, scene, tree, image_node) if denoise else None
        for socket in node.outputs:
            for link in list(socket.links):
                if socket.name == "Image":
                    source = combined or image_node.outputs["Combined"]
                elif socket.name == "Noisy Image":
                    source = image_node.outputs["Combined"]
                else:
                    source = image_node.outputs.get(socket.name)
                if source is None:
                    raise FrameDataError(
                        f"the compositor reads pass {socket.name!r}, not in the parts"
                    )
                tree.links.new(source, link.to_socket)
        tree.nodes.remove(node)  # no Render Layers node left: Blender renders nothing
    render.use_compositing = True
    scene.frame_set(frame)
    write_still(bpy, scene, final)
    return time.monotonic() - started


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
