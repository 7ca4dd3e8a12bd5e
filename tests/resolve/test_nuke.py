"""The Nuke resolver against hand-written scripts in a local folder bucket (and one against a
real GCS API server): for every construct, the files each requested frame needs, exactly."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import pytest

from jitrender.deps import Dependencies
from jitrender.errors import SceneParseError
from jitrender.paths import PathMap, PathRule, local_path_of
from jitrender.resolve import resolver_for
from jitrender.resolve.base import ResolveContext
from jitrender.resolve.nuke import held_frame, resolve_nuke, resolve_nuke_script, search_path
from jitrender.storage import GCSStore, LocalStore
from tests.conftest import put_object

DATA = Path(__file__).parent / "data"


def context(
    bucket: str,
    script: str,
    frames: Iterable[int],
    name: str = "shots/comp.nk",
    path_map: PathMap | None = None,
) -> ResolveContext:
    """A context for ``script`` saved at ``bucket/name`` (a file:// bucket)."""
    url = f"{bucket}/{name}"
    put_object(url, script.encode())
    store = LocalStore()
    return ResolveContext(
        url,
        local_path_of(url),
        tuple(frames),
        path_map or PathMap(),
        lambda prefix, recursive: store.list(prefix, recursive=recursive),
        local_path_of,
    )


def per_frame(found: Dependencies, frames: Iterable[int]) -> dict[int, set[str]]:
    """Each requested frame -> the URLs it needs."""
    return {f: {d.url for d in found.deps if d.needed_by(f)} for f in frames}


def resolve(bucket: str, script: str, frames: Iterable[int], **kwargs: object) -> Dependencies:
    return resolve_nuke(context(bucket, script, frames, **kwargs))  # type: ignore[arg-type]


def make_files(bucket: str, names: Iterable[str]) -> None:
    for name in names:
        put_object(f"{bucket}/{name}", b"x")


ROOT = "Root {\n inputs 0\n name /artist/shots/comp.nk\n first_frame 1001\n last_frame 1100\n}\n"


def root_with(knobs: str) -> str:
    """ROOT with more knobs set."""
    return ROOT.replace(" first_frame", f" {knobs}\n first_frame")


def read(file: str, extra: str = "", name: str = "Read1") -> str:
    return f"Read {{\n inputs 0\n file {file}\n{extra}\n name {name}\n}}\n"


def write(file: str, extra: str = "", name: str = "Write1") -> str:
    return f"Write {{\n file {file}\n{extra}\n name {name}\n}}\n"


# -- sequences and frame mapping -------------------------------------------------------------


def test_100_frame_sequence_with_10_frame_request_lists_exactly_those_10(local_bucket: str) -> None:
    make_files(local_bucket, [f"plates/p.{f}.exr" for f in range(1001, 1101)])
    script = ROOT + read("/X/plates/p.####.exr", " first 1001\n last 1100")
    mapping = PathMap([PathRule("/X", local_bucket)])
    frames = range(1041, 1051)
    found = resolve(local_bucket, script, frames, path_map=mapping)
    assert per_frame(found, frames) == {f: {f"{local_bucket}/plates/p.{f}.exr"} for f in frames}
    assert len(found.deps) == 10
    assert all(d.source == "Read1.file" for d in found.deps)
    assert not found.unresolved


def test_before_hold_reads_the_first_frame_for_frames_before_first(local_bucket: str) -> None:
    script = ROOT + read("plates/p.%04d.exr", " first 1001\n last 1100\n before hold")
    found = resolve(local_bucket, script, [990, 1000, 1001])
    first = f"{local_bucket}/shots/plates/p.1001.exr"
    assert per_frame(found, [990, 1000, 1001]) == {990: {first}, 1000: {first}, 1001: {first}}
    assert len(found.deps) == 1


def test_before_and_after_default_to_hold(local_bucket: str) -> None:
    script = ROOT + read("p.####.exr", " first 10\n last 20")
    found = resolve(local_bucket, script, [1, 15, 99])
    base = f"{local_bucket}/shots/p"
    assert per_frame(found, [1, 15, 99]) == {
        1: {f"{base}.0010.exr"},
        15: {f"{base}.0015.exr"},
        99: {f"{base}.0020.exr"},
    }


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # A 1-5 clip; render frames -2..8.
        ("loop", {-2: 3, -1: 4, 0: 5, 1: 1, 5: 5, 6: 1, 7: 2, 8: 3}),
        ("bounce", {-2: 4, -1: 3, 0: 2, 1: 1, 5: 5, 6: 4, 7: 3, 8: 2}),
        ("black", {1: 1, 5: 5}),
        ("hold", {-2: 1, -1: 1, 0: 1, 1: 1, 5: 5, 6: 5, 7: 5, 8: 5}),
    ],
)
def test_before_after_modes_map_each_frame_to_the_file_frame_nuke_reads(
    local_bucket: str, mode: str, expected: dict[int, int]
) -> None:
    frames = [-2, -1, 0, 1, 5, 6, 7, 8]
    script = ROOT + read("p.#.exr", f" first 1\n last 5\n before {mode}\n after {mode}")
    found = resolve(local_bucket, script, frames)
    base = f"{local_bucket}/shots/p"
    assert per_frame(found, frames) == {
        f: ({f"{base}.{expected[f]}.exr"} if f in expected else set()) for f in frames
    }


def test_held_frame_matches_nukes_documented_examples() -> None:
    # Foundry's TimeClip examples: a 1-20 clip placed at frame 5 ("5, 4, 3, 2, 1, 2, ...").
    assert [held_frame(f - 4, 1, 20, "loop", "loop") for f in range(1, 6)] == [17, 18, 19, 20, 1]
    assert [held_frame(f - 4, 1, 20, "bounce", "bounce") for f in range(1, 6)] == [5, 4, 3, 2, 1]
    assert held_frame(0, 1, 1, "bounce", "bounce") == 1
    assert held_frame(0, 1, 5, "black", "hold") is None


