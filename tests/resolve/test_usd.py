"""The USD resolver through `jitrender deps`, on small layers written here: broken arcs are
listed as missing and never abort the resolve; a malformed scene is one line and exit 65.
(What real stages read, frame by frame, is proven on the public corpus in
test_usd_corpus.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import put_object

pytest.importorskip("pxr.Usd")

ROOT = Path(__file__).resolve().parents[2]

ROOT_LAYER = b"""#usda 1.0
(
    subLayers = [@./layers/gone_sub.usda@]
)

def Xform "World" (
    prepend references = @./assets/chair.usda@
)
{
    def Xform "Gone" (
        prepend references = @./assets/gone.usda@
    )
    {
    }

    def Scope "Look" (
        prepend references = @./looks/look.mtlx@</MaterialX>
    )
    {
    }

    def Shader "Skin"
    {
        asset inputs:file = @tex/skin.<UDIM>.png@
    }
}
"""

CHAIR = b"""#usda 1.0
(
    defaultPrim = "Chair"
)

def Xform "Chair"
{
    asset inputs:file = @./chair.png@
}
"""

LOOK = b"""<?xml version="1.0"?>
<materialx version="1.38" fileprefix="../tex/">
  <nodegraph name="NG">
    <image name="base" type="color3">
      <input name="file" type="filename" value="base.png" />
    </image>
  </nodegraph>
</materialx>
"""


def deps(scene_url: str, frames: str, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "jitrender.cli", "deps", scene_url, "--frames", frames]
    return subprocess.run(
        [*argv, "--json", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def deps_report(scene_url: str, frames: str, *extra: str) -> dict[str, Any]:
    """``jitrender deps --json``'s document, the command having ended 0."""
    proc = deps(scene_url, frames, *extra)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


