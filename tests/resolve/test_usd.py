"""The USD resolver against layers written with usd-core, in a folder bucket and in a real
GCS API server (fake-gcs-server)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from jitrender.deps import Dependencies
from jitrender.errors import ExitCode, MissingDependencyError, SceneParseError
from jitrender.paths import PathMap, local_path_of, url_basename
from jitrender.resolve import resolver_for
from jitrender.resolve.base import ResolveContext
from jitrender.storage import GCSStore, LocalStore, Store
from tests.conftest import put_object

Sdf = pytest.importorskip("pxr.Sdf")
UsdUtils = pytest.importorskip("pxr.UsdUtils")

ROOT_LAYER = b"""#usda 1.0
(
    subLayers = [@./layers/anim.usda@]
)

def Xform "World"
{
    def Xform "Geo" (
        prepend references = @./assets/chair.usdc@</Chair>
    )
    {
    }

    def Xform "Set" (
        prepend payload = @set.usda@
    )
    {
    }

    def Xform "Gone" (
        prepend references = @./assets/gone.usda@
    )
    {
    }

    def Shader "Wood"
    {
        asset inputs:file = @./tex/wood.png@
    }

    def Shader "Skin"
    {
        asset inputs:file = @tex/skin.<UDIM>.png@
    }

    def Shader "Flip"
    {
        asset inputs:file.timeSamples = {
            1: @./tex/a1.png@,
            5: @./tex/a5.png@,
        }
    }
}
"""

ANIM_LAYER = b"""#usda 1.0

def Xform "Clipped" (
    clips = {
        dictionary default = {
            asset[] assetPaths = [@../clips/c0.usd@, @../clips/c1.usd@, @../clips/c2.usd@]
            double2[] active = [(1, 0), (11, 1), (21, 2)]
            double2[] times = [(1, 1), (30, 30)]
            asset manifestAssetPath = @../clips/manifest.usda@
        }
    }
)
{
}

def Xform "Sim" (
    clips = {
        dictionary default = {
            asset templateAssetPath = @../sim/sim.###.usd@
            double templateStartTime = 1
            double templateEndTime = 100
            double templateStride = 1
        }
    }
)
{
    def Shader "Sub"
    {
        asset inputs:file = @../tex/sub.png@
    }
}
"""

SET_LAYER = b"""#usda 1.0