def test_omitted_first_and_last_take_nukes_defaults_of_1(local_bucket: str) -> None:
    script = ROOT + read("still.####.exr")
    found = resolve(local_bucket, script, [1, 50])
    assert per_frame(found, [1, 50]) == {
        1: {f"{local_bucket}/shots/still.0001.exr"},
        50: {f"{local_bucket}/shots/still.0001.exr"},
    }


def test_frame_modes_start_at_offset_and_expression(local_bucket: str) -> None:
    script = (
        ROOT
        + read("a.####.exr", ' first 500\n last 1000\n frame_mode "start at"\n frame 1', "A")
        + read("b.####.exr", " first 200\n last 300\n frame_mode offset\n frame -100", "B")
        + read("c.####.exr", ' first 1\n last 1000\n frame "frame*2"', "C")
        + read("d.####.exr", " first 1\n last 1000\n frame {frame+499}", "D")
        + read("e.####.exr", " first 1\n last 1000\n frame_mode 2\n frame 10", "E")
    )
    found = resolve(local_bucket, script, [1, 2, 150])
    base = f"{local_bucket}/shots"
    assert per_frame(found, [1, 2, 150]) == {
        1: {f"{base}/a.0500.exr", f"{base}/b.0200.exr", f"{base}/c.0002.exr"}
        | {f"{base}/d.0500.exr", f"{base}/e.0001.exr"},
        2: {f"{base}/a.0501.exr", f"{base}/b.0200.exr", f"{base}/c.0004.exr"}
        | {f"{base}/d.0501.exr", f"{base}/e.0001.exr"},
        150: {f"{base}/a.0649.exr", f"{base}/b.0250.exr", f"{base}/c.0300.exr"}
        | {f"{base}/d.0649.exr", f"{base}/e.0140.exr"},
    }


def test_frame_range_from_expressions_on_other_knobs(local_bucket: str) -> None:
    script = ROOT + read("p.####.exr", " first {{root.first_frame}}\n last {{root.last_frame-90}}")
    found = resolve(local_bucket, script, [1, 1050])
    assert per_frame(found, [1, 1050]) == {
        1: {f"{local_bucket}/shots/p.1001.exr"},
        1050: {f"{local_bucket}/shots/p.1010.exr"},
    }


def test_movie_without_frame_token_is_needed_by_every_frame(local_bucket: str) -> None:
    script = ROOT + read("/media/ref.mov", " last 100")
    found = resolve(local_bucket, script, [1, 2])
    assert [(d.url, d.frames) for d in found.deps] == [("file:///media/ref.mov", None)]


# -- structure: groups, clones, stack, quoting -----------------------------------------------


def test_groups_livegroups_and_gizmos_give_full_node_paths(local_bucket: str) -> None:
    script = (
        ROOT
        + "Group {\n name Group1\n}\n"
        + " Group {\n  name Inner\n }\n"
        + read("/in/a.exr", name="Read3")
        + " end_group\n"
        + read("/in/b.exr", name="Read3")
        + "end_group\n"
        + "Gizmo {\n name Giz\n}\n"
        + read("/in/c.exr", name="Read1")
        + "end_group\n"
        + read("/in/d.exr", name="Read1")
    )
    found = resolve(local_bucket, script, [1])
    assert {(d.url, d.source) for d in found.deps} == {
        ("file:///in/a.exr", "Group1.Inner.Read3.file"),
        ("file:///in/b.exr", "Group1.Read3.file"),
        ("file:///in/c.exr", "Giz.Read1.file"),
        ("file:///in/d.exr", "Read1.file"),
    }


def test_clones_share_knobs_with_their_original(local_bucket: str) -> None:
    script = (
        ROOT
        + "clone node7f00a1|Read|4242 Read {\n file /in/p.####.exr\n first 1\n last 10\n"
        + " before black\n name Read1\n}\n"
        + "set C7f00a1 [stack 0]\n"
        + "push 0\n"
        + "clone $C7f00a1 {\n xpos 100\n name Read2\n}\n"
    )
    found = resolve(local_bucket, script, [0, 3])
    assert per_frame(found, [0, 3]) == {0: set(), 3: {"file:///in/p.0003.exr"}}
    assert not found.unresolved


def test_clone_of_an_unknown_variable_is_a_parse_error(local_bucket: str) -> None:
    script = ROOT + "clone $Cdead {\n xpos 1\n}\n"
    with pytest.raises(SceneParseError, match=r"comp\.nk:7:7: clone of \$Cdead"):
        resolve(local_bucket, script, [1])


def test_quoting_backslash_escapes_and_nested_braces(local_bucket: str) -> None:
    script = (
        "#! /usr/local/Nuke15.1v2/libnuke-15.1.2.so -nx\nversion 15.1 v2\n"
        'define_window_layout_xml {<?xml version="1.0"?>\n<layout>{}</layout>}\n'
        + ROOT
        + read('"/in/with space/\\"q\\"/a.exr"', name="Quoted")
        + read("{/in/braced {nested}/b.exr}", name="Braced")
        + read("{\\[file dirname \\[value root.name]]/c.exr}", name="EscapedBrackets")
        + "NoOp {\n name Scripted\n knobChanged \"print('\\}')\\nx = \\{1: 2\\}\"\n"
        + " label {[value this.name] \\{ok\\}}\n}\n"
        + "BackdropNode {\n name B; xpos 3\n}\n"
    )
    found = resolve(local_bucket, script, [1])
    assert {d.url for d in found.deps} == {
        'file:///in/with space/"q"/a.exr',
        "file:///in/braced {nested}/b.exr",
        f"{local_bucket}/shots/c.exr",
    }


def test_relative_paths_resolve_against_the_project_directory(local_bucket: str) -> None:
    root = ROOT.replace(
        " first_frame", ' project_directory "/proj/\\[getenv JR_SHOT]"\n first_frame'
    )
    script = root + read("plates/a.exr", name="Rel") + read("../b.exr", name="Up")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JR_SHOT", "sh010")
        found = resolve(local_bucket, script, [1])
    assert {d.url for d in found.deps} == {
        "file:///proj/sh010/plates/a.exr",
        "file:///proj/b.exr",
    }


