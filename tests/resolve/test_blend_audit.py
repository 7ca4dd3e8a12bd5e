"""Regressions found by running ``jitrender deps`` against real Blender (strace of a render) on
public .blend files outside the corpus: what Blender does, rebuilt in small scenes made with bpy.

- Files before Blender 4 store each datablock's ``ID.next``/``ID.prev`` (its neighbours in the
  ``Main`` list) as memory addresses: they are not references, and an unused image next to a
  used one is not read.
- A scene whose render runs no render engine reads nothing of its 3D scene: the video
  sequencer is active (a strip that is not sound and not muted), or compositing is on and the
  compositor has no Render Layers node of the scene. A background set scene is still rendered.
- An object disabled in renders is skipped as a collection member (in the scene and in an
  instanced collection), but rendered as a particle system's instance object.
- A zstd-compressed file whose frames do not decode is a one-line scene error, not a traceback.

The scenes are built by one bpy process (``BUILD``, run as a script); each test runs the CLI
(``jitrender deps ... --json``) on one of them, with a folder as the bucket.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from blender_asset_tracer import blendfile

from jitrender.errors import ExitCode
from tests.conftest import cli

pytestmark = pytest.mark.blender

BUILD = r'''
import sys
from pathlib import Path

import bpy

ROOT = Path(sys.argv[1])


def image(name):
    img = bpy.data.images.new(name, 4, 4)
    img.source = "FILE"
    img.filepath = f"//tex/{name}.png"
    return img


def textured_mesh(scene, name, img):
    """A triangle in ``scene`` whose material shows ``img`` (an image node feeding the BSDF)."""
    mesh = bpy.data.meshes.new(name)
    mesh.from_pydata([(0, 0, 0), (1, 0, 0), (0, 1, 0)], [], [(0, 1, 2)])
    mat = bpy.data.materials.new(name)
    if mat.node_tree is None:
        mat.use_nodes = True
    tree = mat.node_tree
    node = tree.nodes.new("ShaderNodeTexImage")
    node.image = img
    tree.links.new(node.outputs["Color"], tree.nodes["Principled BSDF"].inputs["Base Color"])
    mesh.materials.append(mat)
    obj = bpy.data.objects.new(name, mesh)
    scene.collection.objects.link(obj)
    camera = bpy.data.objects.new(name + "-camera", bpy.data.cameras.new(name + "-camera"))
    scene.collection.objects.link(camera)
    scene.camera = camera


def compositor(scene, render_layers=False, shown=None):
    """Compositing on, with a node tree that has a Render Layers node of the scene or not, and
    an Image node of ``shown`` feeding the tree's output."""
    tree = bpy.data.node_groups.new(scene.name + "-compositor", "CompositorNodeTree")
    tree.interface.new_socket("Image", in_out="OUTPUT", socket_type="NodeSocketColor")
    output = tree.nodes.new("NodeGroupOutput")
    if render_layers:
        layers = tree.nodes.new("CompositorNodeRLayers")
        layers.scene = scene
        tree.links.new(layers.outputs["Image"], output.inputs[0])
    if shown is not None:
        node = tree.nodes.new("CompositorNodeImage")
        node.image = shown
        tree.links.new(node.outputs["Image"], output.inputs[0])
    scene.compositing_node_group = tree
    scene.render.use_compositing = True


def save(name):
    bpy.ops.wm.save_as_mainfile(filepath=str(ROOT / f"{name}.blend"), compress=False)


def fresh():
    bpy.ops.wm.read_factory_settings(use_empty=True)
    return bpy.context.scene


# Three images in Main: one used, two kept only by a fake user (the test links them up).
scene = fresh()
textured_mesh(scene, "used", image("used"))
for name in ("spare1", "spare2"):
    image(name).use_fake_user = True
save("neighbours")

# The sequencer shows an image strip: the 3D scene is not rendered.
scene = fresh()
textured_mesh(scene, "model", image("model"))
strips = scene.sequence_editor_create().strips
strips.new_image("plate", str(ROOT / "plates" / "plate.png"), 1, 1)
save("sequencer")

# The same, but the only strip is muted: the 3D scene is rendered.
strips[0].mute = True
save("sequencer_muted")

# Compositing with no Render Layers node: only the compositor's Image node is read.
scene = fresh()
textured_mesh(scene, "model", image("model"))
compositor(scene, shown=image("overlay"))
save("compositor_without_render")

# With a Render Layers node of the scene: the scene is rendered too.
scene = fresh()
textured_mesh(scene, "model", image("model"))
compositor(scene, render_layers=True, shown=image("overlay"))
save("compositor_with_render")

# Objects disabled in renders: in the scene (not read), as a hair system's instance object
# (read), in an instanced collection (not read, beside a member that is).
scene = fresh()
textured_mesh(scene, "visible", image("visible"))
textured_mesh(scene, "hidden", image("hidden"))
bpy.data.objects["hidden"].hide_render = True
textured_mesh(scene, "instanced", image("instanced"))
source = bpy.data.objects["instanced"]
source.hide_render = True
emitter = bpy.data.objects["visible"]
emitter.modifiers.new("hair", "PARTICLE_SYSTEM")
settings = emitter.particle_systems[0].settings
settings.type = "HAIR"
settings.count = 3
settings.render_type = "OBJECT"
settings.instance_object = source
kit = bpy.data.collections.new("kit")
for name, hide in (("member", False), ("member_hidden", True)):
    textured_mesh(scene, name, image(name))
    obj = bpy.data.objects[name]
    scene.collection.objects.unlink(obj)
    kit.objects.link(obj)
    obj.hide_render = hide
