"""Builds the Cycles scenes the split-frame tests and benchmark render, with real Blender (bpy).

Run in its own process: ``python tests/split_scene.py FOLDER`` writes ``FOLDER/plain.blend``
and ``FOLDER/denoised.blend`` (the same scene with Cycles denoising on): a lit sphere on a
plane, so edges, soft shadows and noise cross every tile boundary; 64x48 pixels, 16 samples,
adaptive sampling off (a job's ``resolution``/``samples`` args override both).
"""

from __future__ import annotations

import sys

import bpy


def build(path: str, denoise: bool) -> None:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.render.engine = "CYCLES"
    scene.render.resolution_x, scene.render.resolution_y = 64, 48
    scene.render.resolution_percentage = 100
    scene.cycles.samples = 16
    scene.cycles.use_adaptive_sampling = False
    scene.cycles.use_denoising = denoise
    bpy.ops.mesh.primitive_uv_sphere_add(location=(0, 0, 0))
    bpy.ops.mesh.primitive_plane_add(size=10, location=(0, 0, -1))
    bpy.ops.object.light_add(type="POINT", location=(2, -2, 3))
    bpy.context.object.data.energy = 800
    bpy.ops.object.camera_add(location=(0, -6, 1.5), rotation=(1.35, 0, 0))
    scene.camera = bpy.context.object
    scene.world = bpy.data.worlds.new("sky")
    bpy.ops.wm.save_as_mainfile(filepath=path)


if __name__ == "__main__":
    for name in ("plain", "denoised"):
        build(f"{sys.argv[1]}/{name}.blend", name == "denoised")
