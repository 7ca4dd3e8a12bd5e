"""Builds the .blend scenes the Blender resolver tests use, with real Blender (bpy).

Run in its own process (``python blend_scenes.py ROOT``) so the test process never imports
bpy. ``ROOT`` becomes a bucket: the scenes, their textures/caches/libraries, and
``blender.json`` — what Blender itself reports about each scene (its file path map and, for
image sequences, the file each frame loads).
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import wave
from pathlib import Path
from typing import Any

import bpy

ROOT = Path(sys.argv[1])
REPORT_FRAMES = [*range(0, 31), 45, 99, 100, 101]


def touch(rel: str, data: bytes = b"x") -> None:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def empty_file() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)


def save(rel: str) -> None:
    path = ROOT / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    bpy.ops.wm.save_as_mainfile(filepath=str(path), relative_remap=True)


def image(name: str, source: str, filepath: str) -> bpy.types.Image:
    img = bpy.data.images.new(name, 4, 4)
    img.source = source
    img.filepath = filepath
    return img


def material_with(name: str, images: list[bpy.types.Image]) -> tuple[Any, list[Any]]:
    """A material whose node tree has one Image Texture node per image, on a mesh object."""
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    nodes = []
    for img in images:
        node = mat.node_tree.nodes.new("ShaderNodeTexImage")
        node.image = img
        node.name = img.name
        nodes.append(node)
    mesh = bpy.data.meshes.new(name)
    mesh.materials.append(mat)
    obj = bpy.data.objects.new(name, mesh)
    bpy.context.scene.collection.objects.link(obj)
    return mat, nodes


def path_map() -> dict[str, list[str]]:
    """Blender's own ``file_path_map``, as absolute paths per datablock."""
    out: dict[str, list[str]] = {}
    for id_, paths in bpy.data.file_path_map(include_libraries=True).items():
        if paths:
            key = f"{id_.id_type}:{id_.name}" + (f"@{id_.library.name}" if id_.library else "")
            lib = id_.library
            # A linked datablock also lists its library's path, written relative to this file.
            out[key] = sorted(
                bpy.path.abspath(p, library=None if lib and p == lib.filepath else lib)
                for p in paths
            )
    return out