holder = bpy.data.objects.new("holder", None)
holder.instance_type = "COLLECTION"
holder.instance_collection = kit
scene.collection.objects.link(holder)
scene.camera = bpy.data.objects["visible-camera"]
save("hidden_objects")

# A background set whose own compositor would render nothing: the main scene renders it.
scene = fresh()
textured_mesh(scene, "main", image("main"))
background = bpy.data.scenes.new("Background")
textured_mesh(background, "set", image("set"))
compositor(background)
scene.background_set = background
save("background_set")
'''


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with every scene of ``BUILD`` and a file for each image it names."""
    pytest.importorskip("bpy")
    root = tmp_path_factory.mktemp("blend-audit")
    script = root / "build.py"
    script.write_text(BUILD)
    done = subprocess.run(
        [sys.executable, str(script), str(root)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    names = ("used", "spare1", "spare2", "model", "overlay", "main", "set")
    names += ("visible", "hidden", "instanced", "member", "member_hidden")
    for path in [*(f"tex/{n}.png" for n in names), "plates/plate.png"]:
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(b"stand-in\n")
    return root


def deps(root: Path, scene: str, cache: Path) -> dict[str, Any]:
    done = cli(
        "deps", f"file://{root}/{scene}", "--frames", "1", "--json", "--cache-dir", str(cache)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def listed(document: dict[str, Any], root: Path) -> set[str]:
    """The bucket-relative paths of the files listed (all of them exist here)."""
    prefix = f"file://{root}/"
    out = set()
    for dep in document["deps"]:
        assert dep["url"].startswith(prefix) and dep["exists"], dep
        out.add(dep["url"][len(prefix) :])
    return out


def link_main_list(path: Path, names: list[bytes]) -> None:
    """Writes, into each named ID's header, the ``next``/``prev`` addresses of its neighbours
    in ``names``: what Blender before 4.x saved (the datablocks' memory links in ``Main``)."""
    bfile = blendfile.BlendFile(path)
    try:
        blocks = {b.id_name: b for b in bfile.blocks if b.id_name in names}
        size = int(bfile.header.pointer_size)
        order = "little" if bfile.header.is_little_endian else "big"
        patches = []
        for index, name in enumerate(names):
            block = blocks[name]
            for member, other in ((b"prev", index - 1), (b"next", index + 1)):
                target = blocks[names[other]].addr_old if 0 <= other < len(names) else 0
                _, offset = block.dna_type.field_from_path(size, (b"id", member))
                patches.append((block.file_offset + offset, target.to_bytes(size, order)))
    finally:
        bfile.close()
    data = bytearray(path.read_bytes())
    for offset, value in patches:
        data[offset : offset + len(value)] = value
    path.write_bytes(bytes(data))


def test_main_list_neighbours_of_a_used_image_are_not_dependencies(
    bucket: Path, tmp_path: Path
) -> None:
    scene = tmp_path / "neighbours.blend"
    scene.write_bytes((bucket / "neighbours.blend").read_bytes())
    (tmp_path / "tex").symlink_to(bucket / "tex")
    link_main_list(scene, [b"IMspare1", b"IMused", b"IMspare2"])
    assert listed(deps(tmp_path, "neighbours.blend", tmp_path / "cache"), tmp_path) == {
        "tex/used.png"
    }


def test_active_sequencer_renders_the_strips_and_not_the_3d_scene(
    bucket: Path, tmp_path: Path
) -> None:
    assert listed(deps(bucket, "sequencer.blend", tmp_path), bucket) == {"plates/plate.png"}


def test_muted_strips_leave_the_3d_scene_rendered(bucket: Path, tmp_path: Path) -> None:
    assert listed(deps(bucket, "sequencer_muted.blend", tmp_path), bucket) == {"tex/model.png"}


def test_compositor_without_render_layers_reads_only_its_own_images(
    bucket: Path, tmp_path: Path
) -> None:
    got = listed(deps(bucket, "compositor_without_render.blend", tmp_path), bucket)
    assert got == {"tex/overlay.png"}


def test_compositor_with_render_layers_renders_the_scene(bucket: Path, tmp_path: Path) -> None:
    got = listed(deps(bucket, "compositor_with_render.blend", tmp_path), bucket)
    assert got == {"tex/overlay.png", "tex/model.png"}


def test_objects_disabled_in_renders_are_read_only_as_instance_objects(
    bucket: Path, tmp_path: Path
) -> None:
    got = listed(deps(bucket, "hidden_objects.blend", tmp_path), bucket)
    assert got == {"tex/visible.png", "tex/instanced.png", "tex/member.png"}


def test_background_set_is_rendered_by_the_scene_that_uses_it(bucket: Path, tmp_path: Path) -> None:
    got = listed(deps(bucket, "background_set.blend", tmp_path), bucket)
    assert got == {"tex/main.png", "tex/set.png"}


def test_zstd_file_whose_frames_do_not_decode_is_a_one_line_scene_parse_error(
    tmp_path: Path,
) -> None:
    broken = tmp_path / "broken.blend"
    broken.write_bytes(b"\x28\xb5\x2f\xfd" + b"not a zstd frame" * 4)  # zstd magic, then junk
    done = cli(
        "deps", f"file://{broken}", "--frames", "1", "--json", "--cache-dir", str(tmp_path / "c")
    )
    assert done.returncode == ExitCode.DATA, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert json.loads(done.stdout)["ok"] is False
