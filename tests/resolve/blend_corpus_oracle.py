"""Derives what each corpus scene's frames read, with real Blender (bpy 5.0.1) under strace.

Run by hand when the corpus or the cases change (it takes about a minute on two cores):

    python tests/resolve/blend_corpus_oracle.py > tests/resolve/data/blend_corpus_expected.json

For each case of ``blend_corpus.CASES`` it builds the bucket (``blend_corpus.build_bucket``;
the ocean and particle caches are then baked for real by Blender over their stand-ins, and the
baked names must be the stand-ins' names), and runs one Blender process per case under
``strace -f``: open the file, then per requested frame ``frame_set`` and a 16x16, 1-sample Cycles
render (a camera is added where the scene has none and the sequencer renders nothing). Every
file below the bucket that Blender opened is a file the case needs; a path Blender tried to open
and did not find is one the case misses. The author's absolute paths are reached through
symlinks (``/home/sybren/workspace``, the font folder), created for the run only.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import blend_corpus

MARK = "/tmp/.jitrender-oracle-mark"
_OPEN = re.compile(r'^\d+\s+openat\(AT_FDCWD, "((?:[^"\\]|\\.)*)", ([A-Z_|]+)(?:, \d+)?\) = (.*)$')


def run_case(scene: Path, frames: list[int]) -> None:
    """In the traced process: open ``scene``, then set and render each frame."""
    import bpy

    _mark("load")
    bpy.ops.wm.open_mainfile(filepath=str(scene), load_ui=False)
    blender_scene = bpy.context.scene
    render = blender_scene.render
    uses_sequencer = bool(
        render.use_sequencer
        and blender_scene.sequence_editor
        and any(s.type != "SOUND" for s in blender_scene.sequence_editor.strips)
    )
    if blender_scene.camera is None and not uses_sequencer:
        camera = bpy.data.objects.new("oracle-camera", bpy.data.cameras.new("oracle-camera"))
        blender_scene.collection.objects.link(camera)
        blender_scene.camera = camera
    render.engine = "CYCLES"
    blender_scene.cycles.device = "CPU"
    blender_scene.cycles.samples = 1
    render.resolution_x = render.resolution_y = 16
    render.resolution_percentage = 100
    if hasattr(render.image_settings, "media_type"):
        render.image_settings.media_type = "IMAGE"
    render.image_settings.file_format = "PNG"
    out = tempfile.mkdtemp(prefix="oracle-render-")
    for frame in frames:
        _mark(f"frame-{frame}")
        blender_scene.frame_set(frame)
        render.filepath = f"{out}/f{frame}.png"
        bpy.ops.render.render(write_still=True)
    _mark("end")


def _mark(phase: str) -> None:
    with contextlib.suppress(OSError):  # it never exists: the attempt is the mark
        open(f"{MARK}/{phase}", "rb").close()


def bake(root: Path) -> None:
    """Bakes the ocean and particle caches for real (over the stand-ins)."""
    import bpy

    ocean = root / blend_corpus.BAT / "ocean_modifier.blend"
    bpy.ops.wm.open_mainfile(filepath=str(ocean), load_ui=False)
    plane = bpy.data.objects["Plane"]
    with bpy.context.temp_override(object=plane, active_object=plane):
        bpy.ops.object.ocean_bake(modifier=plane.modifiers[0].name)
    particle = root / blend_corpus.BAT / "T55539-particles" / "particle.blend"
    bpy.ops.wm.open_mainfile(filepath=str(particle), load_ui=False)
    cube = bpy.data.objects["Cube"]
    cache = cube.particle_systems[0].point_cache
    with bpy.context.temp_override(point_cache=cache, object=cube, active_object=cube):
        bpy.ops.ptcache.free_bake()
        bpy.ops.ptcache.bake(bake=True)


def frames_of(spec: str) -> list[int]:
    out: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        out += list(range(int(first), int(last or first) + 1))
    return out


def trace(root: Path, case: blend_corpus.Case) -> dict[str, object]:
    log = root.parent / f"strace-{case.name}.txt"
    frames = frames_of(case.frames)
    command = [
        "strace", "-f", "-qq", "-s", "4096", "-e", "trace=openat", "-o", str(log),
        sys.executable, __file__, "--case", str(root / case.scene), *map(str, frames),
    ]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    prefixes = [
        (str(root) + "/", ""),
        (blend_corpus.AUTHOR_ROOT + "/", ""),
        (blend_corpus.FONT_ROOT + "/", blend_corpus.FONT_FOLDER + "/"),
    ]
    phase = "before"
    read: dict[str, set[str]] = {}
    missing: dict[str, set[str]] = {}
    for line in log.read_text(errors="replace").splitlines():
        found = _OPEN.match(line)
        if found is None:
            continue
        path = codecs.escape_decode(found[1].encode())[0].decode("utf-8", "surrogateescape")
        if path.startswith(MARK + "/"):
            phase = path[len(MARK) + 1 :]
            continue
        if "O_DIRECTORY" in found[2]:
            continue
        rel = next((new + path[len(old) :] for old, new in prefixes if path.startswith(old)), None)
        if rel is None or rel == case.scene:
            continue
        target = read if not found[3].startswith("-1") else missing
        target.setdefault(rel, set()).add(phase)
    return {
        "scene": case.scene,
        "frames": case.frames,
        "read": {rel: sorted(phases) for rel, phases in sorted(read.items())},
        "not_found": {rel: sorted(phases) for rel, phases in sorted(missing.items())},
    }


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="blend-oracle-"))
    root = work / "bucket"
    blend_corpus.build_bucket(root)
    subprocess.run(
        [sys.executable, __file__, "--bake", str(root)], check=True, timeout=600, stdout=sys.stderr
    )
    baked = sorted(p.name for p in (root / blend_corpus.BAT / "cache_ocean").iterdir())
    assert baked == [f"disp_{n:04d}.exr" for n in range(1, 51)], baked
    points = root / blend_corpus.BAT / "T55539-particles" / "blendcache_particle"
    assert sorted(p.name for p in points.iterdir()) == sorted(
        f"43756265_{n:06d}_01.bphys" for n in blend_corpus.PARTICLE_CACHE_FRAMES
    )
    links = [
        (Path(blend_corpus.AUTHOR_ROOT), root),
        (Path(blend_corpus.FONT_ROOT), root / blend_corpus.FONT_FOLDER),
    ]
    made = []
    for link, target in links:
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
            made.append(link)
    try:
        cases = {case.name: trace(root, case) for case in blend_corpus.CASES}
    finally:
        for link in made:
            link.unlink()
    json.dump(
        {"derived_by": "tests/resolve/blend_corpus_oracle.py, bpy 5.0.1", "cases": cases},
        sys.stdout,
        indent=1,
        ensure_ascii=False,
    )
    print()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        run_case(Path(sys.argv[2]), [int(f) for f in sys.argv[3:]])
    elif sys.argv[1:2] == ["--bake"]:
        bake(Path(sys.argv[2]))
    else:
        main()
