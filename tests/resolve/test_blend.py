"""The Blender resolver against .blend files made by real Blender (bpy, in a subprocess)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jitrender.deps import Dependencies
from jitrender.errors import ExitCode, SceneParseError
from jitrender.paths import PathMap, file_url, local_path_of
from jitrender.resolve import resolver_for
from jitrender.resolve.base import ResolveContext
from jitrender.resolve.blend_frames import (
    STRIP_REVERSE_FRAMES,
    STRIP_TYPE_EFFECT,
    STRIP_TYPE_IMAGE,
    STRIP_TYPE_META,
    STRIP_TYPE_SPEED,
    VOLUME_PING_PONG,
    VOLUME_REPEAT,
    ImageUser,
    SequencerStrip,
    StripTiming,
    sequence_pattern,
    strips_rendered_at,
    volume_file_frame,
)
from jitrender.storage import LocalStore

pytestmark = pytest.mark.blender

SCRIPT = Path(__file__).with_name("blend_scenes.py")


@pytest.fixture(scope="module")
def bucket(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """Every scene the tests use, built by one bpy process; and what Blender reported."""
    pytest.importorskip("bpy")
    root = tmp_path_factory.mktemp("blend") / "bucket"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads((root / "blender.json").read_text())


@pytest.fixture(scope="module")
def root(bucket: tuple[Path, dict[str, Any]]) -> Path:
    """The folder acting as the bucket, for the tests that need no Blender report."""
    return bucket[0]


def resolve(root: Path, scene: str, frames: list[int] | range) -> Dependencies:
    url = file_url(root / scene)
    store = LocalStore()
    ctx = ResolveContext(
        url,
        local_path_of(url),
        tuple(frames),
        PathMap(),
        lambda prefix, recursive: store.list(prefix, recursive=recursive),
        local_path_of,
    )
    name, resolver = resolver_for("auto", url)
    assert name == "blender"
    return resolver(ctx)


def by_source(deps: Dependencies, source: str) -> dict[str, tuple[int, ...] | None]:
    return {d.url: d.frames for d in deps.deps if d.source == source}


SEQUENCE_SOURCES = {"IMAGE:seqA", "IMAGE:seqB", "IMAGE:seqC", "VOLUME:smoke"}


def test_every_file_blender_reports_is_a_dependency_and_nothing_else(
    bucket: tuple[Path, dict[str, Any]],
) -> None:
    root, blender = bucket
    deps = resolve(root, "main.blend", [1])
    expected: set[str] = set()
    for key, paths in blender["main"]["path_map"].items():
        if key in SEQUENCE_SOURCES or key.startswith("MOVIECLIP:"):
            continue
        for path in paths:
            if "<UDIM>" in path:
                expected |= {path.replace("<UDIM>", t) for t in ("1001", "1002", "1011")}
            else:
                expected.add(path)
    got = {local_path_of(d.url).as_posix() for d in deps.deps if d.frames is None}
    assert got == expected
    assert deps.unresolved == []
    # sound, font, cache file and both libraries are among them
    for rel in ("audio/music.wav", "fonts/title.woff2", "cache/anim.abc", "lib/deep.blend"):
        assert (root / rel).as_posix() in got


def test_image_sequences_load_the_files_blender_loads_per_frame(
    bucket: tuple[Path, dict[str, Any]],
) -> None:
    """Offset, start frame, cyclic and clamping, checked against Blender's own frame choice.

    A frame whose file Blender would not find (before the start of a non-cyclic sequence)
    needs no file; a frame clamped to the last file needs that file."""
    root, blender = bucket
    sequences: dict[str, dict[str, str]] = blender["main"]["sequences"]
    frames = sorted(int(f) for f in sequences["seqA"])
    deps = resolve(root, "main.blend", frames)
    for name, per_frame in sequences.items():
        expected: dict[str, set[int]] = {}
        for frame, path in per_frame.items():
            if Path(path).exists():
                expected.setdefault(file_url(path), set()).add(int(frame))
        got = by_source(deps, f"IM:{name}")
        assert {url: set(f or ()) for url, f in got.items()} == expected, name
    # the non-cyclic sequence clamps after its 10 frames: frame 101 needs c.0010.png
    assert by_source(deps, "IM:seqC")[file_url(root / "seqc/c.0010.png")] == (
        10, *range(11, 31), 45, 99, 100, 101
    )  # fmt: skip
    assert file_url(root / "seq/tex.0000.png") not in by_source(deps, "IM:seqA")


def test_ten_frames_of_a_hundred_frame_sequence_list_exactly_ten_files(
    root: Path,
) -> None:
    deps = resolve(root, "main.blend", range(41, 51))
    assert by_source(deps, "IM:seqA") == {
        file_url(root / f"seq/tex.{n:04d}.png"): (n,) for n in range(41, 51)
    }


def test_udim_lists_the_tiles_that_exist_and_no_others(
    root: Path,
) -> None:
    deps = resolve(root, "main.blend", [1])
    assert set(by_source(deps, "IM:skin")) == {
        file_url(root / f"udim/skin.{tile}.png") for tile in (1001, 1002, 1011)
    }


def test_linked_library_is_followed_recursively_but_only_for_what_is_linked(
    root: Path,
) -> None:
    urls = {d.url for d in resolve(root, "main.blend", [1]).deps}
    for rel in ("lib/props.blend", "lib/tex/props_color.png", "lib/deep.blend"):
        assert file_url(root / rel) in urls
    assert file_url(root / "lib/deep_tex/deep.png") in urls
    assert file_url(root / "lib/tex/unused.png") not in urls


def test_libraries_linking_each_other_resolve_without_looping(
    root: Path,
) -> None:
    urls = {d.url for d in resolve(root, "cycle/a.blend", [1]).deps}
    assert urls == {file_url(root / rel) for rel in ("cycle/a.png", "cycle/b.png", "cycle/b.blend")}


def test_volume_sequence_in_clip_mode_needs_files_only_inside_its_range(
    root: Path,
) -> None:
    deps = resolve(root, "main.blend", range(48, 53))
    assert by_source(deps, "VO:smoke") == {
        file_url(root / f"vdb/smoke.{n:04d}.vdb"): (n,) for n in (48, 49, 50)
    }


def test_movie_clip_sequence_follows_start_frame_and_offset(
    root: Path,
) -> None:
    # start frame 3, offset 2, first file 0001: scene frame f loads file f - 3 + 2 + 1
    deps = resolve(root, "main.blend", [0, 1, 5])
    assert by_source(deps, "MC:plate.0001.png") == {
        file_url(root / "clips/plate.0001.png"): (1,),
        file_url(root / "clips/plate.0005.png"): (5,),
    }


def test_missing_library_is_listed_without_failing_the_resolve(root: Path, tmp_path: Path) -> None:
    shutil.copyfile(root / "main.blend", tmp_path / "main.blend")
    urls = {d.url for d in resolve(tmp_path, "main.blend", [1]).deps}
    assert file_url(tmp_path / "lib/props.blend") in urls
    assert file_url(tmp_path / "lib/tex/props_color.png") not in urls


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_blend_is_a_one_line_scene_parse_error(
    root: Path, tmp_path: Path, keep: float
) -> None:
    data = (root / "main.blend").read_bytes()
    broken = tmp_path / "broken.blend"
    broken.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(SceneParseError) as caught:
        resolve(tmp_path, "broken.blend", [1])
    assert caught.value.exit_code == ExitCode.DATA
    assert "broken.blend" in caught.value.message
    assert "\n" not in caught.value.message


def test_text_file_named_blend_is_a_scene_parse_error(tmp_path: Path) -> None:
    (tmp_path / "notes.blend").write_text("not a blend file\n")
    with pytest.raises(SceneParseError, match=r"notes\.blend"):
        resolve(tmp_path, "notes.blend", [1])


def test_sequence_number_is_the_last_digit_run_of_the_file_name() -> None:
    assert sequence_pattern("//seq/v2/tex.0001.png") == ("//seq/v2/tex.####.png", 1)
    assert sequence_pattern("//a/shot10_0100.exr") == ("//a/shot10_####.exr", 100)
    assert sequence_pattern("//a/plate.png") is None


def test_image_user_frame_math_matches_blender_formula() -> None:
    cyclic = ImageUser(frames=20, start=5, offset=10, cyclic=True)
    assert [cyclic.file_frame(f)[0] for f in (1, 5, 24, 25)] == [27, 11, 30, 11]
    clamped = ImageUser(frames=10, start=1, offset=0, cyclic=False)
    assert clamped.file_frame(15) == (10, False)
    assert ImageUser(frames=0, start=1, offset=5, cyclic=False).file_frame(3) == (0, False)


def test_volume_repeat_and_ping_pong_modes() -> None:
    def frames(mode: int) -> list[int | None]:
        return [volume_file_frame(f, start=1, duration=3, offset=0, mode=mode) for f in range(1, 8)]

    assert frames(VOLUME_REPEAT) == [1, 2, 3, 1, 2, 3, 1]
    assert frames(VOLUME_PING_PONG) == [1, 2, 3, 2, 1, 2, 3]


VSE_FRAMES = list(range(0, 46))


def sequencer_files_per_frame(deps: Dependencies, *names: str) -> dict[int, set[str]]:
    """Frame -> local paths the given strips (all image strips if none named) need there."""
    sources = {f"SC:Scene/{name}" for name in names}
    out: dict[int, set[str]] = {}
    for dep in deps.deps:
        if not dep.source.startswith("SC:") or (names and dep.source not in sources):
            continue
        if dep.source in ("SC:Scene/movie", "SC:Scene/music"):
            continue
        assert dep.frames is not None, dep
        for frame in dep.frames:
            out.setdefault(frame, set()).add(local_path_of(dep.url).as_posix())
    return out


def test_sequencer_image_strips_need_the_element_blender_renders_on_each_frame(
    bucket: tuple[Path, dict[str, Any]],
) -> None:
    """Start, handles, holds, reverse, strobe, animation offsets and a trimmed, held meta strip,
    against the frames Blender rendered (each element has its own colour): no file missing,
    none extra; muted strips and strips on a muted channel need nothing."""
    root, blender = bucket
    deps = resolve(root, "vse.blend", VSE_FRAMES)
    rendered = blender["vse"]["rendered"]
    expected = {int(frame): {path} for frame, path in rendered.items() if path}
    assert sequencer_files_per_frame(deps) == expected
    assert deps.unresolved == []
    # the meta strip holds its last inner frame: frames 36-40 all show n08
    assert by_source(deps, "SC:Scene/nested")[file_url(root / "vse/nested/n08.png")] == (
        36, 37, 38, 39, 40
    )  # fmt: skip


def test_sequencer_elements_match_blender_strip_elem_from_frame(
    bucket: tuple[Path, dict[str, Any]],
) -> None:
    root, blender = bucket
    deps = resolve(root, "vse.blend", VSE_FRAMES)
    for name in ("plate", "reverse"):
        expected = {int(f): {path} for f, path in blender["vse"]["elements"][name].items()}
        assert sequencer_files_per_frame(deps, name) == expected, name
    assert sequencer_files_per_frame(deps, "muted", "muted_channel") == {}


def test_frames_outside_every_strip_need_no_sequencer_file(
    root: Path,
) -> None:
    deps = resolve(root, "vse.blend", [0, 1, 2, 3, 4, 24, 45])
    assert sequencer_files_per_frame(deps) == {}
    assert {d.source for d in deps.deps if d.source.startswith("SC:")} == {"SC:Scene/music"}


def test_ten_frames_of_an_image_strip_list_only_their_elements(
    root: Path,
) -> None:
    deps = resolve(root, "vse.blend", [7, 8])
    assert by_source(deps, "SC:Scene/plate") == {
        file_url(root / "vse/plate/plate_t.png"): (7,),
        file_url(root / "vse/plate/plate_y.png"): (8,),
    }


def test_movie_strip_needs_its_file_on_the_frames_it_plays_and_sound_strips_whole(
    bucket: tuple[Path, dict[str, Any]],
) -> None:
    root, blender = bucket
    deps = resolve(root, "vse.blend", VSE_FRAMES)
    start, end = blender["vse"]["movie"]
    assert by_source(deps, "SC:Scene/movie") == {
        file_url(root / "vse/movie/shot.mov"): tuple(range(start, end))
    }
    assert by_source(deps, "SC:Scene/music") == {file_url(root / "vse/audio/music.wav"): None}
    assert by_source(deps, "SC:Scene/quiet") == {}


def _strip(kind: int, start: float, length: int, **fields: Any) -> SequencerStrip:
    files = tuple(f"//e{n}.png" for n in range(length)) if kind == STRIP_TYPE_IMAGE else ()
    timing = StripTiming(start=start, length=length, is_image=kind == STRIP_TYPE_IMAGE)
    return SequencerStrip(fields.pop("name", "s"), kind, 1, False, timing, files, **fields)


def test_an_effect_renders_its_muted_input_and_a_speed_effect_any_of_its_frames() -> None:
    muted = _strip(STRIP_TYPE_IMAGE, 1, 10, name="muted")
    muted = SequencerStrip(muted.name, muted.kind, 1, True, muted.timing, muted.files)
    blur = _strip(STRIP_TYPE_EFFECT + 5, 1, 10, inputs=(0,))
    assert strips_rendered_at((muted, blur), 4) == [(muted, 4)]
    assert strips_rendered_at((muted,), 4) == []
    speed = _strip(STRIP_TYPE_SPEED, 1, 10, inputs=(0,))
    assert strips_rendered_at((muted, speed), 4) == [(muted, None)]


def test_retimed_strip_may_show_any_of_its_files_from_its_left_handle_on() -> None:
    retimed = _strip(STRIP_TYPE_IMAGE, 10, 10, retimed=True)
    assert strips_rendered_at((retimed,), 9) == []
    assert strips_rendered_at((retimed,), 30) == [(retimed, None)]


def test_meta_strip_renders_its_strips_at_its_own_start_plus_frame_index() -> None:
    inner = _strip(STRIP_TYPE_IMAGE, 1, 10)
    meta = _strip(STRIP_TYPE_META, 1, 10, strips=(inner,))
    assert strips_rendered_at((meta,), 5) == [(inner, 5)]
    assert strips_rendered_at((meta,), 11) == []  # past the meta's right handle


def test_strip_frame_math_reverse_strobe_and_animation_offset() -> None:
    # Blender 5.0: 10 files, offsets 1/1 (len 8), start 14, reverse, strobe 2 (see vse.blend)
    timing = StripTiming(
        start=14, length=8, anim_start_offset=1, flag=STRIP_REVERSE_FRAMES, strobe=2.0
    )
    assert [timing.element_index(f) for f in (12, 15, 16, 18, 21, 23)] == [7, 7, 5, 3, 1, 1]
    assert (timing.left_handle(), timing.right_handle()) == (14, 22)