def Xform "Set" (
    prepend references = @./root.usda@</World/Wood>
)
{
}
"""


def chair_layer() -> bytes:
    """A binary (usdc) layer with a texture next to it, written through Sdf."""
    layer = Sdf.Layer.CreateAnonymous(".usda")
    prim = Sdf.PrimSpec(layer, "Chair", Sdf.SpecifierDef, "Xform")
    attr = Sdf.AttributeSpec(prim, "inputs:file", Sdf.ValueTypeNames.Asset)
    attr.default = Sdf.AssetPath("./chair_tex.png")
    return layer.ExportToString().encode()


def build_scene(bucket: str, tmp: Path) -> None:
    put_object(f"{bucket}/root.usda", ROOT_LAYER)
    put_object(f"{bucket}/layers/anim.usda", ANIM_LAYER)
    put_object(f"{bucket}/set.usda", SET_LAYER)
    crate = tmp / "chair.usdc"
    text = Sdf.Layer.CreateAnonymous(".usda")
    text.ImportFromString(chair_layer().decode())
    text.Export(str(crate))
    put_object(f"{bucket}/assets/chair.usdc", crate.read_bytes())
    for name in (
        "assets/chair_tex.png",
        "tex/wood.png",
        "tex/skin.1001.png",
        "tex/skin.1002.png",
        "tex/skin.1001.tx",
        "tex/skinny.1003.png",
        "tex/a1.png",
        "tex/a5.png",
        "tex/sub.png",
        "clips/c0.usd",
        "clips/c1.usd",
        "clips/c2.usd",
        "clips/manifest.usda",
    ):
        put_object(f"{bucket}/{name}", b"x")
    for frame in range(1, 101):
        put_object(f"{bucket}/sim/sim.{frame:03d}.usd", b"x")


def context(
    store: Store, scene_url: str, frames: list[int] | range, fetch: Callable[[str], Path]
) -> ResolveContext:
    return ResolveContext(
        scene_url,
        fetch(scene_url),
        tuple(frames),
        PathMap(),
        lambda prefix, recursive: store.list(prefix, recursive=recursive),
        fetch,
    )


def resolve_local(scene_url: str, frames: list[int] | range) -> Dependencies:
    ctx = context(LocalStore(), scene_url, frames, local_path_of)
    name, resolver = resolver_for("auto", scene_url)
    assert name == "usd"
    return resolver(ctx)


def expected_for_frames_9_to_12(bucket: str) -> dict[str, tuple[int, ...] | None]:
    every = None
    return {
        f"{bucket}/layers/anim.usda": every,
        f"{bucket}/assets/chair.usdc": every,
        f"{bucket}/assets/chair_tex.png": every,
        f"{bucket}/set.usda": every,
        f"{bucket}/root.usda": every,  # set.usda references back into the root layer
        f"{bucket}/assets/gone.usda": every,
        f"{bucket}/tex/wood.png": every,
        f"{bucket}/tex/skin.1001.png": every,
        f"{bucket}/tex/skin.1002.png": every,
        f"{bucket}/tex/a5.png": (9, 10, 11, 12),
        f"{bucket}/tex/sub.png": every,
        f"{bucket}/clips/manifest.usda": every,
        f"{bucket}/clips/c0.usd": (9, 10),
        f"{bucket}/clips/c1.usd": (11, 12),
        **{f"{bucket}/sim/sim.{f:03d}.usd": (f,) for f in range(9, 13)},
    }


def test_layers_arcs_textures_udims_and_clips_for_exactly_the_frames(
    local_bucket: str, tmp_path: Path
) -> None:
    build_scene(local_bucket, tmp_path)
    deps = resolve_local(f"{local_bucket}/root.usda", range(9, 13))
    assert {d.url: d.frames for d in deps.deps} == expected_for_frames_9_to_12(local_bucket)
    assert deps.unresolved == []


def test_missing_reference_is_reported_missing(local_bucket: str, tmp_path: Path) -> None:
    build_scene(local_bucket, tmp_path)
    deps = resolve_local(f"{local_bucket}/root.usda", [1])
    assert [(d.url, d.source) for d in deps.missing] == [
        (f"{local_bucket}/assets/gone.usda", "/World/Gone.references")
    ]


def test_held_time_samples_and_clip_before_first_activation(
    local_bucket: str, tmp_path: Path
) -> None:
    build_scene(local_bucket, tmp_path)
    deps = resolve_local(f"{local_bucket}/root.usda", [0, 4, 5, 25])
    frames = {d.url: d.frames for d in deps.deps}
    assert frames[f"{local_bucket}/tex/a1.png"] == (0, 4)
    assert frames[f"{local_bucket}/tex/a5.png"] == (5, 25)
    assert frames[f"{local_bucket}/clips/c0.usd"] == (0, 4, 5)
    assert frames[f"{local_bucket}/clips/c2.usd"] == (25,)
    assert f"{local_bucket}/clips/c1.usd" not in frames
    # template clips before the template's start use the first clip
    assert frames[f"{local_bucket}/sim/sim.001.usd"] == (0,)


def test_usdz_package_is_one_dependency(local_bucket: str, tmp_path: Path) -> None:
    work = tmp_path / "pkg"
    work.mkdir()
    (work / "inside.png").write_bytes(b"x")
    (work / "prop.usda").write_text(
        '#usda 1.0\ndef Shader "T"\n{\n    asset inputs:file = @inside.png@\n}\n'
    )
    package = tmp_path / "prop.usdz"
    assert UsdUtils.CreateNewUsdzPackage(Sdf.AssetPath(str(work / "prop.usda")), str(package))
    put_object(f"{local_bucket}/props/prop.usdz", package.read_bytes())
    put_object(
        f"{local_bucket}/shot.usda",
        b'#usda 1.0\ndef "Prop" (\n    references = @./props/prop.usdz@\n)\n{\n}\n',
    )
    deps = resolve_local(f"{local_bucket}/shot.usda", [1])
    assert [d.url for d in deps.deps] == [f"{local_bucket}/props/prop.usdz"]
    # resolving the package itself lists nothing beyond it
    assert resolve_local(f"{local_bucket}/props/prop.usdz", [1]).deps == []


def test_malformed_layer_is_a_one_line_scene_parse_error(local_bucket: str) -> None:
    put_object(f"{local_bucket}/bad.usda", b'#usda 1.0\ndef Xform "A" {\n    float x = \n')
    with pytest.raises(SceneParseError) as caught:
        resolve_local(f"{local_bucket}/bad.usda", [1])
    assert caught.value.exit_code == ExitCode.DATA
    assert "bad.usda" in caught.value.message
    assert "\n" not in caught.value.message


def test_malformed_referenced_layer_names_that_layer(local_bucket: str) -> None:
    put_object(f"{local_bucket}/junk.usdc", b"PXR-USDC garbage")
    put_object(
        f"{local_bucket}/top.usda", b'#usda 1.0\ndef "A" (\n    references = @junk.usdc@\n)\n{\n}\n'
    )
    with pytest.raises(SceneParseError, match=r"junk\.usdc"):
        resolve_local(f"{local_bucket}/top.usda", [1])


def test_gcs_bucket_lists_and_fetches_through_gcsstore(gcs_bucket: str, tmp_path: Path) -> None:
    build_scene(gcs_bucket, tmp_path)
    store = GCSStore()
    fetched = tmp_path / "fetched"

    def fetch(url: str) -> Path:
        info = store.stat(url)
        if info is None:
            raise MissingDependencyError(url)
        target = fetched / str(abs(hash(url))) / url_basename(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as sink:
            store.download(info, sink)
        return target

    ctx = context(store, f"{gcs_bucket}/root.usda", range(9, 13), fetch)
    _, resolver = resolver_for("usd", ctx.scene_url)
    deps = resolver(ctx)
    assert {d.url: d.frames for d in deps.deps} == expected_for_frames_9_to_12(gcs_bucket)
    assert [d.url for d in deps.missing] == [f"{gcs_bucket}/assets/gone.usda"]
    shutil.rmtree(fetched)