@pytest.fixture(params=["file", "gs"])
def bucket(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "file":
        root = tmp_path / "bucket"
        root.mkdir()
        return f"file://{root}"
    return str(request.getfixturevalue("gcs_bucket"))


def test_broken_arcs_are_missing_and_the_rest_resolves(bucket: str) -> None:
    put_object(f"{bucket}/shot/root.usda", ROOT_LAYER)
    put_object(f"{bucket}/shot/assets/chair.usda", CHAIR)
    put_object(f"{bucket}/shot/assets/chair.png", b"png")
    put_object(f"{bucket}/shot/looks/look.mtlx", LOOK)
    put_object(f"{bucket}/shot/tex/base.png", b"png")
    for tile in ("1001", "1002", "1101"):
        put_object(f"{bucket}/shot/tex/skin.{tile}.png", b"png")
    report = deps_report(f"{bucket}/shot/root.usda", "1-2")
    found = {d["url"][len(bucket) + 1 :]: d["exists"] for d in report["deps"]}
    assert found == {
        "shot/assets/chair.usda": True,
        "shot/assets/chair.png": True,
        "shot/assets/gone.usda": False,
        "shot/layers/gone_sub.usda": False,
        "shot/looks/look.mtlx": True,
        "shot/tex/base.png": True,
        "shot/tex/skin.1001.png": True,
        "shot/tex/skin.1002.png": True,
    }
    assert {Path(d["url"]).name for d in report["missing"]} == {"gone.usda", "gone_sub.usda"}
    assert report["unresolved"] == []


def test_a_malformed_scene_is_one_line_and_exit_65(tmp_path: Path) -> None:
    scene = tmp_path / "bucket" / "bad.usda"
    scene.parent.mkdir()
    scene.write_bytes(b'#usda 1.0\ndef Xform "A" {\n  asset x = \n')
    proc = deps(f"file://{scene}", "1")
    assert proc.returncode == 65
    assert "bad.usda" in proc.stderr and "Traceback" not in proc.stderr


SHOT_ON_SHOW = b"""#usda 1.0
(
    subLayers = [@/mnt/show/seq/lighting.usda@]
)

def Xform "World" (
    prepend references = @/mnt/show/assets/car/car.usda@
)
{
}
"""

LIGHTING = b"""#usda 1.0
def DomeLight "Dome"
{
    asset inputs:texture:file = @../tex/sky.exr@
}
"""

CAR = b"""#usda 1.0
(
    defaultPrim = "Car"
)

def Xform "Car" (
    prepend payload = @./geo/body.usdc@
)
{
    asset paint = @./tex/paint.<UDIM>.png@
}
"""

BODY = b"""#usda 1.0
(
    defaultPrim = "Body"
)

def Mesh "Body"
{
    asset decal = @../tex/decal.png@
}
"""


def test_layers_named_by_mapped_absolute_paths_are_composed_and_their_own_files_found(
    bucket: str, tmp_path: Path
) -> None:
    """A shot authored on a show mount (``/mnt/show/...``, mapped by ``--path-map`` to the
    bucket): its sublayer and reference are fetched and composed as if the mount were there,
    so what those layers name in turn (a payload, textures, UDIM tiles, each relative to its
    own layer) is found. Before, only the two layers were listed: composition could not open
    ``/mnt/show`` on the node, and nothing below them was read."""
    show = f"{bucket}/show"
    put_object(f"{bucket}/shots/sh010.usda", SHOT_ON_SHOW)
    put_object(f"{show}/seq/lighting.usda", LIGHTING)
    put_object(f"{show}/tex/sky.exr", b"exr")
    put_object(f"{show}/assets/car/car.usda", CAR)
    put_object(f"{show}/assets/car/geo/body.usdc", _crate(BODY, tmp_path))
    put_object(f"{show}/assets/car/tex/decal.png", b"png")
    for tile in ("1001", "1002"):
        put_object(f"{show}/assets/car/tex/paint.{tile}.png", b"png")
    report = deps_report(f"{bucket}/shots/sh010.usda", "1", "--path-map", f"/mnt/show={show}")
    found = {d["url"][len(show) + 1 :]: d["exists"] for d in report["deps"]}
    assert found == {
        "seq/lighting.usda": True,
        "tex/sky.exr": True,
        "assets/car/car.usda": True,
        "assets/car/geo/body.usdc": True,
        "assets/car/tex/decal.png": True,
        "assets/car/tex/paint.1001.png": True,
        "assets/car/tex/paint.1002.png": True,
    }, report
    assert report["missing"] == [] and report["unresolved"] == []


def _crate(text: bytes, folder: Path) -> bytes:
    """``text`` (usda) as a binary crate layer, written by usd-core."""
    from pxr import Sdf

    layer = Sdf.Layer.CreateAnonymous(".usda")
    layer.ImportFromString(text.decode())
    path = folder / "crate.usdc"
    layer.Export(str(path))
    return path.read_bytes()


CLIPPED_SHOTS = {
    "explicit": b"""#usda 1.0
def Shader "Anim" (
    clips = {
        dictionary default = {
            asset[] assetPaths = [
                @/mnt/show/clips/c.1.usda@, @/mnt/show/clips/c.2.usda@, @/mnt/show/clips/c.3.usda@
            ]
            double2[] active = [(1, 0), (2, 1), (3, 2)]
            double2[] times = [(1, 1), (2, 2), (3, 3)]
            asset manifestAssetPath = @/mnt/show/clips/manifest.usda@
            string primPath = "/Anim"
        }
    }
)
{
    asset inputs:file
}
""",
    "template": b"""#usda 1.0
def Shader "Anim" (
    clips = {
        dictionary default = {
            asset templateAssetPath = @/mnt/show/clips/c.#.usda@
            double templateStartTime = 1
            double templateEndTime = 3
            double templateStride = 1
            asset manifestAssetPath = @/mnt/show/clips/manifest.usda@
            string primPath = "/Anim"
        }
    }
)
{
    asset inputs:file
}
""",
}

CLIP_MANIFEST = b"""#usda 1.0
over "Anim"
{
    asset inputs:file
}
"""


@pytest.mark.parametrize("kind", sorted(CLIPPED_SHOTS))
def test_value_clips_named_by_mapped_absolute_paths_give_their_values_per_frame(
    bucket: str, kind: str
) -> None:
    """Value clips on a show mount (``/mnt/show/clips/c.N.usda``, mapped to the bucket), as
    explicit paths or a template: each frame's clip is fetched and read, so the texture it
    names for that frame, relative to the clip, is that frame's dependency. Before, the clips
    were listed but USD could not open them on the node, and no texture was found."""
    show = f"{bucket}/show"
    put_object(f"{bucket}/shots/sh020.usda", CLIPPED_SHOTS[kind])
    put_object(f"{show}/clips/manifest.usda", CLIP_MANIFEST)
    for i in (1, 2, 3):
        clip = '#usda 1.0\nover "Anim"\n{\n    asset inputs:file.timeSamples = {\n'
        clip += f"        {i}: @../tex/frame.{i}.png@,\n    }}\n}}\n"
        put_object(f"{show}/clips/c.{i}.usda", clip.encode())
        put_object(f"{show}/tex/frame.{i}.png", b"png")
    report = deps_report(f"{bucket}/shots/sh020.usda", "2-3", "--path-map", f"/mnt/show={show}")
    found = {d["url"][len(show) + 1 :]: (d["frames"], d["exists"]) for d in report["deps"]}
    assert found == {
        "clips/manifest.usda": (None, True),
        "clips/c.2.usda": ([2], True),
        "clips/c.3.usda": ([3], True),
        "tex/frame.2.png": ([2], True),
        "tex/frame.3.png": ([3], True),
    }, report
    assert report["missing"] == [] and report["unresolved"] == []