def wav_bytes() -> bytes:
    tmp = ROOT / "_tmp.wav"
    with wave.open(str(tmp), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes(struct.pack("<800h", *([0] * 800)))
    data = tmp.read_bytes()
    tmp.unlink()
    return data


def png_bytes() -> bytes:
    img = bpy.data.images.new("_png", 2, 2)
    img.filepath_raw = str(ROOT / "_tmp.png")
    img.file_format = "PNG"
    img.save()
    data = (ROOT / "_tmp.png").read_bytes()
    (ROOT / "_tmp.png").unlink()
    bpy.data.images.remove(img)
    return data


def build_library() -> None:
    """lib/deep.blend <- lib/props.blend: a library that links from another library."""
    empty_file()
    touch("lib/deep_tex/deep.png")
    material_with("Deep", [image("deep", "FILE", "//deep_tex/deep.png")])
    save("lib/deep.blend")

    empty_file()
    touch("lib/tex/props_color.png")
    touch("lib/tex/unused.png")
    material_with("Prop", [image("props_color", "FILE", "//tex/props_color.png")])
    material_with("Unused", [image("unused", "FILE", "//tex/unused.png")])
    with bpy.data.libraries.load(str(ROOT / "lib/deep.blend"), link=True, relative=True) as (
        _src,
        dst,
    ):
        dst.materials = ["Deep"]
    bpy.data.objects["Prop"].data.materials.append(dst.materials[0])
    save("lib/props.blend")


def build_cycle() -> None:
    """cycle/a.blend and cycle/b.blend link from each other."""
    empty_file()
    touch("cycle/a.png")
    material_with("A", [image("a", "FILE", "//a.png")])
    save("cycle/a.blend")

    empty_file()
    touch("cycle/b.png")
    material_with("B", [image("b", "FILE", "//b.png")])
    with bpy.data.libraries.load(str(ROOT / "cycle/a.blend"), link=True, relative=True) as (
        _src,
        dst,
    ):
        dst.objects = ["A"]
    for obj in dst.objects:
        bpy.context.scene.collection.objects.link(obj)
    save("cycle/b.blend")

    bpy.ops.wm.open_mainfile(filepath=str(ROOT / "cycle/a.blend"))
    with bpy.data.libraries.load(str(ROOT / "cycle/b.blend"), link=True, relative=True) as (
        _src,
        dst,
    ):
        dst.objects = ["B"]
    for obj in dst.objects:
        bpy.context.scene.collection.objects.link(obj)
    save("cycle/a.blend")


def build_main() -> dict[str, Any]:
    empty_file()
    scene = bpy.context.scene
    png = png_bytes()
    touch("textures/wood.png", png)
    for n in range(1, 101):
        touch(f"seq/tex.{n:04d}.png")
    for n in range(1, 41):
        touch(f"seqb/b.{n:04d}.png")
    for n in range(1, 11):
        touch(f"seqc/c.{n:04d}.png")
    for name in (
        "skin.1001.png",
        "skin.1002.png",
        "skin.1011.png",
        "skin.1001.exr",
        "skinx.1001.png",
    ):
        touch(f"udim/{name}")
    for n in range(1, 11):
        touch(f"clips/plate.{n:04d}.png", png)
    for n in range(1, 51):
        touch(f"vdb/smoke.{n:04d}.vdb")

    wood = image("wood", "FILE", "//textures/wood.png")
    seq_a = image("seqA", "SEQUENCE", "//seq/tex.0001.png")
    seq_b = image("seqB", "SEQUENCE", "//seqb/b.0001.png")
    seq_c = image("seqC", "SEQUENCE", "//seqc/c.0001.png")
    udim = image("skin", "TILED", "//udim/skin.<UDIM>.png")
    udim.tiles.new(1002)
    udim.tiles.new(1011)
    _mat, nodes = material_with("Main", [wood, seq_a, seq_b, seq_c, udim])
    users = {
        "seqA": dict(frame_duration=100, frame_start=1, frame_offset=0, use_cyclic=False),
        "seqB": dict(frame_duration=20, frame_start=5, frame_offset=10, use_cyclic=True),
        "seqC": dict(frame_duration=10, frame_start=1, frame_offset=0, use_cyclic=False),
    }
    for node in nodes:
        for key, value in users.get(node.name, {}).items():
            setattr(node.image_user, key, value)
        node.image_user.use_auto_refresh = True

    touch("audio/music.wav", wav_bytes())
    speaker = bpy.data.speakers.new("speaker")
    speaker.sound = bpy.data.sounds.load(str(ROOT / "audio/music.wav"))
    scene.collection.objects.link(bpy.data.objects.new("speaker", speaker))

    fonts = sorted((Path(bpy.utils.resource_path("LOCAL")) / "datafiles/fonts").glob("*.woff2"))
    (ROOT / "fonts").mkdir(exist_ok=True)
    shutil.copyfile(fonts[0], ROOT / "fonts/title.woff2")
    font = bpy.data.fonts.load(str(ROOT / "fonts/title.woff2"))
    curve = bpy.data.curves.new("Title", "FONT")
    curve.font = font
    scene.collection.objects.link(bpy.data.objects.new("Title", curve))

    clip = bpy.data.movieclips.load(str(ROOT / "clips/plate.0001.png"))
    clip.frame_start = 3
    clip.frame_offset = 2
    scene.active_clip = clip

    volume = bpy.data.volumes.new("smoke")
    volume.filepath = "//vdb/smoke.0001.vdb"
    volume.is_sequence = True
    volume.frame_duration = 50
    volume.frame_start = 1
    volume.frame_offset = 0
    volume.sequence_mode = "CLIP"
    scene.collection.objects.link(bpy.data.objects.new("smoke", volume))

    (ROOT / "cache").mkdir(exist_ok=True)
    bpy.ops.wm.alembic_export(filepath=str(ROOT / "cache/anim.abc"), start=1, end=1)
    bpy.ops.cachefile.open(filepath=str(ROOT / "cache/anim.abc"))
    cached = bpy.data.objects.new("cached", bpy.data.meshes.new("cached"))
    scene.collection.objects.link(cached)
    modifier = cached.modifiers.new("cache", "MESH_SEQUENCE_CACHE")
    modifier.cache_file = bpy.data.cache_files[0]

    with bpy.data.libraries.load(str(ROOT / "lib/props.blend"), link=True, relative=True) as (
        _src,
        dst,
    ):
        dst.objects = ["Prop"]
    for obj in dst.objects:
        scene.collection.objects.link(obj)

    save("main.blend")

    sequences: dict[str, dict[int, str]] = {}
    for frame in REPORT_FRAMES:
        scene.frame_set(frame)
        graph = bpy.context.evaluated_depsgraph_get()
        evaluated = _mat.evaluated_get(graph)
        for name in users:
            user = evaluated.node_tree.nodes[name].image_user
            img = bpy.data.images[name]
            sequences.setdefault(name, {})[frame] = img.filepath_from_user(image_user=user)
    return {"path_map": path_map(), "sequences": sequences}


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    build_library()
    build_cycle()
    report = {"main": build_main()}
    (ROOT / "blender.json").write_text(json.dumps(report, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
