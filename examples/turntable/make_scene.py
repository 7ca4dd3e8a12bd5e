"""Build the turntable demo's bucket: a small Cycles scene and its textures, plus files the
render never reads (full-resolution plates, an older scene version, another shot) so the
demo can show how little of a bucket a render needs.

    .venv/bin/python examples/turntable/make_scene.py [BUCKET]     (default: ./bucket here)

Layout (the .blend refers to its textures with relative // paths)::

    shots/tt/turntable.blend          the scene: 48 frames, 320x240, Cycles CPU, 16 samples
    shots/tt/textures/wood.png        static texture on the turntable and the bust
    shots/tt/plates/plate.####.png    proxy plate sequence on the backdrop, one per frame
    shots/tt/plates_2k/plate.####.png full-resolution plates: not used by the render
    shots/tt/textures/wood_2k.png     an unused high-resolution texture
    shots/tt/turntable_v001.blend     the previous version of the scene
    shots/sh020/plates/plate.####.png another shot's plates
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pngio import write_png  # beside this script: on sys.path when it runs

HERE = Path(__file__).resolve().parent
FRAMES = 48
WIDTH, HEIGHT = 320, 240
SAMPLES = 16
SEED = 20261105


# -- images (numpy) ------------------------------------------------------------------------


def wood(size: int, rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Growth rings around an off-centre pith, with grain noise."""
    y, x = np.mgrid[0:size, 0:size] / size
    wobble = 0.02 * np.sin(9 * y * math.tau) + 0.01 * rng.standard_normal((size, size))
    rings = np.sin((np.hypot(x - 0.3, (y - 0.6) * 0.35) + wobble) * 48 * math.tau) * 0.5 + 0.5
    dark, light = np.array([92, 52, 24]), np.array([196, 140, 84])
    image = dark + (light - dark) * rings[..., None] ** 0.7
    return np.clip(image, 0, 255).astype(np.uint8)


def plate_gain(frame: int) -> float:
    """The exposure flicker baked into each plate (the prep stage takes it out again)."""
    return float(np.random.default_rng(SEED + frame).uniform(0.7, 1.3))


def plate(frame: int, width: int, height: int, flicker: bool = True) -> npt.NDArray[np.uint8]:
    """A sky gradient with a sun that crosses the frame and a frame-counter bar at the bottom:
    each frame's plate differs from every other one."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    t = (frame - 1) / (FRAMES - 1)
    sky = np.stack(
        [0.25 + 0.35 * y / height, 0.45 + 0.3 * y / height, 0.85 - 0.2 * y / height], axis=-1
    )
    sun = np.exp(-((np.hypot(x - width * (0.1 + 0.8 * t), y - height * 0.3) / (0.08 * width)) ** 2))
    image = sky + sun[..., None] * np.array([1.0, 0.8, 0.4])
    bar = (y > height * 0.92) & (x < width * frame / FRAMES)
    image[bar] = [0.9, 0.9, 0.9]
    if flicker:
        image *= plate_gain(frame)
    return np.clip(image * 255, 0, 255).astype(np.uint8)


def noisy(image: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """Film grain, so a big file stays big when compressed."""
    grain = rng.integers(-6, 7, image.shape)
    return np.clip(image.astype(np.int16) + grain, 0, 255).astype(np.uint8)


def write_images(bucket: Path) -> None:
    rng = np.random.default_rng(SEED)
    shot = bucket / "shots" / "tt"
    write_png(shot / "textures" / "wood.png", wood(512, rng))
    for frame in range(1, FRAMES + 1):
        write_png(shot / "plates" / f"plate.{frame:04d}.png", plate(frame, WIDTH, HEIGHT))
    # Files the render does not read; level 1 keeps building them quick.
    write_png(shot / "textures" / "wood_2k.png", noisy(wood(2048, rng), rng), level=1)
    for frame in range(1, FRAMES + 1):
        full = noisy(plate(frame, 1024, 540), rng)
        write_png(shot / "plates_2k" / f"plate.{frame:04d}.png", full, level=1)
    for frame in range(1, 25):
        other = noisy(plate(frame + 10, 960, 540, flicker=False)[:, ::-1], rng)
        write_png(bucket / "shots" / "sh020" / "plates" / f"plate.{frame:04d}.png", other, 1)


# -- the scene (bpy) -----------------------------------------------------------------------


def image_material(bpy: Any, name: str, image: Any, emission: bool) -> Any:
    """A material that shows ``image``: lit (Principled) or self-lit (Emission)."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    out = nodes.new("ShaderNodeOutputMaterial")
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    shader = nodes.new("ShaderNodeEmission" if emission else "ShaderNodeBsdfPrincipled")
    links.new(tex.outputs["Color"], shader.inputs[0])
    links.new(shader.outputs[0], out.inputs["Surface"])
    if getattr(image, "source", "") == "SEQUENCE":
        user = tex.image_user
        user.frame_start = 1
        user.frame_duration = FRAMES
        user.frame_offset = 0
        user.use_auto_refresh = True
    return mat


