"""Builds the .blend files the Blender plugin tests render, with real Blender (bpy).

Run in its own process: ``python blend_hook_scene.py OUT.blend``. Two emission planes fill an
orthographic camera: the left one shows ``/mnt/show/tex/wood.png``, the right one the image
sequence ``/mnt/show/seq/plate.####.png`` (frames 1-5). Both paths are studio paths that do not
exist on the node; the colour management is Standard so the pixels keep the textures' values.

``python blend_hook_scene.py OUT.blend vse`` builds a 16x16 scene rendered by its video
sequencer instead, every path below ``/mnt/show/vse`` (the movie and the sound it needs are
written next to OUT.blend, for the test to put in the bucket):

- channel 1, "Shot": an image strip over ``shot.0001.png`` .. ``shot.0010.png`` from frame 3
  (frame F shows ``shot.{F-2}``, holding the last element until frame 12);
- channel 2 (muted channel), "Muted": an image strip over 20 files not in the bucket;
- channel 3, "Clip": ``clip.mov``, two frames (9-10) of one colour (CLIP_RGB), lossless;
- channel 4, "Meta": a meta strip at frames 15-17 with Reverse Frames on, holding an image
  strip over ``inner.0001.png`` .. ``inner.0003.png`` (frame 15 shows ``inner.0003``);
- channel 5, "OldClip": a muted movie strip whose file is not in the bucket;
- channel 6, "Tone": a sound strip reading ``tone.wav``.
"""

from __future__ import annotations

import sys
import warnings
import wave
from pathlib import Path
from typing import Any

import bpy

OUT = sys.argv[1]


def emission_material(name: str, image: Any, sequence: bool) -> Any:
    material = bpy.data.materials.new(name)
    with warnings.catch_warnings():  # Blender 5 still needs it for a new material
        warnings.simplefilter("ignore", DeprecationWarning)
        material.use_nodes = True
    nodes, links = material.node_tree.nodes, material.node_tree.links
    nodes.clear()
    texture = nodes.new("ShaderNodeTexImage")
    texture.image = image
    texture.interpolation = "Closest"
    if sequence:
        texture.image_user.frame_duration = 5
        texture.image_user.frame_start = 1
        texture.image_user.frame_offset = 0
        texture.image_user.use_auto_refresh = True
    emission = nodes.new("ShaderNodeEmission")
    output = nodes.new("ShaderNodeOutputMaterial")
    links.new(texture.outputs["Color"], emission.inputs["Color"])
    links.new(emission.outputs["Emission"], output.inputs["Surface"])
    return material


def plane(name: str, x: float, material: Any) -> None:
    bpy.ops.mesh.primitive_plane_add(size=1.0, location=(x, 0.0, 0.0))
    obj = bpy.context.active_object
    obj.name = name
    obj.scale = (1.0, 1.6, 1.0)
    obj.data.materials.append(material)


def main() -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    wood = bpy.data.images.new("wood", 4, 4)
    wood.source = "FILE"
    wood.filepath = "/mnt/show/tex/wood.png"
    plate = bpy.data.images.new("plate", 4, 4)
    plate.source = "SEQUENCE"
    plate.filepath = "/mnt/show/seq/plate.0001.png"
    plane("Left", -0.5, emission_material("Wood", wood, False))
    plane("Right", 0.5, emission_material("Plate", plate, True))
    camera_data = bpy.data.cameras.new("Camera")
    camera_data.type = "ORTHO"
    camera_data.ortho_scale = 2.0
    camera = bpy.data.objects.new("Camera", camera_data)
    camera.location = (0.0, 0.0, 5.0)
    scene.collection.objects.link(camera)
    scene.camera = camera
    scene.frame_start, scene.frame_end = 1, 5
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.render.dither_intensity = 0.0
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    bpy.ops.wm.save_as_mainfile(filepath=OUT, relative_remap=False, compress=True)


CLIP_RGB = (0.2, 0.8, 0.4)  # a Color strip's colour is display-referred: (51, 204, 102)


def write_clip(path: Path) -> None:
    """Two 16x16 frames of CLIP_RGB as a QuickTime movie with the PNG codec (lossless RGB)."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    colour = scene.sequence_editor_create().strips.new_effect(
        "Colour", "COLOR", 1, frame_start=1, length=2
    )
    colour.color = CLIP_RGB
    scene.frame_start, scene.frame_end = 1, 2
    scene.render.use_sequencer = True
    scene.render.resolution_x = scene.render.resolution_y = 16
    scene.view_settings.view_transform = "Standard"
    scene.render.dither_intensity = 0.0
    settings = scene.render.image_settings
    settings.media_type = "VIDEO"
    settings.file_format = "FFMPEG"
    settings.color_mode = "RGB"
    scene.render.ffmpeg.format = "QUICKTIME"
    scene.render.ffmpeg.codec = "PNG"
    scene.render.use_file_extension = False
    scene.render.filepath = str(path)
    bpy.ops.render.render(animation=True)


def write_tone(path: Path) -> None:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(bytes(1600))


def image_strip(strips: Any, name: str, channel: int, start: int, files: list[str]) -> Any:
    folder = "/mnt/show/vse/"
    strip = strips.new_image(name, folder + files[0], channel, start)
    for file in files[1:]:
        strip.elements.append(file)
    return strip


def vse() -> None:
    here = Path(OUT).parent
    write_clip(here / "clip.mov")
    write_tone(here / "tone.wav")
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    editor = scene.sequence_editor_create()
    strips = editor.strips
    image_strip(strips, "Shot", 1, 3, [f"shot.{n:04d}.png" for n in range(1, 11)])
    image_strip(strips, "Muted", 2, 1, [f"muted.{n:04d}.png" for n in range(1, 21)])
    editor.channels[2].mute = True
    clip = strips.new_movie("Clip", str(here / "clip.mov"), 3, 9)
    clip.filepath = "/mnt/show/vse/clip.mov"
    inner = image_strip(strips, "Inner", 4, 15, [f"inner.{n:04d}.png" for n in range(1, 4)])
    meta = strips.new_meta("Meta", 4, 15)
    inner.move_to_meta(meta)
    meta.frame_offset_end = 0  # show all three frames of its content
    meta.use_reverse_frames = True
    old = strips.new_movie("OldClip", str(here / "clip.mov"), 5, 1)
    old.filepath = "/mnt/show/vse/old.mov"
    old.mute = True
    tone = strips.new_sound("Tone", str(here / "tone.wav"), 6, 1)
    tone.sound.filepath = "/mnt/show/vse/tone.wav"
    camera = bpy.data.objects.new("Camera", bpy.data.cameras.new("Camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera  # the engine wants one, though the sequencer makes the picture
    scene.render.use_sequencer = True
    scene.frame_start, scene.frame_end = 1, 17
    scene.view_settings.view_transform = "Standard"
    scene.view_settings.look = "None"
    scene.render.dither_intensity = 0.0
    scene.render.resolution_x = scene.render.resolution_y = 16
    bpy.ops.wm.save_as_mainfile(filepath=OUT, relative_remap=False, compress=True)


if sys.argv[2:] == ["vse"]:
    vse()
else:
    main()
