"""Builds the .blend the Blender plugin tests render, with real Blender (bpy).

Run in its own process: ``python blend_hook_scene.py OUT.blend``. Two emission planes fill an
orthographic camera: the left one shows ``/mnt/show/tex/wood.png``, the right one the image
sequence ``/mnt/show/seq/plate.####.png`` (frames 1-5). Both paths are studio paths that do not
exist on the node; the colour management is Standard so the pixels keep the textures' values.
"""

from __future__ import annotations

import sys
import warnings
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


main()