def build_scene(bucket: Path) -> Path:
    import bpy

    shot = bucket / "shots" / "tt"
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.context.preferences.edit.keyframe_new_interpolation_type = "LINEAR"
    scene = bpy.context.scene
    scene.name = "turntable"
    scene.frame_start, scene.frame_end = 1, FRAMES
    scene.render.fps = 24

    wood_image = bpy.data.images.load(str(shot / "textures" / "wood.png"))
    plates = bpy.data.images.load(str(shot / "plates" / "plate.0001.png"))
    plates.name = "plate"
    plates.source = "SEQUENCE"

    # The turntable: a wooden disc with a bust on it, one full turn over the 48 frames.
    bpy.ops.mesh.primitive_cylinder_add(radius=1.3, depth=0.25, location=(0, 0, 0.125))
    table = bpy.context.object
    table.name = "turntable"
    bpy.ops.mesh.primitive_monkey_add(size=1.4, location=(0, 0, 0.95))
    bust = bpy.context.object
    bust.name = "bust"
    bpy.ops.object.shade_smooth()
    bust.parent = table
    bust.location = (0, 0, 0.83)
    wood_mat = image_material(bpy, "wood", wood_image, emission=False)
    table.data.materials.append(wood_mat)
    bust.data.materials.append(wood_mat)
    table.rotation_euler = (0, 0, 0)
    table.keyframe_insert("rotation_euler", index=2, frame=1)
    table.rotation_euler = (0, 0, math.tau)
    table.keyframe_insert("rotation_euler", index=2, frame=FRAMES + 1)

    # The backdrop: a card behind the turntable showing this frame's plate.
    bpy.ops.mesh.primitive_plane_add(size=1, location=(0, 3.0, 1.0), rotation=(math.pi / 2, 0, 0))
    backdrop = bpy.context.object
    backdrop.name = "backdrop"
    backdrop.scale = (9.6, 7.2, 1)
    backdrop.data.materials.append(image_material(bpy, "plate", plates, emission=True))

    bpy.ops.object.light_add(type="SUN", location=(3, -3, 5), rotation=(0.7, 0.2, 0.6))
    bpy.context.object.data.energy = 3.0
    bpy.ops.object.camera_add(location=(0, -6.2, 2.3), rotation=(math.radians(78), 0, 0))
    scene.camera = bpy.context.object
    scene.camera.name = "camera"

    world = bpy.data.worlds.new("studio")
    world.color = (0.05, 0.05, 0.06)
    scene.world = world

    render = scene.render
    render.engine = "CYCLES"
    render.resolution_x, render.resolution_y, render.resolution_percentage = WIDTH, HEIGHT, 100
    render.image_settings.file_format = "PNG"
    render.filepath = "//renders/turntable.####.png"
    scene.cycles.device = "CPU"
    scene.cycles.samples = SAMPLES
    scene.cycles.use_denoising = False  # denoising would cost more than the render here
    scene.view_settings.view_transform = "Standard"

    blend = shot / "turntable.blend"
    # An older version next to it, as artists leave them: in the bucket, never needed.
    scene.cycles.samples = 64
    bpy.ops.wm.save_as_mainfile(filepath=str(shot / "turntable_v001.blend"), relative_remap=True)
    scene.cycles.samples = SAMPLES
    bpy.ops.wm.save_as_mainfile(filepath=str(blend), relative_remap=True)
    for image in bpy.data.images:
        if image.source in ("FILE", "SEQUENCE") and not image.filepath.startswith("//"):
            raise SystemExit(f"{image.name}: path {image.filepath} is not relative")
    return blend


def build(bucket: Path) -> Path:
    """Write the whole bucket; the path of the scene."""
    write_images(bucket)
    return build_scene(bucket)


def bucket_size(bucket: Path) -> tuple[int, int]:
    files = [p for p in bucket.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    bucket = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "bucket"
    blend = build(bucket.resolve())
    count, size = bucket_size(bucket)
    print(f"wrote {blend} ({count} files, {size / 1e6:.1f} MB in {bucket})")


if __name__ == "__main__":
    main()
