"""Regressions from auditing ``jitrender deps`` on public Nuke scripts outside the corpus: each
test writes a small script in ``tmp_path`` and checks, through the CLI, the files the requested
frames need, worked out from Foundry's documentation (and, for TCL list commands, the TCL
manual)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

ROOT = "Root {\n inputs 0\n first_frame 1\n last_frame 100\n}\n"


def deps(tmp_path: Path, script: str, frames: str, name: str = "comp.nk") -> dict[str, object]:
    """``jitrender deps`` on ``script`` saved as ``tmp_path/name``, as JSON."""
    scene = tmp_path / name
    scene.parent.mkdir(parents=True, exist_ok=True)
    scene.write_text(script)
    args = [sys.executable, "-m", "jitrender.cli", "deps", str(scene), "--frames", frames]
    args += ["--json", "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode in (0, 65), result.stderr
    document: dict[str, object] = json.loads(result.stdout)
    assert "deps" in document, document
    return document


def files_per_frame(document: dict[str, object], tmp_path: Path) -> dict[int, set[str]]:
    """Each requested frame -> the listed files (relative to ``tmp_path`` where inside it)."""
    frames: list[int] = document["frames"]  # type: ignore[assignment]
    out: dict[int, set[str]] = {f: set() for f in frames}
    for dep in document["deps"]:  # type: ignore[attr-defined]
        url: str = dep["url"]
        path = url.removeprefix("file://").removeprefix(f"{tmp_path}/")
        for frame in dep["frames"] if dep["frames"] is not None else frames:
            out[frame].add(path)
    return out


def make(tmp_path: Path, *names: str) -> None:
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")


# A published LiveGroup is saved without its member nodes and without an end_group (Foundry's
# LiveGroup reference: publishing "does not add the contents of the LiveGroup to the current
# script"; they are read from its file). Seen in Vincannes/NukeAPI tests/083_060-cmp-base-v016.nk,
# which jitrender refused to parse ("LiveGroup ... is never closed").


def test_a_published_livegroup_has_no_members_and_no_end_group(tmp_path: Path) -> None:
    make(tmp_path, "plate.0001.exr", "plate.0002.exr", "elem.exr", "live/asset.nk")
    (tmp_path / "live" / "asset.nk").write_text(
        ROOT + f"Read {{\n inputs 0\n file {tmp_path}/elem.exr\n name Read1\n}}\nOutput {{\n}}\n"
    )
    script = (
        ROOT
        + f"Read {{\n inputs 0\n file {tmp_path}/plate.####.exr\n last 100\n name Plate\n}}\n"
        + "LiveGroup {\n published true\n file live/asset.nk\n name ASSET1\n}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1-2")
    found = files_per_frame(document, tmp_path)
    assert found == {
        1: {"plate.0001.exr", "live/asset.nk", "elem.exr"},
        2: {"plate.0002.exr", "live/asset.nk", "elem.exr"},
    }


def test_nodes_after_a_published_livegroup_stay_at_the_top_level(tmp_path: Path) -> None:
    """The nodes after it are not its members: a Read there is read by the Write after it."""
    make(tmp_path, "a.exr", "b.exr")
    script = (
        ROOT
        + "LiveGroup {\n inputs 0\n published true\n file missing/asset.nk\n name LG\n"
        + " disable true\n}\n"
        + f"Read {{\n inputs 0\n file {tmp_path}/a.exr\n name Read1\n}}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1")
    assert files_per_frame(document, tmp_path) == {1: {"a.exr"}}
    sources = {d["source"] for d in document["deps"]}  # type: ignore[attr-defined]
    assert sources == {"Read1.file"}


def test_an_editable_livegroup_still_holds_its_members(tmp_path: Path) -> None:
    make(tmp_path, "inside.exr")
    script = (
        ROOT
        + "LiveGroup {\n inputs 0\n name LG\n}\n"
        + f" Read {{\n  inputs 0\n  file {tmp_path}/inside.exr\n  name Read1\n }}\n"
        + " Output {\n  name Output1\n }\n"
        + "end_group\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1")
    assert files_per_frame(document, tmp_path) == {1: {"inside.exr"}}


# TCL list commands in file knobs: ``[lindex [split [value root.name] /] 3]`` and
# ``[lindex [file split [value root.name]] 6]`` name the show and shot in that script's
# LiveGroups, ``[join [lrange [split ...] 0 end-3] /]`` the render folder in szuhow/nkjob's
# template.nk. Their meaning is TCL's own (split, join, lindex, lrange, file split).


def test_tcl_list_commands_in_a_read_file_knob(tmp_path: Path) -> None:
    make(tmp_path, "sh010/plates/sh010.0005.exr", "sh010/plates/sh010.0006.exr")
    # root.name is <tmp>/sh010/comp/work/comp.nk: two folders up is <tmp>/sh010, and the
    # fourth element from the end of its /-split is sh010.
    read_file = (
        "\\[join \\[lrange \\[split \\[file dirname \\[value root.name]] /] 0 end-2] /]"
        "/plates/\\[lindex \\[split \\[value root.name] /] end-3].####.exr"
    )
    script = (
        ROOT
        + f'Read {{\n inputs 0\n file "{read_file}"\n first 5\n last 6\n name Read1\n}}\n'
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "4-6", "sh010/comp/work/comp.nk")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {
        4: {"sh010/plates/sh010.0005.exr"},
        5: {"sh010/plates/sh010.0005.exr"},
        6: {"sh010/plates/sh010.0006.exr"},
    }


def test_tcl_lindex_of_file_split_and_llength(tmp_path: Path) -> None:
    make(tmp_path, "a/b/c/elem_c_3.exr")
    folder = tmp_path / "a" / "b" / "c"
    depth = len(folder.parts)  # file split of /x/y gives / x y: the root is an element
    read_file = (
        f"{tmp_path}/a/b/\\[lindex \\[file split \\[value root.name]] {depth - 1}]/"
        "elem_\\[lindex \\[file split \\[value root.name]] end-1]_"
        "\\[llength \\[split a/b/c /]].exr"
    )
    script = (
        ROOT
        + f'Read {{\n inputs 0\n file "{read_file}"\n name Read1\n}}\n'
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1", "a/b/c/comp.nk")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {1: {"a/b/c/elem_c_3.exr"}}


def test_tcl_lindex_out_of_range_is_empty(tmp_path: Path) -> None:
    make(tmp_path, "x_.exr")
    script = (
        ROOT
        + f'Read {{\n inputs 0\n file "{tmp_path}/x_\\[lindex {{a b}} 5].exr"\n name Read1\n}}\n'
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1")
    assert files_per_frame(document, tmp_path) == {1: {"x_.exr"}}


# TimeEcho: "Frames to look at" (framesbehind, default 1) "sets the number of frames to merge
# together, counting backwards from the current frame (and including the current frame). For
# example, if the current frame is 10, and you set this value to 4, TimeEcho merges frames 7, 8,
# 9, and 10" (Foundry's TimeEcho reference). jitrender passed the frame through unchanged.


def test_time_echo_reads_framesbehind_frames_up_to_the_current_one(tmp_path: Path) -> None:
    make(tmp_path, *(f"plate.{f:04d}.exr" for f in range(1, 21)))
    script = (
        ROOT
        + f"Read {{\n inputs 0\n file {tmp_path}/plate.####.exr\n last 20\n name Read1\n}}\n"
        + "TimeEcho {\n framesbehind 4\n name TimeEcho1\n}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "10")
    assert files_per_frame(document, tmp_path) == {
        10: {f"plate.{f:04d}.exr" for f in (7, 8, 9, 10)}
    }
    # Before the Read's first frame the hold reads frame 1.
    document = deps(tmp_path, script, "2")
    assert files_per_frame(document, tmp_path) == {2: {"plate.0001.exr", "plate.0002.exr"}}


def test_time_echo_default_reads_only_the_current_frame(tmp_path: Path) -> None:
    make(tmp_path, *(f"plate.{f:04d}.exr" for f in range(1, 21)))
    script = (
        ROOT
        + f"Read {{\n inputs 0\n file {tmp_path}/plate.####.exr\n last 20\n name Read1\n}}\n"
        + "TimeEcho {\n name TimeEcho1\n}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "10")
    assert files_per_frame(document, tmp_path) == {10: {"plate.0010.exr"}}


# FrameBlend (Foundry's reference): "When Custom is disabled, blend together Number of frames-1
# previous frames and the current frame" (numframes, default 5); "When Custom is enabled, then
# the Number of frames are evenly distributed across the specified range" (startframe,
# endframe, userange). jitrender passed the frame through unchanged.


def plate_script(tmp_path: Path, node: str, extra: str = "") -> str:
    make(tmp_path, *(f"plate.{f:04d}.exr" for f in range(1, 31)))
    return (
        ROOT
        + extra
        + f"Read {{\n inputs 0\n file {tmp_path}/plate.####.exr\n last 30\n name Read1\n}}\n"
        + node
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )


def plates(*frames: int) -> set[str]:
    return {f"plate.{f:04d}.exr" for f in frames}


def test_frame_blend_default_reads_the_four_previous_frames_and_the_current(
    tmp_path: Path,
) -> None:
    script = plate_script(tmp_path, "FrameBlend {\n name FrameBlend1\n}\n")
    document = deps(tmp_path, script, "10")
    assert files_per_frame(document, tmp_path) == {10: plates(6, 7, 8, 9, 10)}


def test_frame_blend_custom_range_is_the_same_for_every_frame(tmp_path: Path) -> None:
    node = "FrameBlend {\n numframes 3\n startframe 20\n endframe 24\n userange true\n}\n"
    document = deps(tmp_path, plate_script(tmp_path, node), "1-2")
    assert files_per_frame(document, tmp_path) == {1: plates(20, 22, 24), 2: plates(20, 22, 24)}


def test_frame_blend_mask_input_is_read_at_the_frame_itself(tmp_path: Path) -> None:
    make(tmp_path, *(f"matte.{f:04d}.exr" for f in range(1, 31)))
    matte = f"Read {{\n inputs 0\n file {tmp_path}/matte.####.exr\n last 30\n name Matte\n}}\n"
    node = "FrameBlend {\n inputs 2\n numframes 2\n name FrameBlend1\n}\n"
    document = deps(tmp_path, plate_script(tmp_path, node, extra=matte), "10")
    assert files_per_frame(document, tmp_path) == {10: plates(9, 10) | {"matte.0010.exr"}}


# VectorGenerator (Foundry's reference): two sets of motion vectors for each frame, forward (the
# next frame warped onto the current one) and backward (the previous frame warped onto it).


def test_vector_generator_reads_the_neighbouring_frames(tmp_path: Path) -> None:
    script = plate_script(tmp_path, "VectorGenerator {\n name VectorGenerator1\n}\n")
    document = deps(tmp_path, script, "10")
    assert files_per_frame(document, tmp_path) == {10: plates(9, 10, 11)}
    document = deps(tmp_path, script, "30")  # past the last frame the Read holds frame 30
    assert files_per_frame(document, tmp_path) == {30: plates(29, 30)}


# ContactSheet (Foundry's reference): with "Use frames instead of inputs" (splitinputs) "the
# FrameRange specified is read from each input", startframe..endframe. Seen in skasse/nuke's
# template_mod.nk (a 40-frame contact sheet written to one PNG); jitrender read the render
# frame only.


def test_contact_sheet_of_frames_reads_its_frame_range_from_every_input(tmp_path: Path) -> None:
    make(tmp_path, *(f"matte.{f:04d}.exr" for f in range(1, 31)))
    matte = f"Read {{\n inputs 0\n file {tmp_path}/matte.####.exr\n last 30\n name Matte\n}}\n"
    node = "ContactSheet {\n inputs 2\n splitinputs true\n startframe 3\n endframe 5\n}\n"
    document = deps(tmp_path, plate_script(tmp_path, node, extra=matte), "1-2")
    expected = plates(3, 4, 5) | {f"matte.{f:04d}.exr" for f in (3, 4, 5)}
    assert files_per_frame(document, tmp_path) == {1: expected, 2: expected}


def test_contact_sheet_of_inputs_reads_each_input_at_the_frame(tmp_path: Path) -> None:
    node = "ContactSheet {\n startframe 3\n endframe 5\n}\n"
    document = deps(tmp_path, plate_script(tmp_path, node), "7")
    assert files_per_frame(document, tmp_path) == {7: plates(7)}


# FrameHold saved by Nuke 13 (Vincannes/NukeAPI 083_060-cmp-base-v016.nk, "version 13.2 v8";
# NinjaCats/nukeParser test.nk, 13.1) writes its "first frame" control as firstFrame, where Nuke
# 11 and Foundry's reference write first_frame; jitrender took the default 0 and held the Read's
# first frame instead.


def test_frame_hold_first_frame_as_nuke_13_saves_it(tmp_path: Path) -> None:
    script = plate_script(tmp_path, "FrameHold {\n firstFrame 12\n name FrameHold1\n}\n")
    document = deps(tmp_path, script, "3-4")
    assert files_per_frame(document, tmp_path) == {3: plates(12), 4: plates(12)}


def test_frame_hold_first_frame_as_older_nukes_save_it(tmp_path: Path) -> None:
    node = "FrameHold {\n first_frame 12\n increment 5\n name FrameHold1\n}\n"
    document = deps(tmp_path, plate_script(tmp_path, node), "13-17")
    found = files_per_frame(document, tmp_path)
    assert found == {13: plates(12), 16: plates(12), 17: plates(17), 14: plates(12), 15: plates(12)}


# [python {nuke.toNode("Global_Data").knob("baseoutput").value()}] names another node's knob, as
# [value Global_Data.baseoutput] does (SGSMarkNA/Nuke_User_Tools ToolSets/CPG/
# CPG_Contact_Sheet_Output.nk builds every file path this way).


def test_python_knob_value_of_another_node_in_a_file_knob(tmp_path: Path) -> None:
    make(tmp_path, "shots/sh010_bg.png", "shots/sh010_fg.png")
    data = (
        "NoOp {\n inputs 0\n name Global_Data\n addUserKnob {1 base}\n"
        f" base {tmp_path}/shots\n addUserKnob {{1 shot}}\n shot sh010\n}}\n"
    )
    knob = '\\[python \\{nuke.toNode(\\"Global_Data\\").knob(\\"base\\").value()\\}]'
    item = "\\[python \\{nuke.toNode('Global_Data')\\['shot'].getValue()\\}]"
    script = (
        ROOT
        + data
        + f'Read {{\n inputs 0\n file "{knob}/{item}_bg.png"\n name BG\n}}\n'
        + f'Read {{\n inputs 0\n file "{knob}/{item}_fg.png"\n name FG\n}}\n'
        + "Merge2 {\n inputs 2\n}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {1: {"shots/sh010_bg.png", "shots/sh010_fg.png"}}