def test_project_directory_script_directory_button(local_bucket: str) -> None:
    root = ROOT.replace(
        " first_frame",
        ' project_directory "\\[python \\{nuke.script_directory()\\}]"\n first_frame',
    )
    found = resolve(local_bucket, root + read("plates/a.exr"), [1])
    assert [d.url for d in found.deps] == [f"{local_bucket}/shots/plates/a.exr"]


# -- TCL in file knobs -----------------------------------------------------------------------


def test_tcl_people_write_in_file_knobs(local_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JR_ROOT", "/jobs")
    monkeypatch.setenv("JR_SEQ", "sq01")
    shots = f"{local_bucket}/shots"
    script = (
        ROOT
        + "NoOp {\n name Settings\n addUserKnob {1 shot}\n shot sh020\n"
        + ' plates "\\[getenv JR_ROOT]/\\[value shot]"\n}\n'
        + read('"\\[file dirname \\[value root.name]]/a.exr"', name="Dirname")
        + read('"\\[value Settings.plates]/b.exr"', name="OtherNode")
        + read('"/x/\\[file tail /a/b/c.exr]"', name="Tail")
        + read('"\\[file rootname /a/b/c.exr].png"', name="Rootname")
        + read('"/x/y\\[file extension /a/b/c.tar.gz]"', name="Extension")
        + read('"\\[file join /x \\$env(JR_SEQ) d.exr]"', name="Join")
        + read('"\\[python nuke.script_directory()]/e.exr"', name="PyDir")
        + read('"\\[python \\{nuke.script_directory()\\}]/f.exr"', name="PyDirBraced")
        + read('"\\[file rootname \\[value root.name]]_g.exr"', name="RootName")
        + read('"\\[value root.project_directory]h.exr"', name="ProjectDir")
        + read('"\\[value name].exr"', name="ThisName")
        + read('"$env(JR_ROOT)/i.exr"', name="Env")
    )
    found = resolve(local_bucket, script, [1])
    assert not found.unresolved
    assert {d.source: d.url for d in found.deps} == {
        "Dirname.file": f"{shots}/a.exr",
        "OtherNode.file": "file:///jobs/sh020/b.exr",
        "Tail.file": "file:///x/c.exr",
        "Rootname.file": "file:///a/b/c.png",
        "Extension.file": "file:///x/y.gz",
        "Join.file": "file:///x/sq01/d.exr",
        "PyDir.file": f"{shots}/e.exr",
        "PyDirBraced.file": f"{shots}/f.exr",
        "RootName.file": f"{shots}/comp_g.exr",
        "ProjectDir.file": f"{shots}/h.exr",
        "ThisName.file": f"{shots}/ThisName.exr",
        "Env.file": "file:///jobs/i.exr",
    }


def test_root_name_is_the_artists_path_when_the_path_map_knows_it(local_bucket: str) -> None:
    mapping = PathMap([PathRule("/mnt/proj", local_bucket)])
    script = ROOT + read('"\\[file dirname \\[value root.name]]/plates/a.exr"')
    found = resolve(local_bucket, script, [1], path_map=mapping)
    assert [(d.path, d.url) for d in found.deps] == [
        ("/mnt/proj/shots/plates/a.exr", f"{local_bucket}/shots/plates/a.exr")
    ]


def test_what_needs_nuke_is_reported_with_node_and_reason_never_guessed(
    local_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JR_UNSET", raising=False)
    script = (
        ROOT
        + read('"\\[python \\{os.path.join(a, b)\\}]/a.exr"', name="Python")
        + read('"/x/\\[expr \\{rand()\\}].exr"', name="Expr")
        + read("{{curve x1 0 x10 1}}", name="Animated")
        + read('"/x/\\[format %04d \\[frame]].exr"', name="Format")
        + read('"/x/\\[frame].exr"', name="Frame")
        + read('"\\[getenv JR_UNSET]/a.exr"', name="Env")
        + read('"\\[value Nowhere.file]"', name="Missing")
        + read("/x/p.####.exr", ' frame "random()"', name="FrameExpr")
        + read("/x/q.####.exr", " last {{parent.nothing}}", name="RangeExpr")
    )
    found = resolve(local_bucket, script, [1])
    assert found.deps == []
    reasons = {u.source: u.why for u in found.unresolved}
    assert set(reasons) == {
        "Python.file",
        "Expr.file",
        "Animated.file",
        "Format.file",
        "Frame.file",
        "Env.file",
        "Missing.file",
        "FrameExpr.file",
        "RangeExpr.file",
    }
    assert "Python" in reasons["Python.file"]
    assert "animated" in reasons["Animated.file"]
    assert "JR_UNSET" in reasons["Env.file"]
    assert "Nowhere" in reasons["Missing.file"]
    assert "frame" in reasons["Frame.file"]


def test_a_movie_is_listed_even_when_its_frame_range_needs_nuke(local_bucket: str) -> None:
    script = ROOT + read("/x/ref.mov", " last {{python_only()}}")
    found = resolve(local_bucket, script, [1, 2])
    assert [(d.url, d.frames) for d in found.deps] == [("file:///x/ref.mov", None)]
    assert not found.unresolved


def test_arithmetic_expr_is_evaluated(local_bucket: str) -> None:
    script = ROOT + read('"/x/v\\[expr 2*3+1].exr"')
    found = resolve(local_bucket, script, [1])
    assert [d.url for d in found.deps] == ["file:///x/v7.exr"]


# -- node classes ----------------------------------------------------------------------------


def test_disabled_nodes_and_nodes_inside_disabled_groups_need_nothing(local_bucket: str) -> None:
    script = (
        ROOT
        + read("/x/off.exr", " disable true", name="Off")
        + "Group {\n name G\n disable true\n}\n"
        + read("/x/inside.exr", name="Inside")
        + "end_group\n"
        + read("/x/on.exr", " disable false", name="On")
    )
    found = resolve(local_bucket, script, [1])
    assert [d.url for d in found.deps] == ["file:///x/on.exr"]


def test_every_file_knob_class(local_bucket: str) -> None:
    script = (
        ROOT
        + "DeepRead {\n file /x/deep.####.exr\n first 1\n last 2\n name Deep\n}\n"
        + "ReadGeo2 {\n file /x/geo.abc\n name Geo\n}\n"
        + "ReadGeo {\n file /x/geo_old.obj\n name GeoOld\n}\n"
        + "Camera2 {\n read_from_file true\n file /x/cam.fbx\n name Cam\n}\n"
        + "Camera3 {\n file /x/not_read.abc\n name CamNotFromFile\n}\n"
        + "Axis2 {\n read_from_file true\n file /x/axis.abc\n name Ax\n}\n"
        + "Light2 {\n read_from_file true\n file /x/light.fbx\n name Li\n}\n"
        + "OCIOFileTransform {\n file /x/grade.cube\n name Lut\n}\n"
        + "Vectorfield {\n vfield_file /x/field.3dl\n name VF\n}\n"
        + "AudioRead {\n file /x/audio.wav\n name Audio\n}\n"
        + "Write {\n file /out/comp.####.exr\n name Write1\n}\n"
    )
    found = resolve(local_bucket, script, [5])
    assert {(d.source, d.url) for d in found.deps} == {
        ("Deep.file", "file:///x/deep.0002.exr"),
        ("Geo.file", "file:///x/geo.abc"),
        ("GeoOld.file", "file:///x/geo_old.obj"),
        ("Cam.file", "file:///x/cam.fbx"),
        ("Ax.file", "file:///x/axis.abc"),
        ("Li.file", "file:///x/light.fbx"),
        ("Lut.file", "file:///x/grade.cube"),
        ("VF.vfield_file", "file:///x/field.3dl"),
        ("Audio.file", "file:///x/audio.wav"),
    }


def test_proxy_files_only_in_proxy_mode(local_bucket: str) -> None:
    node = read("/x/full.#.exr", " proxy /x/proxy.#.exr\n last 9")
    found = resolve(local_bucket, ROOT + node, [3])
    assert [d.url for d in found.deps] == ["file:///x/full.3.exr"]
    proxy_root = ROOT.replace(" first_frame", " proxy true\n first_frame")
    found = resolve(local_bucket, proxy_root + node, [3])
    assert {d.url for d in found.deps} == {"file:///x/full.3.exr", "file:///x/proxy.3.exr"}


def test_precomp_and_livegroup_scripts_are_resolved_too(local_bucket: str) -> None:
    precomp = (
        "Root {\n inputs 0\n}\n"
        + read("plates/fg.####.exr", " first 1\n last 100", name="FG")
        + "Precomp {\n file ../comp.nk\n name Loop\n}\n"
    )
    put_object(f"{local_bucket}/shots/pre/fg.nk", precomp.encode())
    live = ROOT + read("/x/live.exr", name="LiveRead")
    put_object(f"{local_bucket}/shots/live.nk", live.encode())
    script = (
        ROOT
        + "Precomp {\n file pre/fg.nk\n name Precomp1\n}\n"
        + "Precomp {\n file pre/missing.nk\n name Gone\n}\n"
        + "LiveGroup {\n file live.nk\n name LG\n}\n"
        + read("/x/inside_live.exr", name="Member")
        + "end_group\n"
    )
    found = resolve(local_bucket, script, [7])
    shots = f"{local_bucket}/shots"
    assert {(d.source, d.url) for d in found.deps} == {
        ("Precomp1.file", f"{shots}/pre/fg.nk"),
        ("Precomp1.FG.file", f"{shots}/pre/plates/fg.0007.exr"),
        ("Precomp1.Loop.file", f"{shots}/comp.nk"),
        ("Gone.file", f"{shots}/pre/missing.nk"),
        ("LG.file", f"{shots}/live.nk"),
        ("LG.LiveRead.file", "file:///x/live.exr"),
        ("LG.Member.file", "file:///x/inside_live.exr"),
    }
    reasons = {u.source: u.why for u in found.unresolved}
    assert set(reasons) == {"Gone.file", "Precomp1.Loop.file"}
    assert "includes itself" in reasons["Precomp1.Loop.file"]


OCIO_CONFIG = """ocio_profile_version: 2
environment:
  SHOW: demo
search_path: "luts:$SHOW/luts"
roles:
  default: raw
colorspaces:
  - !<ColorSpace>
    name: raw
  - !<ColorSpace>
    name: log
    from_scene_reference: !<GroupTransform>
      children:
        - !<FileTransform> {src: log.spi1d, interpolation: linear}
        - !<FileTransform> {src: show.cube}
looks:
  - !<Look>
    name: grade
    transform: !<FileTransform> {src: missing.csp}
"""


def test_custom_ocio_config_and_the_luts_it_references(local_bucket: str) -> None:
    make_files(local_bucket, ["ocio/luts/log.spi1d", "ocio/demo/luts/show.cube"])
    put_object(f"{local_bucket}/ocio/config.ocio", OCIO_CONFIG.encode())
    root = ROOT.replace(
        " first_frame",
        " colorManagement OCIO\n OCIO_config custom\n"
        f" customOCIOConfigPath {local_bucket[len('file://') :]}/ocio/config.ocio\n first_frame",
    )
    found = resolve(local_bucket, root, [1])
    assert {d.url for d in found.deps} == {
        f"{local_bucket}/ocio/config.ocio",
        f"{local_bucket}/ocio/luts/log.spi1d",
        f"{local_bucket}/ocio/demo/luts/show.cube",
    }
    assert [(u.value, "search_path" in u.why) for u in found.unresolved] == [("missing.csp", True)]


def test_builtin_ocio_config_needs_no_files(local_bucket: str) -> None:
    root = ROOT.replace(
        " first_frame", " colorManagement OCIO\n OCIO_config aces_1.2\n first_frame"
    )
    assert resolve(local_bucket, root, [1]).deps == []


# -- Precomp frames and read-back -------------------------------------------------------------

PRECOMP_ROOT = "Root {\n inputs 0\n first_frame 1\n last_frame 50\n}\n"


def test_precomp_script_is_computed_at_the_parents_frames_not_its_own_range(
    local_bucket: str,
) -> None:
    # Nuke's Precomp has no frame-range or offset knobs: the precomp script's nodes are
    # evaluated at the frame being rendered, whatever the precomp's own Root range says.
    child = PRECOMP_ROOT + read("plates/fg.####.exr", " first 1001\n last 1100", "FG")
    put_object(f"{local_bucket}/shots/pre/fg.nk", child.encode())
    script = ROOT + "Precomp {\n file pre/fg.nk\n name Pre\n}\n"
    frames = [1000, 1001, 1050, 1200]
    found = resolve(local_bucket, script, frames)
    pre = f"{local_bucket}/shots/pre"
    assert per_frame(found, frames) == {
        1000: {f"{pre}/fg.nk", f"{pre}/plates/fg.1001.exr"},
        1001: {f"{pre}/fg.nk", f"{pre}/plates/fg.1001.exr"},
        1050: {f"{pre}/fg.nk", f"{pre}/plates/fg.1050.exr"},
        1200: {f"{pre}/fg.nk", f"{pre}/plates/fg.1100.exr"},
    }
    assert not found.unresolved


PRECOMP_WITH_OUTPUT = (
    PRECOMP_ROOT
    + read("plates/fg.####.exr", " first 1001\n last 1100", "FG")
    + write("renders/pre.####.exr", "", "PreOut")
    + "Output {\n name Output1\n}\n"
)


def test_reading_precomp_lists_its_rendered_files_not_the_scripts_inputs(
    local_bucket: str,
) -> None:
    put_object(f"{local_bucket}/shots/pre/fg.nk", PRECOMP_WITH_OUTPUT.encode())
    script = ROOT + "Precomp {\n file pre/fg.nk\n reading true\n name Pre\n}\n"
    frames = [1001, 1002]
    found = resolve(local_bucket, script, frames)
    pre = f"{local_bucket}/shots/pre"
    assert per_frame(found, frames) == {
        f: {f"{pre}/fg.nk", f"{pre}/renders/pre.{f}.exr"} for f in frames
    }
    assert {d.source for d in found.deps} == {"Pre.file", "Pre.PreOut.file"}
    assert not found.unresolved


def test_reading_precomp_with_read_input_computes_the_script_where_a_render_is_missing(
    local_bucket: str,
) -> None:
    make_files(local_bucket, ["shots/pre/renders/pre.1001.exr"])
    put_object(f"{local_bucket}/shots/pre/fg.nk", PRECOMP_WITH_OUTPUT.encode())
    script = ROOT + 'Precomp {\n file pre/fg.nk\n reading true\n on_error "read input"\n}\n'
    frames = [1001, 1002]
    found = resolve(local_bucket, script, frames)
    pre = f"{local_bucket}/shots/pre"
    assert per_frame(found, frames) == {
        1001: {f"{pre}/fg.nk", f"{pre}/renders/pre.1001.exr"},
        1002: {f"{pre}/fg.nk", f"{pre}/plates/fg.1002.exr"},
    }


def test_reading_precomp_reads_the_write_its_output_knob_names(local_bucket: str) -> None:
    child = (
        PRECOMP_ROOT
        + read("plates/fg.####.exr", " first 1001\n last 1100", "FG")
        + write("renders/a.####.exr", "", "A")
        + write("renders/b.####.exr", " frame_mode offset\n frame -1000", "B")
    )
    put_object(f"{local_bucket}/shots/pre/fg.nk", child.encode())
    named = ROOT + "Precomp {\n file pre/fg.nk\n reading true\n output B\n use_output true\n}\n"
    found = resolve(local_bucket, named, [1001])
    pre = f"{local_bucket}/shots/pre"
    assert per_frame(found, [1001]) == {1001: {f"{pre}/fg.nk", f"{pre}/renders/b.0001.exr"}}
    assert not found.unresolved

    unnamed = ROOT + "Precomp {\n file pre/fg.nk\n reading true\n name Pre\n}\n"
    found = resolve(local_bucket, unnamed, [1001])
    assert per_frame(found, [1001]) == {1001: {f"{pre}/fg.nk", f"{pre}/plates/fg.1001.exr"}}
    [why] = [u.why for u in found.unresolved if u.source == "Pre.reading"]
    assert "2 enabled Write nodes" in why


# -- Write nodes reading their output back ---------------------------------------------------


def test_write_with_reading_true_reads_its_own_output_for_each_frame(local_bucket: str) -> None:
    script = (
        ROOT
        + write("/out/pre.####.exr", " reading true", "Pre")
        + write("/out/final.####.exr", "", "Final")
        + write("/out/off.####.exr", " reading true\n disable true", "Off")
        + "Group {\n name G\n disable true\n}\n"
        + write("/out/inside.####.exr", " reading true", "Inside")
        + "end_group\n"
    )
    frames = [1001, 1002]
    found = resolve(local_bucket, script, frames)
    assert per_frame(found, frames) == {f: {f"file:///out/pre.{f}.exr"} for f in frames}
    assert {d.source for d in found.deps} == {"Pre.file"}
    assert not found.unresolved


def test_write_read_back_follows_the_writes_frame_numbering(local_bucket: str) -> None:
    # Each Write reads the one before it (the stack); the last one's output feeds Final.
    script = (
        ROOT
        + write("/out/offset.####.exr", " reading true\n frame_mode offset\n frame -1000", "Off")
        + write("/out/expr.####.exr", ' reading true\n frame "frame*2"', "Expr")
        + write("/out/start.####.exr", ' reading true\n frame_mode "start at"\n frame 1', "Start")
        + write("/out/movie.mov", ' reading true\n frame_mode "start at"\n frame 1', "Movie")
        + write("/out/final.####.exr", "", "Final")
    )
    frames = [1001, 1002]
    found = resolve(local_bucket, script, frames)
    assert per_frame(found, frames) == {
        1001: {"file:///out/offset.0001.exr", "file:///out/expr.2002.exr", "file:///out/movie.mov"},
        1002: {"file:///out/offset.0002.exr", "file:///out/expr.2004.exr", "file:///out/movie.mov"},
    }
    [start] = found.unresolved
    assert start.source == "Start.file"
    assert "start at" in start.why


@pytest.mark.parametrize(
    ("on_error", "expected"),
    [
        # Nuke fails on a missing frame: every frame's file is needed (a missing one fails
        # the job before it renders, as Nuke would).
        ("", {1001: {"pre.1001.exr"}, 1002: {"pre.1002.exr"}}),
        # Nuke renders black/checkerboard/the input tree instead: only what exists is needed.
        ("on_error black", {1001: {"pre.1001.exr"}, 1002: set()}),
        ("on_error checkerboard", {1001: {"pre.1001.exr"}, 1002: set()}),
        ('on_error "read input"', {1001: {"pre.1001.exr"}, 1002: set()}),
    ],
)
def test_write_read_back_lists_missing_renders_only_when_nuke_would_fail_on_them(
    local_bucket: str, on_error: str, expected: dict[int, set[str]]
) -> None:
    make_files(local_bucket, ["renders/pre.1001.exr"])
    mapping = PathMap([PathRule("/show", local_bucket)])
    script = (
        ROOT
        + write("/show/renders/pre.####.exr", f" reading true\n {on_error}", "Pre")
        + write("/show/renders/final.####.exr", "", "Final")
    )
    found = resolve(local_bucket, script, [1001, 1002], path_map=mapping)
    assert per_frame(found, [1001, 1002]) == {
        f: {f"{local_bucket}/renders/{name}" for name in names} for f, names in expected.items()
    }
    assert not found.unresolved


# -- gizmos ----------------------------------------------------------------------------------

GIZMO = r"""#! /usr/local/Nuke15.1v2/libnuke-15.1.2.so -nx
version 15.1 v2
Gizmo {
 inputs 1
 addUserKnob {20 User}
 addUserKnob {2 grain_file l "grain plate"}
 grain_file /show/grain/default.####.exr
 addUserKnob {3 grain_first l "first frame"}
 grain_first 1
 addUserKnob {2 lut_file}
 lut_file /show/luts/grain.cube
 addUserKnob {41 geo_file l "geometry" -STARTLINE T GeoIn.file}
}
 Input {
  inputs 0
  name Input1
 }
 Read {
  inputs 0
  file "\[value parent.grain_file]"
  first {{parent.grain_first}}
  last {{parent.grain_first+99}}
  name GrainRead
 }
 OCIOFileTransform {
  file "\[value parent.lut_file]"
  name GrainLut
 }
 ReadGeo2 {
  file /show/geo/default.abc
  name GeoIn
 }
 Output {
  name Output1
 }
end_group
"""

GIZMO_INSTANCE = (
    "LensGrain {\n grain_file /show/grain/fine.####.exr\n grain_first 1001\n"
    " geo_file /show/geo/rock.abc\n xpos 10\n ypos 20\n name LensGrain1\n}\n"
)


def test_gizmo_on_a_mapped_nuke_path_is_a_dependency_and_its_members_are_resolved(
    local_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_object(f"{local_bucket}/pipeline/gizmos/LensGrain.gizmo", GIZMO.encode())
    monkeypatch.setenv("NUKE_PATH", "/opt/nuke/plugins:/show/pipeline/gizmos")
    mapping = PathMap([PathRule("/show", local_bucket)])
    frames = [1001, 1002]
    found = resolve(local_bucket, ROOT + GIZMO_INSTANCE, frames, path_map=mapping)
    gizmo = f"{local_bucket}/pipeline/gizmos/LensGrain.gizmo"
    assert per_frame(found, frames) == {
        # The instance's grain_file and grain_first replace the gizmo's defaults, its
        # geo_file (a link knob) sets GeoIn.file; lut_file, not set, keeps the gizmo's value.
        f: {gizmo, f"{local_bucket}/grain/fine.{f}.exr", f"{local_bucket}/luts/grain.cube"}
        | {f"{local_bucket}/geo/rock.abc"}
        for f in frames
    }
    assert {(d.source, d.path) for d in found.deps if d.url == gizmo} == {
        ("LensGrain1", "/show/pipeline/gizmos/LensGrain.gizmo")
    }
    assert {d.source for d in found.deps} == {
        "LensGrain1",
        "LensGrain1.GrainRead.file",
        "LensGrain1.GrainLut.file",
        "LensGrain1.GeoIn.file",
    }
    assert not found.unresolved


def test_gizmo_path_from_the_jobs_env_wins_over_the_process_environment(
    local_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job's ``env: {NUKE_PATH: …}`` is what Nuke will run with, so the resolver uses it."""
    put_object(f"{local_bucket}/pipeline/gizmos/LensGrain.gizmo", GIZMO.encode())
    monkeypatch.setenv("NUKE_PATH", "/nowhere")
    mapping = PathMap([PathRule("/show", local_bucket)])
    ctx = replace(
        context(local_bucket, ROOT + GIZMO_INSTANCE, [1001], path_map=mapping),
        env={"NUKE_PATH": "/show/pipeline/gizmos"},
    )
    found = resolve_nuke(ctx)
    assert f"{local_bucket}/pipeline/gizmos/LensGrain.gizmo" in {d.url for d in found.deps}
    assert not found.unresolved


def test_gizmo_from_a_local_folder_is_not_a_dependency_but_its_files_are(
    local_bucket: str, tmp_path: Path
) -> None:
    folder = tmp_path / "site_gizmos"
    folder.mkdir()
    (folder / "LensGrain.gizmo").write_text(GIZMO)
    found = resolve_nuke_script(
        context(local_bucket, ROOT + GIZMO_INSTANCE, [1001]), gizmo_path=[str(folder)]
    )
    assert per_frame(found, [1001]) == {
        1001: {"file:///show/grain/fine.1001.exr", "file:///show/luts/grain.cube"}
        | {"file:///show/geo/rock.abc"}
    }
    assert not found.unresolved


def test_gizmo_next_to_the_script_and_unknown_classes_without_one(
    local_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NUKE_PATH", raising=False)
    put_object(f"{local_bucket}/shots/LensGrain.gizmo", GIZMO.encode())
    put_object(f"{local_bucket}/shots/Loop.gizmo", b"Gizmo {\n}\n Loop {\n }\nend_group\n")
    script = (
        ROOT
        + GIZMO_INSTANCE
        + "LensGrain {\n disable true\n name GrainOff\n}\n"
        + "StudioDefocus {\n size 4\n name Defocus1\n}\n"
        + "Loop {\n name Loop1\n}\n"
        # Nuke's own classes, versioned or not, and OFX plug-ins are never reported.
        + "Grade {\n name Grade1\n}\nMerge2 {\n name Merge1\n}\nBlur {\n name Blur1\n}\n"
        + "Transform {\n name T\n}\nDot {\n name Dot1\n}\nTracker4 {\n name Tr\n}\n"
        + "OFXuk.co.thefoundry.keylight.keylight_v201 {\n name Keylight1\n}\n"
    )
    found = resolve(local_bucket, script, [1001])
    shots = f"{local_bucket}/shots"
    assert per_frame(found, [1001]) == {
        1001: {
            f"{shots}/LensGrain.gizmo",  # also for the disabled instance: Nuke loads it
            f"{shots}/Loop.gizmo",
            "file:///show/grain/fine.1001.exr",
            "file:///show/luts/grain.cube",
            "file:///show/geo/rock.abc",
        }
    }
    reasons = {u.source: (u.value, u.why) for u in found.unresolved}
    assert set(reasons) == {"Defocus1", "Loop1.Loop@line3"}
    assert reasons["Defocus1"][0] == "StudioDefocus"
    assert "StudioDefocus.gizmo" in reasons["Defocus1"][1]
    assert "contains itself" in reasons["Loop1.Loop@line3"][1]

    # A disabled gizmo reads nothing, but Nuke cannot load the script without its .gizmo.
    found = resolve(local_bucket, ROOT + "LensGrain {\n disable true\n name Off\n}\n", [1001])
    assert [(d.url, d.source, d.frames) for d in found.deps] == [
        (f"{shots}/LensGrain.gizmo", "Off", None)
    ]


def test_nuke_path_splits_like_nuke_and_keeps_urls_and_drives_whole() -> None:
    assert search_path("/a/gizmos:/b") == ["/a/gizmos", "/b"]
    assert search_path("gs://studio/gizmos:/b") == ["gs://studio/gizmos", "/b"]
    assert search_path("C:/nuke/gizmos;//server/gizmos") == ["C:/nuke/gizmos", "//server/gizmos"]
    assert search_path("C:/nuke/gizmos") == ["C:/nuke/gizmos"]
    assert search_path("") == []


# -- views and UDIMs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("views_knob", "views"),
    [
        ('views {{left ""} {right ""}}', ["left", "right"]),
        ('views "left #ff0000\\nright #00ff00"', ["left", "right"]),
        ("", ["main"]),
    ],
)
def test_view_tokens_expand_to_the_roots_views(
    local_bucket: str, views_knob: str, views: list[str]
) -> None:
    root = ROOT.replace(" first_frame", f" {views_knob}\n first_frame")
    found = resolve(local_bucket, root + read("/x/%V/p.%v.exr"), [1])
    assert {d.url for d in found.deps} == {f"file:///x/{v}/p.{v[0]}.exr" for v in views}


def test_udim_tiles_that_exist_are_listed_and_no_others(local_bucket: str) -> None:
    make_files(
        local_bucket,
        [
            *("tex/diffuse.1001.exr", "tex/diffuse.1002.exr", "tex/diffuse.1011.exr"),
            *("tex/diffuse.1002.exr.bak", "tex/other.1001.exr", "tex/sub/diffuse.1003.exr"),
        ],
    )
    found = resolve(local_bucket, ROOT + read("../tex/diffuse.<UDIM>.exr"), [1, 2])
    assert {d.url for d in found.deps} == {
        f"{local_bucket}/tex/diffuse.{tile}.exr" for tile in (1001, 1002, 1011)
    }


def test_udim_tiles_listed_from_a_real_gcs_api_server(gcs_bucket: str) -> None:
    for name in ["diffuse.1001.exr", "diffuse.1005.exr", "diffuse.1005.tx", "sub/diffuse.1002.exr"]:
        put_object(f"{gcs_bucket}/tex/{name}", b"x")
    store = GCSStore()
    with tempfile.TemporaryDirectory() as tmp:
        scene = Path(tmp) / "comp.nk"
        scene.write_text(
            ROOT + read("/show/tex/diffuse.<UDIM>.exr", name="Tex") + read("/show/p.####.exr")
        )
        ctx = ResolveContext(
            f"{gcs_bucket}/shots/comp.nk",
            scene,
            (1, 2),
            PathMap([PathRule("/show", gcs_bucket)]),
            lambda prefix, recursive: store.list(prefix, recursive=recursive),
            local_path_of,
        )
        found = resolve_nuke(ctx)
    assert per_frame(found, [1, 2]) == {
        f: {f"{gcs_bucket}/tex/diffuse.1001.exr", f"{gcs_bucket}/tex/diffuse.1005.exr"}
        | {f"{gcs_bucket}/p.0001.exr"}
        for f in (1, 2)
    }


# -- a realistic script from disk ------------------------------------------------------------


def test_a_saved_stereo_comp_script(local_bucket: str) -> None:
    make_files(local_bucket, ["shots/sh010/tex/card.1001.tif", "shots/sh010/tex/card.1002.tif"])
    script = (DATA / "stereo_comp.nk").read_text()
    frames = [1001, 1002, 1200]
    found = resolve(local_bucket, script, frames, name="shots/sh010/comp/sh010_comp_v003.nk")
    sh = f"{local_bucket}/shots/sh010"
    tiles = {f"{sh}/tex/card.1001.tif", f"{sh}/tex/card.1002.tif"}
    cam = f"{sh}/cam/sh010_cam.abc"

    def plate(view: str, f: int) -> str:
        return f"{sh}/plates/{view}/sh010_plate_{view[0]}.{f}.exr"

    assert per_frame(found, frames) == {
        1001: {plate("left", 1001), plate("right", 1001), f"{sh}/fx/smoke.0001.exr", cam} | tiles,
        1002: {plate("left", 1002), plate("right", 1002), f"{sh}/fx/smoke.0002.exr", cam} | tiles,
        1200: {plate("left", 1100), plate("right", 1100), cam} | tiles,
    }
    assert [u.source for u in found.unresolved] == ["Utility.PyPath.file"]


# -- malformed scripts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "where", "what"),
    [
        ("Root {\n inputs 0\n", "1:6", "unmatched '{'"),
        ('Read {\n file "/x/a.exr', "1:6", "unmatched '{'"),
        ('Read {\n file "/x/a.exr\n name x\n}\n', "2:7", "unterminated quoted string"),
        ("Read {\n name a\n}\nend_group\n", "4:1", "end_group with no group open"),
        ("Group {\n name G\n}\nRead {\n}\n", "1:1", "Group G is never closed"),
        ("Read {\n name a\n}\n}\n", "4:1", "unexpected '}'"),
        ("Read {\n name a\n}}\n", "3:2", "extra characters after close-brace"),
        ("Read {\n file {a}b\n}\n", "2:10", "extra characters after close-brace"),
        ("Read {\n file [value root.name\n}\n", "2:7", "unmatched '['"),
        ("Root {\n}\nRead \x00{\n}\n", "3:6", "NUL byte"),
    ],
)
def test_malformed_scripts_raise_one_line_naming_file_line_and_column(
    local_bucket: str, script: str, where: str, what: str
) -> None:
    with pytest.raises(SceneParseError) as raised:
        resolve(local_bucket, script, [1])
    message = raised.value.message
    assert "\n" not in message
    assert re.fullmatch(rf"{re.escape(local_bucket)}/shots/comp\.nk:{where}: .+", message)
    assert what in message


def test_latin1_scripts_from_older_nukes_still_read(local_bucket: str) -> None:
    url = f"{local_bucket}/shots/comp.nk"
    put_object(url, (ROOT + read("/x/caf\xe9.exr")).encode("latin-1"))
    store = LocalStore()
    ctx = ResolveContext(
        url,
        local_path_of(url),
        (1,),
        PathMap(),
        lambda p, r: store.list(p, recursive=r),
        local_path_of,
    )
    assert [d.url for d in resolve_nuke(ctx).deps] == ["file:///x/caf\xe9.exr"]


def test_registered_for_nk_and_nknc_files() -> None:
    assert resolver_for("auto", "gs://b/comp.nk")[0] == "nuke"
    assert resolver_for("auto", "gs://b/comp.nknc")[0] == "nuke"
    assert resolver_for("nuke", "gs://b/anything")[1] is resolve_nuke


def test_a_retime_at_the_end_of_a_5000_node_chain_needs_no_deep_recursion(
    local_bucket: str,
) -> None:
    # Retime's default input range is its input's range, worked out down the whole chain.
    chain = "".join(f"Grade {{\n name Grade{i}\n}}\n" for i in range(5000))
    script = (
        ROOT
        + read("/x/p.####.exr", " first 1\n last 10")
        + chain
        + "Retime {\n output.first 1001\n speed 2\n name Retime1\n}\n"
        + write("/out/w.####.exr")
    )
    found = resolve(local_bucket, script, [1001, 1002, 1010])
    assert per_frame(found, [1001, 1002, 1010]) == {
        1001: {"file:///x/p.0001.exr"},
        1002: {"file:///x/p.0003.exr"},
        # Input 1-10 at speed 2 fills 1001-1005 (1, 3, 5, 7, 9); after that it holds 9.
        1010: {"file:///x/p.0009.exr"},
    }


def test_a_precomp_computes_its_scripts_output_node_at_the_frames_asked(
    local_bucket: str,
) -> None:
    # The precomp script's Output shows FG; its BG Read feeds only a Viewer. Downstream of
    # the Precomp a TimeOffset of 10 asks it for frame f - 10.
    child = (
        "Root {\n inputs 0\n}\n"
        + read("plates/bg.####.exr", " first 1\n last 100", name="BG")
        + "Viewer {\n name Viewer1\n}\n"
        + read("plates/fg.####.exr", " first 1\n last 100", name="FG")
        + "Output {\n name Output1\n}\n"
    )
    put_object(f"{local_bucket}/shots/pre/fg.nk", child.encode())
    script = (
        ROOT
        + "Precomp {\n inputs 0\n file pre/fg.nk\n name Pre\n}\n"
        + "TimeOffset {\n time_offset 10\n name Later\n}\n"
        + write("/out/comp.####.exr")
    )
    found = resolve(local_bucket, script, [20, 21])
    pre = f"{local_bucket}/shots/pre"
    assert per_frame(found, [20, 21]) == {
        20: {f"{pre}/fg.nk", f"{pre}/plates/fg.0010.exr"},
        21: {f"{pre}/fg.nk", f"{pre}/plates/fg.0011.exr"},
    }
    assert not found.unresolved
