"""The public .blend corpus (``../shared/corpus/blend``) as a bucket, shared by the corpus test
and the script that derives its expectations with real Blender (``blend_corpus_oracle.py``).

The corpus holds only the .blend files (gzip -9). Everything they reference is a stand-in
written here with dummy bytes, named as Blender names it, together with decoys Blender must not
read: UDIM tiles that are not in an image's tile list, sequence frames outside the strips'
range, cache frames far from the requested ones, a point-cache folder named after another file.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "blend"
BAT = "bam/blender-asset-tracer/tests/blendfiles"
GLTF = "gltf/tests"
# The absolute paths the files were saved with, and where the bucket keeps those files.
AUTHOR_ROOT = "/home/sybren/workspace"
FONT_ROOT = "/usr/share/fonts/truetype/hack"
FONT_FOLDER = "system/fonts/hack"
# Frames a real bake of particle.blend's point cache writes (its cache step is 2).
PARTICLE_CACHE_FRAMES = (0, 1, *range(11, 250, 2), 250)


@dataclass(frozen=True)
class Case:
    """One scene of the corpus and the frames asked of it."""

    name: str
    scene: str  # bucket-relative path of the .blend
    frames: str  # as given to ``jitrender deps --frames``


CASES: tuple[Case, ...] = (
    Case("particle", f"{BAT}/T55539-particles/particle.blend", "12-13"),
    Case("absolute_path", f"{BAT}/absolute_path.blend", "1"),
    Case("alembic_sequence", f"{BAT}/alembic-sequence-user.blend", "5-6"),
    Case("alembic", f"{BAT}/alembic-user.blend", "1"),
    Case("basic_file", f"{BAT}/basic_file.blend", "1"),
    Case("doubly_linked", f"{BAT}/doubly_linked.blend", "1"),
    Case("gn_lib_trash", f"{BAT}/geometry-nodes-3/lib_trash.blend", "1"),
    Case("gn_set_file", f"{BAT}/geometry-nodes-3/set_file.blend", "1"),
    Case("gn_shot_file", f"{BAT}/geometry-nodes-3/shot_file.blend", "1"),
    Case("image_sequencer", f"{BAT}/image_sequencer.blend", "5,7"),
    Case("linked_cube", f"{BAT}/linked_cube.blend", "1"),
    Case("meshcache", f"{BAT}/meshcache-user.blend", "1"),
    Case("movieclip", f"{BAT}/movieclip.blend", "1"),
    Case("multires_external", f"{BAT}/multires_external.blend", "1"),
    Case("ocean", f"{BAT}/ocean_modifier.blend", "3-4"),
    Case("doubly_linked_windows", f"{BAT}/subdir/doubly_linked_up-windows.blend", "1"),
    Case("image_sequence_dir_up", f"{BAT}/subdir/image_sequence_dir_up.blend", "2-3"),
    Case("udim_bat", f"{BAT}/udim/v01_UDIM_BAT_debugging.blend", "1"),
    Case("font", f"{BAT}/with_font.blend", "1"),
    Case("gltf_pbr_node", f"{GLTF}/pbr_node/glTF2.blend", "1"),
    Case("linked_collection", f"{GLTF}/scenes/01_linked_collection.blend", "1"),
    Case("textured_sphere", f"{GLTF}/scenes/01_textured_sphere.blend", "1"),
    Case("lenna", f"{GLTF}/scenes/04_lenna.blend", "1"),
    Case("tex_wrapping_packed", f"{GLTF}/scenes/09_tex_wrapping_mirror.blend", "1"),
    Case("scene_links", f"{GLTF}/scenes/21_scene.blend", "1"),
    Case("udim_gltf", f"{GLTF}/scenes/33_udim.blend", "1"),
    Case("pointcloud_gn_5_1", f"{GLTF}/scenes/38_pointcloud_GN.blend", "1"),
    Case("lib_a", f"{GLTF}/scenes/A.blend", "1"),
    Case("lib_b", f"{GLTF}/scenes/B.blend", "1"),
    Case("lib_c", f"{GLTF}/scenes/C.blend", "1"),
    Case("robot", f"{GLTF}/scenes/RobotExpressive.blend", "1"),
    Case("collection_to_link", f"{GLTF}/scenes/collection_to_link.blend", "1"),
)


def stand_ins() -> dict[str, bytes]:
    """Bucket-relative path -> bytes of every file that is not a .blend of the corpus."""
    files: list[str] = [
        f"{BAT}/textures/Bricks/brick_dotted_04-color.jpg",
        f"{BAT}/textures/Textures/Buildings/buildings_roof_04-color.png",
        f"{BAT}/clothsim.abc",
        f"{BAT}/meshcache.mdd",
        f"{BAT}/Cube.btx",
        "cloud/pillar/testfiles/video.mov",
        "cloud/pillar/testfiles/video-tiny.mkv",
        f"{FONT_FOLDER}/Hack-Bold.ttf",
        f"{GLTF}/environments/field.hdr",
        f"{GLTF}/scenes/Lenna.png",
        f"{GLTF}/scenes/\xa0/Blender/DavidThorn/Library/Large/Texture.png",
        *(f"{GLTF}/scenes/01_Textured_Sphere_{m}.png" for m in _SPHERE_MAPS),
        # the packed image's original file: Blender reads the packed copy, never this
        f"{GLTF}/roundtrip/13_texture_wrapping/Black.png",
    ]
    # an Alembic sequence (clothsim.030.abc as written), frames 0-40 and decoys past them
    files += [f"{BAT}/clothsim.{n:03d}.abc" for n in range(0, 61)]
    # the sequencer's image strip elements 000210-000214, and decoy frames either side
    files += [f"{BAT}/imgseq/{n:06d}.png" for n in range(200, 225)]
    # point cache of particle.blend, and the same names under another file's folder
    for folder in ("blendcache_particle", "blendcache_other"):
        files += [
            f"{BAT}/T55539-particles/{folder}/43756265_{n:06d}_01.bphys"
            for n in PARTICLE_CACHE_FRAMES
        ]
    # ocean cache, as ocean_bake names it (displacement only: foam and normals are off)
    files += [f"{BAT}/cache_ocean/disp_{n:04d}.exr" for n in range(1, 51)]
    # UDIM: the tiles in each image's list, and decoy tiles beside them
    files += [f"{BAT}/udim/cube_UDIM.color.{t}.png" for t in (1001, 1002, 1003, 1004, 1011)]
    for name in ("test", "test2", "test3", "test4"):
        files += [f"{GLTF}/scenes/{name}.{t}.png" for t in (1001, 1002, 1011, 1012, 1013, 1021)]
    return {path: f"stand-in for {path}\n".encode() for path in files}


_SPHERE_MAPS = ("BaseColor", "Normal", "OcclusionRoughnessMetallic")


def unpack_blends(root: Path) -> list[str]:
    """Every .blend of the corpus under ``root`` at its bucket path; their relative paths."""
    out = []
    for packed in sorted((CORPUS / "blends").rglob("*.blend.gz")):
        rel = packed.relative_to(CORPUS / "blends").as_posix()[: -len(".gz")]
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(gzip.decompress(packed.read_bytes()))
        out.append(rel)
    return out


def build_bucket(root: Path) -> None:
    """The corpus bucket in a local folder: the .blend files and every stand-in."""
    unpack_blends(root)
    for rel, data in stand_ins().items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
