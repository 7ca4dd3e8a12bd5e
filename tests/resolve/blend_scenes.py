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
    tree = mat.node_tree
    nodes = []
    surface = None
    for img in images:
        node = tree.nodes.new("ShaderNodeTexImage")
        node.image = img
        node.name = img.name
        nodes.append(node)
        # each texture feeds the output, as a texture must for Blender to read it
        emit = tree.nodes.new("ShaderNodeEmission")
        tree.links.new(node.outputs["Color"], emit.inputs["Color"])
        if surface is None:
            surface = emit.outputs[0]
        else:
            add = tree.nodes.new("ShaderNodeAddShader")
            tree.links.new(surface, add.inputs[0])
            tree.links.new(emit.outputs[0], add.inputs[1])
            surface = add.outputs[0]
    output = next(n for n in tree.nodes if n.type == "OUTPUT_MATERIAL")
    if surface is not None:
        tree.links.new(surface, output.inputs["Surface"])
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


def link(library: str, kind: str, names: list[str]) -> list[Any]:
    """Link the ``kind`` datablocks (``"objects"``, ``"materials"``) called ``names`` from the
    library file ``library`` (below ROOT) by a relative path; objects are put in the scene."""
    with bpy.data.libraries.load(str(ROOT / library), link=True, relative=True) as (_src, dst):
        setattr(dst, kind, names)
    linked: list[Any] = getattr(dst, kind)
    if kind == "objects":
        for obj in linked:
            bpy.context.scene.collection.objects.link(obj)
    return linked


def new_library(blend: str, **textures: str) -> None:
    """Start an empty file for the library ``blend`` (below ROOT) holding, for each
    ``material=texture``, a material on its own mesh showing the image file ``texture``
    (written in ``blend``'s folder, referenced as ``//texture``)."""
    empty_file()
    for material, texture in textures.items():
        touch(str(Path(blend).parent / texture))
        material_with(material, [image(Path(texture).stem, "FILE", "//" + texture)])


def build_library() -> None:
    """lib/deep.blend <- lib/props.blend: a library that links from another library."""
    new_library("lib/deep.blend", Deep="deep_tex/deep.png")
    save("lib/deep.blend")
    new_library("lib/props.blend", Prop="tex/props_color.png", Unused="tex/unused.png")
    bpy.data.objects["Prop"].data.materials.append(link("lib/deep.blend", "materials", ["Deep"])[0])
    save("lib/props.blend")


def build_cycle() -> None:
    """cycle/a.blend and cycle/b.blend link from each other."""
    new_library("cycle/a.blend", A="a.png")
    save("cycle/a.blend")
    new_library("cycle/b.blend", B="b.png")
    link("cycle/a.blend", "objects", ["A"])
    save("cycle/b.blend")
    bpy.ops.wm.open_mainfile(filepath=str(ROOT / "cycle/a.blend"))
    link("cycle/b.blend", "objects", ["B"])
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

    link("lib/props.blend", "objects", ["Prop"])

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


# Sequencer strips: name -> (channel, folder, element files). Each element is a 4x4 PNG of its
# own colour (red: element number, green: strip number), so a rendered frame tells which
# element of which strip Blender showed there.
VSE_STRIPS: dict[str, tuple[int, str, list[str]]] = {
    "plate": (1, "vse/plate", [f"plate_{c}.png" for c in "qwertyuiop"]),
    "reverse": (2, "vse/reverse", [f"r{n:02d}.png" for n in range(1, 11)]),
    "nested": (1, "vse/nested", [f"n{n:02d}.png" for n in range(1, 11)]),
    "muted": (4, "vse/muted", [f"m{n:02d}.png" for n in range(1, 11)]),
    "muted_channel": (5, "vse/muted_channel", [f"c{n:02d}.png" for n in range(1, 11)]),
}
VSE_FRAMES = list(range(0, 46))


def color_png(rel: str, rgb: tuple[int, int, int]) -> None:
    img = bpy.data.images.new("_color", 4, 4)
    img.pixels[:] = [rgb[0] / 255, rgb[1] / 255, rgb[2] / 255, 1.0] * 16
    img.filepath_raw = str(ROOT / rel)
    img.file_format = "PNG"
    img.save()
    bpy.data.images.remove(img)


