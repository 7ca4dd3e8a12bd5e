"""Path mapping (scene path <-> URL <-> workspace) and frame/UDIM/view tokens."""

from __future__ import annotations

from pathlib import PurePosixPath

import pytest

from jitrender.errors import ConfigError
from jitrender.paths import PathMap, workspace_relpath
from jitrender.sequences import (
    expand_frame,
    expand_frames,
    expand_views,
    format_frames,
    match_udim_tiles,
    parse_frames,
)

SHOW = PathMap.from_pairs(["/mnt/show=gs://show", "P:\\show=gs://show", "/mnt/show/lib=gs://lib"])


@pytest.mark.parametrize(
    ("written", "url"),
    [
        ("/mnt/show/sh010/plate.exr", "gs://show/sh010/plate.exr"),
        ("/mnt/show", "gs://show"),
        ("/mnt/showroom/x.exr", "file:///mnt/showroom/x.exr"),  # component boundary
        ("/mnt/show/lib/tree.usd", "gs://lib/tree.usd"),  # longest prefix wins
        ("P:\\show\\sh010\\plate.exr", "gs://show/sh010/plate.exr"),
        ("p:/SHOW/sh010/plate.exr", "gs://show/sh010/plate.exr"),  # any case, either slash
        ("/mnt/show/a/../b/c.exr", "gs://show/b/c.exr"),
        ("gs://other/x.exr", "gs://other/x.exr"),
        ("/elsewhere/x.exr", "file:///elsewhere/x.exr"),
    ],
)
def test_scene_paths_map_to_urls(written: str, url: str) -> None:
    assert SHOW.to_url(written) == url


def test_relative_and_blender_relative_paths() -> None:
    folder = "gs://show/sh010/comp"
    assert SHOW.to_url("tex/a.png", folder) == "gs://show/sh010/comp/tex/a.png"
    assert SHOW.to_url("../plates/p.exr", folder) == "gs://show/sh010/plates/p.exr"
    assert SHOW.to_url("//tex/a.png", folder, blender=True) == "gs://show/sh010/comp/tex/a.png"
    with pytest.raises(ValueError, match="nothing to be relative to"):
        SHOW.to_url("tex/a.png")


def test_reverse_mapping_for_the_renderer() -> None:
    assert SHOW.to_scene_path("gs://lib/tree.usd") == "/mnt/show/lib/tree.usd"
    assert SHOW.to_scene_path("gs://nowhere/x") is None


def test_openjd_rules_are_accepted() -> None:
    windows = {"source_path_format": "WINDOWS", "source_path": "Z:\\assets"}
    posix = {"source_path_format": "POSIX", "source_path": "/assets"}
    document = {
        "version": "pathmapping-1.0",
        "path_mapping_rules": [
            {**windows, "destination_path": "gs://a"},
            {**posix, "destination_path": "/data/a"},
        ],
    }
    rules = PathMap.from_openjd(document)
    assert rules.to_url("z:\\Assets\\t.png") == "gs://a/t.png"
    assert rules.to_url("/assets/t.png") == "file:///data/a/t.png"
    assert not PathMap.from_openjd({})  # a farm with no rules writes {}
    with pytest.raises(ConfigError, match="source_path_format"):
        PathMap.from_openjd({"path_mapping_rules": [{"source_path": "/a", "destination_path": "/b",
                                                     "source_path_format": "VMS"}]})  # fmt: skip
    with pytest.raises(ConfigError, match="FROM=TO"):
        PathMap.from_pairs(["/mnt/show"])


def test_workspace_mirrors_bucket_layout() -> None:
    assert workspace_relpath("gs://show/sh010/a.exr") == PurePosixPath("gs/show/sh010/a.exr")
    assert workspace_relpath("file:///data/b.exr") == PurePosixPath("file/_/data/b.exr")


@pytest.mark.parametrize(
    ("pattern", "frame", "expected"),
    [
        ("p.####.exr", 7, "p.0007.exr"),
        ("p.#.exr", 1001, "p.1001.exr"),  # one digit per '#', as Nuke counts
        ("p.@@@.exr", 7, "p.007.exr"),
        ("p.%04d.exr", 7, "p.0007.exr"),
        ("p.%d.exr", 7, "p.7.exr"),
        ("p.$F4.exr", 7, "p.0007.exr"),
        ("p.$F.exr", 7, "p.7.exr"),
        ("p.{frame:04d}.exr", 7, "p.0007.exr"),
        ("p.####.exr", -3, "p.-003.exr"),
    ],
)
def test_frame_tokens(pattern: str, frame: int, expected: str) -> None:
    assert expand_frame(pattern, frame) == expected


def test_expansion_covers_only_requested_frames() -> None:
    expanded = expand_frames("p.####.exr", parse_frames("11-20"))
    assert sorted(expanded) == [f"p.{f:04d}.exr" for f in range(11, 21)]
    assert expand_frames("still.exr", [1, 2, 3]) == {"still.exr": [1, 2, 3]}


def test_udim_and_views() -> None:
    listing = ["t.1001.png", "t.1002.png", "t.1011.png", "t.1001.png.bak", "u.1003.png"]
    assert match_udim_tiles("t.<UDIM>.png", listing) == ["t.1001.png", "t.1002.png", "t.1011.png"]
    uv = ["t_u1_v1.png", "t_u2_v1.png", "t_u1.png"]
    assert match_udim_tiles("t_<UVTILE>.png", uv) == ["t_u1_v1.png", "t_u2_v1.png"]
    assert expand_views("eye_%V.%v.exr", ["left", "right"]) == ["eye_left.l.exr", "eye_right.r.exr"]


def test_frame_ranges() -> None:
    assert parse_frames("1-10x3") == [1, 4, 7, 10]
    assert parse_frames("1,5,9-12") == [1, 5, 9, 10, 11, 12]
    assert parse_frames(1001) == [1001]
    assert format_frames([3, 1, 2, 5]) == "1-3,5"
    for bad in ("", "a-b", "10-x"):
        with pytest.raises(ConfigError):
            parse_frames(bad)
