"""Regressions from a second audit of ``jitrender deps`` on public Nuke scripts (kernowkid/
NUKE_PATH toolsets and shot templates among them): each test writes a small script in
``tmp_path`` and checks, through the CLI, what the requested frames need, worked out from
Foundry's documentation."""

from __future__ import annotations

from pathlib import Path

from tests.resolve.test_nuke_audit import ROOT, deps, files_per_frame, make

# ParticleCache is one of Nuke's own nodes (Foundry's ParticleCache reference; the
# nukescripts.renderpanel.cache_particles_panel function renders one). kernowkid/NUKE_PATH's
# SharedToolSets/TOOLS/3d/motes.nk has one, and jitrender reported it as an unknown gizmo
# class. It reads its ``file`` (.nkpc) only with ``particle_cache_read_from_file`` (default
# off), and then sub-frame files ("particle_cache.0001.01.nkpc") whose names need Nuke.

PARTICLES = (
    "Read {{\n inputs 0\n file {tmp}/sprite.####.exr\n last 10\n name Sprite\n}}\n"
    "ParticleEmitter {{\n inputs 1\n name ParticleEmitter1\n}}\n"
    "ParticleCache {{\n{cache} name ParticleCache1\n}}\n"
    "Camera2 {{\n inputs 0\n name Camera1\n}}\n"
    "push 0\n"
    "ScanlineRender {{\n inputs 3\n name ScanlineRender1\n}}\n"
    "Write {{\n file out.####.exr\n name Write1\n}}\n"
)


def test_particle_cache_is_a_nuke_node_that_reads_nothing_by_default(tmp_path: Path) -> None:
    make(tmp_path, "sprite.0004.exr", "sprite.0005.exr", "cache/p.0005.nkpc")
    cache = f" file {tmp_path}/cache/p.####.nkpc\n"
    document = deps(tmp_path, ROOT + PARTICLES.format(tmp=tmp_path, cache=cache), "5")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {5: {"sprite.0005.exr"}}


def test_particle_cache_reading_its_file_is_reported(tmp_path: Path) -> None:
    make(tmp_path, "sprite.0005.exr", "cache/p.0005.nkpc")
    cache = f" file {tmp_path}/cache/p.####.nkpc\n particle_cache_read_from_file true\n"
    document = deps(tmp_path, ROOT + PARTICLES.format(tmp=tmp_path, cache=cache), "5")
    unresolved = document["unresolved"]
    assert [u["source"] for u in unresolved] == ["ParticleCache1.file"]  # type: ignore[attr-defined]
    # The particle system upstream is still computed ("it relies on its inputs").
    assert files_per_frame(document, tmp_path) == {5: {"sprite.0005.exr"}}


# ModelBuilderGeo is the node Nuke's ModelBuilder bakes geometry into (Foundry's
# nukescripts.modelbuilder.bakeSceneSelection: "Create a ModelBuilderGeo node containing a copy
# of the currently selected geometry"); kernowkid/NUKE_PATH's TOOLS/3d/copyGeo.nk holds one.


def test_model_builder_geo_is_not_taken_for_a_gizmo(tmp_path: Path) -> None:
    make(tmp_path, "tex.exr")
    script = (
        ROOT
        + f"Read {{\n inputs 0\n file {tmp_path}/tex.exr\n name Tex\n}}\n"
        + "ModelBuilderGeo {\n inputs 1\n name ModelBuilderGeo1\n}\n"
        + "Camera2 {\n inputs 0\n name Camera1\n}\n"
        + "push 0\n"
        + "ScanlineRender {\n inputs 3\n name ScanlineRender1\n}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {1: {"tex.exr"}}


# A checkbox knob driven by an expression takes the expression's value: FrameBlend's Custom
# range in Richard Frazer's auto_cleanplate group (franklinvfx/NUKE_ALL_USEFUL_TOOLS
# gizmos/Toolsets/_auto-cleanplate.nk) is ``userange {{parent.customframerange}}``, on in that
# script. Foundry's FrameBlend reference: with Custom on, "the Number of frames are evenly
# distributed across the specified range" (startframe..endframe). jitrender took any
# expression on a checkbox as off and blended the frames before the current one instead.


def test_frame_blend_custom_range_set_by_an_expression(tmp_path: Path) -> None:
    make(tmp_path, *(f"plate.{f:04d}.exr" for f in range(1, 21)))
    script = (
        ROOT
        + f"Read {{\n inputs 0\n file {tmp_path}/plate.####.exr\n last 20\n name Read1\n}}\n"
        + "Group {\n name cleanplate\n addUserKnob {20 User}\n"
        + " addUserKnob {3 numberframes}\n numberframes 3\n"
        + " addUserKnob {3 framerangestart}\n framerangestart 1\n"
        + " addUserKnob {3 framerangeend}\n framerangeend 5\n"
        + " addUserKnob {6 customframerange}\n customframerange true\n}\n"
        + " Input {\n  inputs 0\n  name Input1\n }\n"
        + " FrameBlend {\n  numframes {{parent.numberframes}}\n"
        + "  startframe {{parent.framerangestart}}\n  endframe {{parent.framerangeend}}\n"
        + "  userange {{parent.customframerange}}\n  name FrameBlend3\n }\n"
        + " Output {\n  name Output1\n }\nend_group\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "12")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {12: {f"plate.{f:04d}.exr" for f in (1, 3, 5)}}
    # With the parent's checkbox off, the frames up to the current one are blended.
    off = script.replace("customframerange true", "customframerange false")
    document = deps(tmp_path, off, "12")
    assert files_per_frame(document, tmp_path) == {12: {f"plate.{f:04d}.exr" for f in (10, 11, 12)}}


def test_read_from_file_linked_to_a_parent_checkbox(tmp_path: Path) -> None:
    """A Camera in a group whose ``read_from_file`` follows the group's knob reads its file
    when that knob is on (Camera's reference: "read from file" makes it read ``file``)."""
    make(tmp_path, "cam.abc", "bg.exr")
    script = (
        ROOT
        + "Group {\n inputs 0\n name CamRig\n addUserKnob {20 User}\n"
        + " addUserKnob {6 use_file}\n use_file true\n}\n"
        + " Camera2 {\n  inputs 0\n  read_from_file {{parent.use_file}}\n"
        + f"  file {tmp_path}/cam.abc\n  name Camera1\n }}\n"
        + " Output {\n  name Output1\n }\nend_group\n"
        + f"Read {{\n inputs 0\n file {tmp_path}/bg.exr\n name BG\n}}\n"
        + "Card2 {\n name Card1\n}\n"
        + "ScanlineRender {\n inputs 3\n name ScanlineRender1\n}\n"
        + "Write {\n file out.####.exr\n name Write1\n}\n"
    )
    document = deps(tmp_path, script, "1")
    assert document["unresolved"] == []
    assert files_per_frame(document, tmp_path) == {1: {"cam.abc", "bg.exr"}}
    document = deps(tmp_path, script.replace("use_file true", "use_file false"), "1")
    assert files_per_frame(document, tmp_path) == {1: {"bg.exr"}}