def build_vse() -> dict[str, Any]:
    """vse.blend: image strips with start/offsets/holds, reverse+strobe+animation offsets, one
    inside a trimmed meta strip, a muted one, one on a muted channel; a movie and two sound
    strips (one muted). Reports, per frame, the element Blender renders (read back from the
    rendered pixels) and what ``strip_elem_from_frame`` says."""
    empty_file()
    scene = bpy.context.scene
    scene.render.resolution_x = scene.render.resolution_y = 4
    scene.render.resolution_percentage = 100
    scene.render.image_settings.file_format = "PNG"
    scene.view_settings.view_transform = "Standard"
    editing = scene.sequence_editor_create()
    strips: dict[str, Any] = {}
    for number, (name, (channel, folder, files)) in enumerate(VSE_STRIPS.items(), start=1):
        (ROOT / folder).mkdir(parents=True, exist_ok=True)
        for index, file in enumerate(files, start=1):
            color_png(f"{folder}/{file}", (index * 20, number * 40, 0))
        strip = editing.strips.new_image(name, str(ROOT / folder / files[0]), channel, 1)
        for file in files[1:]:
            strip.elements.append(file)
        strips[name] = strip

    plate = strips["plate"]  # shows elements 3..9 on frames 5..11
    plate.frame_start = 3
    plate.frame_offset_start = 2
    plate.frame_offset_end = 1

    reverse = strips["reverse"]  # frames 12..23, holds before and after its content
    reverse.frame_start = 14
    reverse.use_reverse_frames = True
    reverse.strobe = 2.0
    reverse.animation_offset_start = 1
    reverse.animation_offset_end = 1
    reverse.frame_final_start = 12
    reverse.frame_final_end = 24

    # inside a meta strip moved to frame 30, cut at its start, held past its end
    nested = strips["nested"]
    meta = editing.strips.new_meta("meta", 3, 1)
    nested.frame_start = 1
    nested.move_to_meta(meta)
    meta.frame_offset_start = meta.frame_offset_end = 0
    nested.animation_offset_start = 1
    nested.frame_final_end = 8
    meta.frame_final_start = 3
    meta.frame_final_end = 12
    meta.frame_start = 30

    strips["muted"].frame_start = 3
    strips["muted"].mute = True
    strips["muted_channel"].frame_start = 14
    editing.channels[5].mute = True

    touch("vse/movie/shot.mov", b"not really a movie")
    movie = editing.strips.new_movie("movie", str(ROOT / "vse/movie/shot.mov"), 6, 43)
    touch("vse/audio/music.wav", wav_bytes())
    touch("vse/audio/draft.wav", wav_bytes())
    touch("vse/audio/muted.wav", wav_bytes())
    music = editing.strips.new_sound("music", str(ROOT / "vse/audio/draft.wav"), 7, 1)
    # Blender plays the sound datablock's file; the strip keeps the path it was loaded from.
    music.sound.filepath = str(ROOT / "vse/audio/music.wav")
    editing.strips.new_sound("quiet", str(ROOT / "vse/audio/muted.wav"), 8, 1).mute = True
    save("vse.blend")

    by_color = {
        (index * 20, number * 40): str(ROOT / folder / file)
        for number, (channel, folder, files) in enumerate(VSE_STRIPS.values(), start=1)
        for index, file in enumerate(files, start=1)
    }
    rendered: dict[int, str | None] = {}
    elements: dict[str, dict[int, str]] = {}
    for frame in VSE_FRAMES:
        scene.frame_set(frame)
        scene.render.filepath = str(ROOT / "_frame.png")
        bpy.ops.render.render(write_still=True)
        out = bpy.data.images.load(str(ROOT / "_frame.png"))
        red, green, _blue, alpha = (round(v * 255) for v in out.pixels[:4])
        bpy.data.images.remove(out)
        rendered[frame] = by_color[(red, green)] if alpha else None
        for name, strip in strips.items():
            if strip.frame_final_start <= frame < strip.frame_final_end:
                element = strip.strip_elem_from_frame(frame)
                elements.setdefault(name, {})[frame] = bpy.path.abspath(
                    strip.directory + element.filename
                )
    (ROOT / "_frame.png").unlink()
    return {
        "rendered": rendered,
        "elements": elements,
        "movie": [movie.frame_final_start, movie.frame_final_end],
    }


def main() -> None:
    ROOT.mkdir(parents=True, exist_ok=True)
    build_library()
    build_cycle()
    report = {"main": build_main(), "vse": build_vse()}
    (ROOT / "blender.json").write_text(json.dumps(report, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
