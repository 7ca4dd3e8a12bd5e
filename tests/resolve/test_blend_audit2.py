"""Regressions found by an audit of time-varying inputs: scenes built with bpy whose frames read
different files, checked per frame against real Blender 5.0 (``strace`` of ``open_mainfile``,
``frame_set`` and a 1-sample Cycles render of each frame).

- An Alembic (cache file) sequence: a frame whose file does not exist is stat'ed and skipped
  (``BKE_cachefile_filepath_get``): the render goes on, so it is not a missing dependency.
- A cloth's disk point cache is read only after its start frame (before it the simulation is
  off, at it the cloth is at rest), and past its end frame the end frame is read.
- A particle system's disk point cache: before its start frame, the start frame is read.
- Keyframes (or drivers) on an image texture's sequence Offset: which file a frame reads is not
  computed; one ``unresolved`` entry, and every file of the sequence for every frame.

The scenes are built by one bpy process (``BUILD``, run as a script); each test runs the CLI
(``jitrender deps ... --json``) on one of them, with a folder as the bucket.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import cli

pytestmark = pytest.mark.blender

BUILD = r"""
import shutil
import sys
from pathlib import Path

import bpy

ROOT = Path(sys.argv[1])


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, 20
    return scene


def save(name):
    bpy.ops.wm.save_as_mainfile(filepath=str(ROOT / f"{name}.blend"), compress=False)


# An Alembic sequence whose files are cache.0001.abc and cache.0002.abc.
scene = fresh()
bpy.ops.mesh.primitive_cube_add()
(ROOT / "abc").mkdir()
bpy.ops.wm.alembic_export(filepath=str(ROOT / "abc/one.abc"), start=1, end=1)
for number in (1, 2):
    shutil.copy(ROOT / "abc/one.abc", ROOT / f"abc/cache.{number:04d}.abc")
scene = fresh()
bpy.ops.wm.alembic_import(
    filepath=str(ROOT / "abc/cache.0001.abc"), is_sequence=True, set_frame_range=False
)
bpy.data.cache_files[0].filepath = "//abc/cache.0001.abc"
save("abc_sequence")

# A cloth simulated from frame 2 to 6, cached on disk (a disk cache needs a saved file).
scene = fresh()
bpy.ops.mesh.primitive_plane_add()
cloth = bpy.context.active_object.modifiers.new("cloth", "CLOTH")
cloth.point_cache.frame_start = 2
cloth.point_cache.frame_end = 6
save("cloth")
cloth.point_cache.use_disk_cache = True
save("cloth")

# Particles emitted from frame 1, cached on disk.
scene = fresh()
bpy.ops.mesh.primitive_plane_add()
plane = bpy.context.active_object
plane.modifiers.new("particles", "PARTICLE_SYSTEM")
system = plane.particle_systems[0]
system.settings.frame_start = 1
system.settings.frame_end = 3
save("particles")
system.point_cache.use_disk_cache = True
save("particles")

# An image sequence whose Offset is keyframed: 0 on frame 1, 10 on frame 11.
scene = fresh()
mesh = bpy.data.meshes.new("tri")
mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
material = bpy.data.materials.new("mat")
material.use_nodes = True
tree = material.node_tree
node = tree.nodes.new("ShaderNodeTexImage")
(ROOT / "seq").mkdir()
image = bpy.data.images.new("a", 2, 2)
image.filepath_raw = str(ROOT / "seq/a.0001.png")
image.file_format = "PNG"
image.save()
image.source = "SEQUENCE"
image.filepath = "//seq/a.0001.png"
node.image = image
node.image_user.frame_duration = 5
node.image_user.frame_offset = 0
node.image_user.keyframe_insert("frame_offset", frame=1)
node.image_user.frame_offset = 10
node.image_user.keyframe_insert("frame_offset", frame=11)
tree.links.new(node.outputs["Color"], tree.nodes["Principled BSDF"].inputs["Base Color"])
mesh.materials.append(material)
scene.collection.objects.link(bpy.data.objects.new("tri", mesh))
save("keyed_offset")
"""

# A point cache's files: <the object's name in hex>_<frame, 6 digits>_<index>.bphys
PLANE = "506C616E65"


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every scene of ``BUILD`` and stand-ins for the files they read."""
    pytest.importorskip("bpy")
    root = tmp_path_factory.mktemp("blend-audit2")
    script = root.parent / f"{root.name}-build.py"
    script.write_text(BUILD)
    done = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for folder, frames in (("blendcache_cloth", range(2, 7)), ("blendcache_particles", range(6))):
        shutil.rmtree(root / folder, ignore_errors=True)  # what saving with a disk cache wrote
        (root / folder).mkdir()
        for frame in frames:
            (root / folder / f"{PLANE}_{frame:06d}_00.bphys").write_bytes(b"stand-in\n")
    for number in range(2, 13):
        shutil.copy(root / "seq/a.0001.png", root / f"seq/a.{number:04d}.png")
    return root


def deps(root: Path, scene: str, frames: str, cache: Path) -> dict[str, Any]:
    done = cli(
        "deps", f"file://{root}/{scene}", "--frames", frames, "--json", "--cache-dir", str(cache)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def per_frame(document: dict[str, Any], root: Path) -> dict[int, set[str]]:
    """Frame -> the bucket-relative paths of the files it needs."""
    prefix = f"file://{root}/"
    out: dict[int, set[str]] = {frame: set() for frame in document["frames"]}
    for dep in document["deps"]:
        assert dep["url"].startswith(prefix), dep
        for frame in out:
            if dep["frames"] is None or frame in dep["frames"]:
                out[frame].add(dep["url"][len(prefix) :])
    return out


def test_alembic_sequence_frames_without_a_file_are_not_missing(
    bucket: Path, tmp_path: Path
) -> None:
    document = deps(bucket, "abc_sequence.blend", "2,5", tmp_path)
    assert document["missing"] == []
    assert per_frame(document, bucket) == {2: {"abc/cache.0002.abc"}, 5: set()}


def test_cloth_cache_is_read_after_its_start_frame_and_held_after_its_end(
    bucket: Path, tmp_path: Path
) -> None:
    document = deps(bucket, "cloth.blend", "1,2,3,9", tmp_path)
    folder = f"blendcache_cloth/{PLANE}"
    assert per_frame(document, bucket) == {
        1: set(),
        2: set(),
        3: {f"{folder}_000003_00.bphys"},
        9: {f"{folder}_000006_00.bphys"},
    }


def test_particle_cache_reads_its_start_frame_before_the_start(
    bucket: Path, tmp_path: Path
) -> None:
    document = deps(bucket, "particles.blend", "0,2", tmp_path)
    folder = f"blendcache_particles/{PLANE}"
    assert per_frame(document, bucket) == {
        0: {f"{folder}_000001_00.bphys"},
        2: {f"{folder}_000002_00.bphys"},
    }


def test_keyframed_sequence_offset_is_unresolved_and_lists_every_file(
    bucket: Path, tmp_path: Path
) -> None:
    document = deps(bucket, "keyed_offset.blend", "1,5", tmp_path)
    every = {f"seq/a.{number:04d}.png" for number in range(1, 13)}
    assert per_frame(document, bucket) == {1: every, 5: every}
    assert [u["value"] for u in document["unresolved"]] == ["//seq/a.0001.png"]
    assert "animated" in document["unresolved"][0]["why"]
