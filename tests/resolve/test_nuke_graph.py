"""The Nuke resolver follows the node graph, through ``jitrender deps --json``: from the Writes
that render, upstream through the nodes that change time, Switch/Dissolve, groups and disabled
nodes, with each render frame mapped to the file frame Nuke reads (Foundry's reference guide:
TimeOffset, FrameHold, Retime, TimeClip, AppendClip, Switch, Dissolve, TimeWarp)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import put_object

REPO = Path(__file__).resolve().parents[2]
ROOT = "Root {\n inputs 0\n name /show/comp.nk\n first_frame 1001\n last_frame 1003\n}\n"
FRAMES = [1001, 1002, 1003]


def node(cls: str, name: str, knobs: str = "", inputs: int | None = None) -> str:
    head = f" inputs {inputs}\n" if inputs is not None else ""
    return f"{cls} {{\n{head}{knobs}\n name {name}\n}}\n"


def read(name: str, first: int, last: int, extra: str = "") -> str:
    knobs = f" file /show/{name}.####.exr\n first {first}\n last {last}\n{extra}"
    return node("Read", name, knobs, inputs=0)


def write(name: str, extra: str = "") -> str:
    return node("Write", name, f" file /show/out/{name}.####.exr\n{extra}")


RETIME = " input.first 1\n input.last 100\n output.first 1001\n speed "


def two_inputs(
    write_name: str, second: tuple[str, int, int], first: tuple[str, int, int], merge: str
) -> str:
    """Reads ``second`` (the node's input 1) then ``first`` (input 0, on top of the stack) into
    the two-input node ``merge``, into the Write ``write_name``."""
    return chain(write_name, read(*second), read(*first), merge)


def chain(write_name: str, *upstream: str) -> str:
    """``upstream`` (Reads, then the node under test) into the Write ``write_name``: the stack
    hands each node the ones written just before it."""
    return "".join(upstream) + write(write_name)


# Each chain ends in its own Write.
SCRIPT = (
    ROOT
    # TimeOffset 1000: render frame f reads input frame f - 1000.
    + chain("W_offset", read("offset", 1, 100), node("TimeOffset", "Offset", " time_offset 1000"))
    # reverse_input plays the input's range (1-10) backwards: 11 - (f - 1000) = 10, 9, 8.
    + chain(
        "W_reverse",
        read("reverse", 1, 10),
        node("TimeOffset", "Reverse", " time_offset 1000\n reverse_input true"),
    )
    # FrameHold: first_frame 10 at every frame; with increment 2 from 1001: 1001, 1001, 1003.
    + chain("W_hold", read("hold", 1, 100), node("FrameHold", "Hold", " first_frame 10"))
    + chain(
        "W_step",
        read("step", 1001, 1100),
        node("FrameHold", "Step", " first_frame 1001\n increment 2"),
    )
    # Retime at speed 2 from output.first 1001: input 1, 3, 5; at 0.5: 1, 1.5 (1 and 2), 2.
    + "".join(
        chain(f"W_{name}", read(name, 1, 100), node("Retime", name.title(), RETIME + speed))
        for name, speed in (("fast", "2"), ("slow", "0.5"))
    )
    # TimeClip 1-50 starting at 1001, reversed: 50, 49, 48.
    + chain(
        "W_clip",
        read("clip", 1, 50),
        node(
            "TimeClip",
            "Clip",
            ' first 1\n last 50\n frame_mode "start at"\n frame 1001\n reverse true',
        ),
    )
    # AppendClip from 1001: clip E (frames 1-2) then F (1-5): E1, E2, F1; with a one-frame
    # cross dissolve, X (1-2) at 1001-1002 and Y (1-5) from 1002: 1002 reads both.
    + "".join(
        two_inputs(
            f"W_{label.lower()}",
            (second, 1, 5),
            (first, 1, 2),
            node("AppendClip", label, " firstFrame 1001" + knobs, inputs=2),
        )
        for label, second, first, knobs in (
            ("Append", "appendF", "appendE", ""),
            ("Cross", "crossY", "crossX", "\n cross_dissolve 1"),
        )
    )
    # Switch which 1: input 1 only; which {{frame>1001}}: input 0 at 1001, input 1 after;
    # Dissolve which 0.5: both inputs; a disabled Merge passes its input 0 (B) only.
    + "".join(
        two_inputs(
            f"W_{name}",
            (second, 1001, 1003),
            (first, 1001, 1003),
            node(cls, label, knobs, inputs=2),
        )
        for name, second, first, cls, label, knobs in (
            ("switch", "switch1", "switch0", "Switch", "Static", " which 1"),
            ("bytime", "bytime1", "bytime0", "Switch", "ByTime", " which {{frame>1001}}"),
            ("dissolve", "dissolve1", "dissolve0", "Dissolve", "Mix", " which 0.5"),
            ("disabled", "mergeA", "mergeB", "Merge2", "Off", " disable true"),
        )
    )
    # A group: its Input reads the group's input, through a TimeOffset of 1 inside.
    + chain(
        "W_group",
        read("grouped", 1, 2000),
        node("Group", "G"),
        node("Input", "Input1", inputs=0),
        node("TimeOffset", "Inner", " time_offset 1"),
        node("Output", "Output1"),
        "end_group\n",
    )
    # An animated TimeWarp needs Nuke: every frame of its input (1-3) is listed, and why.
    + chain(
        "W_warp",
        read("warp", 1, 3),
        node("TimeWarp", "Warp", " lookup {{curve x1001 1 x1003 3}}"),
    )
    # A [python] disable needs Nuke: reported, and the Read is listed.
    + read("python", 1001, 1003, " disable \"\\[python \\{nuke.env\\['gui']\\}]\"")
    + write("W_python")
    # '@' is a literal character in a Nuke path; only # and %04d count.
    + node("Read", "At", " file /show/bobo@studio/p@.####.exr\n first 1001\n last 1003", inputs=0)
    + write("W_at")
    # An unset file knob is empty: nothing, and nothing unresolved.
    + node("Read", "Empty", " first 1\n last 10", inputs=0)
    + write("W_empty")
    # Not read by any render: a Read into a Viewer, one into a disabled Write, one into nothing.
    + read("viewer_only", 1, 100)
    + node("Viewer", "Viewer1")
    + read("disabled_write", 1, 100)
    + write("W_off", " disable true")
    + read("dangling", 1, 100)
)


def frames_of(name: str, *file_frames: int) -> dict[int, set[str]]:
    """Render frame i (1001, 1002, 1003) reads ``name``'s ``file_frames[i]``."""
    return {f: {f"{name}.{n:04d}.exr"} for f, n in zip(FRAMES, file_frames, strict=True)}


EXPECTED: dict[str, dict[int, set[str]]] = {
    "offset": frames_of("offset", 1, 2, 3),
    "reverse": frames_of("reverse", 10, 9, 8),
    "crossX": {1001: {"crossX.0001.exr"}, 1002: {"crossX.0002.exr"}, 1003: set()},
    "crossY": {1001: set(), 1002: {"crossY.0001.exr"}, 1003: {"crossY.0002.exr"}},
    "hold": frames_of("hold", 10, 10, 10),
    "step": frames_of("step", 1001, 1001, 1003),
    "fast": frames_of("fast", 1, 3, 5),
    "slow": {
        1001: {"slow.0001.exr"},
        1002: {"slow.0001.exr", "slow.0002.exr"},
        1003: {"slow.0002.exr"},
    },
    "clip": frames_of("clip", 50, 49, 48),
    "appendE": {1001: {"appendE.0001.exr"}, 1002: {"appendE.0002.exr"}, 1003: set()},
    "appendF": {1001: set(), 1002: set(), 1003: {"appendF.0001.exr"}},
    "switch1": frames_of("switch1", 1001, 1002, 1003),
    "bytime0": {1001: {"bytime0.1001.exr"}, 1002: set(), 1003: set()},
    "bytime1": {1001: set(), 1002: {"bytime1.1002.exr"}, 1003: {"bytime1.1003.exr"}},
    "dissolve0": frames_of("dissolve0", 1001, 1002, 1003),
    "dissolve1": frames_of("dissolve1", 1001, 1002, 1003),
    "mergeB": frames_of("mergeB", 1001, 1002, 1003),
    "grouped": frames_of("grouped", 1000, 1001, 1002),
    "warp": {f: {"warp.0001.exr", "warp.0002.exr", "warp.0003.exr"} for f in FRAMES},
    "python": frames_of("python", 1001, 1002, 1003),
}


def deps(bucket: str, tmp_path: Path, *extra: str, script: str = SCRIPT) -> dict[str, Any]:
    """``jitrender deps --json`` of ``script`` saved at ``bucket``/show/comp.nk, for frames
    1001-1003, with /show mapped to ``bucket``/show."""
    put_object(f"{bucket}/show/comp.nk", script.encode())
    result = subprocess.run(
        [
            sys.executable, "-m", "jitrender.cli", "deps", f"{bucket}/show/comp.nk",
            "--frames", "1001-1003", "--json", "--path-map", f"/show={bucket}/show",
            "--cache-dir", str(tmp_path / "cache"), *extra,
        ],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    return document


def per_read(document: dict[str, Any], bucket: str) -> dict[str, dict[int, set[str]]]:
    """Read name -> render frame -> the file names it needs there."""
    found: dict[str, dict[int, set[str]]] = {}
    for dep in document["deps"]:
        read_name = dep["source"].split(".")[0]
        name = dep["url"].rsplit("/", 1)[-1]
        assert dep["url"].startswith(f"{bucket}/show/")
        for frame in dep["frames"] if dep["frames"] is not None else FRAMES:
            found.setdefault(read_name, {f: set() for f in FRAMES})[frame].add(name)
    return found


@pytest.mark.parametrize("where", ["local_bucket", "gcs_bucket"])
def test_files_each_render_frame_reads_along_the_graph(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    bucket = request.getfixturevalue(where)
    document = deps(bucket, tmp_path)
    found = per_read(document, bucket)
    at = found.pop("At")
    assert at == {f: {f"p@.{f}.exr"} for f in FRAMES}
    assert {d["url"] for d in document["deps"] if d["source"] == "At.file"} == {
        f"{bucket}/show/bobo@studio/p@.{f}.exr" for f in FRAMES
    }
    sources = {d["source"].split(".")[0] for d in document["deps"]}
    for name, frames in EXPECTED.items():
        assert found.get(name) == frames, name
    # Nothing else: not the untaken Switch input, the disabled Merge's A, the Viewer-only,
    # disabled-Write or dangling Reads, the Writes' outputs.
    assert sources == set(EXPECTED) | {"At"}
    assert {u["source"] for u in document["unresolved"]} == {"Warp", "python.disable"}
    [warp] = [u for u in document["unresolved"] if u["source"] == "Warp"]
    assert "1-3" in warp["why"]


def test_the_jobs_nuke_stage_names_the_writes_that_render(
    local_bucket: str, tmp_path: Path
) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(
        "frames: 1001-1003\n"
        "stages:\n  - name: comp\n    engine: nuke\n    args: {write: [W_offset, W_hold]}\n"
        f"outputs: {{to: {local_bucket}/renders}}\n"
    )
    document = deps(local_bucket, tmp_path, "--job", str(job))
    assert per_read(document, local_bucket) == {
        "offset": EXPECTED["offset"],
        "hold": EXPECTED["hold"],
    }
    assert document["unresolved"] == []


# A gizmo: Over puts its Read (the instance's grain_file) over the gizmo's input; Unused
# feeds nothing.
GIZMO = (
    "Gizmo {\n inputs 1\n addUserKnob {20 User}\n addUserKnob {2 grain_file}\n"
    " grain_file /show/grain/default.####.exr\n}\n"
    + node("Input", "Input1", inputs=0)
    + node("Read", "GrainRead", ' file "\\[value parent.grain_file]"\n first 1\n last 2000', 0)
    + node("Merge2", "Over", inputs=2)
    + "set Nover [stack 0]\n"
    + node("Read", "Unused", " file /show/grain/unused.####.exr", inputs=0)
    + "push $Nover\n"
    + node("Output", "Output1")
    + "end_group\n"
)


def test_a_gizmo_is_walked_through_its_input_and_output(
    local_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gizmo's Output reads Over (Grain over the gizmo's Input, i.e. the instance's input,
    offset by the TimeOffset before it); the Read inside that feeds nothing is not listed."""
    put_object(f"{local_bucket}/show/gizmos/Grainy.gizmo", GIZMO.encode())
    monkeypatch.setenv("NUKE_PATH", "/show/gizmos")
    script = (
        ROOT
        + read("plate", 1, 2000)
        + node("TimeOffset", "Shift", " time_offset -10")
        + node("Grainy", "Grain1", " grain_file /show/grain/fine.####.exr")
        + write("W_grain")
    )
    document = deps(local_bucket, tmp_path, script=script)
    by_source: dict[str, set[str]] = {}
    for dep in document["deps"]:
        by_source.setdefault(dep["source"], set()).add(dep["url"].split("/show/", 1)[1])
    assert by_source == {
        "Grain1": {"gizmos/Grainy.gizmo"},
        "Grain1.GrainRead.file": {f"grain/fine.{f}.exr" for f in FRAMES},
        "plate.file": {f"plate.{f + 10}.exr" for f in FRAMES},
    }
    assert document["unresolved"] == []
