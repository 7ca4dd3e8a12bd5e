"""Fuzzing the Nuke resolver: whatever bytes a .nk holds, the only error that may escape is
SceneParseError (one line, naming the file, line and column)."""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jitrender.errors import SceneParseError
from jitrender.paths import PathMap, file_url, local_path_of
from jitrender.resolve.base import ResolveContext
from jitrender.resolve.nuke import resolve_nuke
from jitrender.storage import LocalStore, ObjectInfo

DATA = Path(__file__).parent / "data"

VALID_SCRIPTS = [
    (DATA / "stereo_comp.nk").read_text(),
    """Root {
 inputs 0
 project_directory "\\[python \\{nuke.script_directory()\\}]"
 views "left #ff0000\\nright #00ff00"
 OCIO_config custom
 customOCIOConfigPath config.ocio
}
clone node7f00a1|Read|4242 Read {
 file "\\[value root.project_directory]/p.%V.####.exr"
 first {{root.first_frame}}
 last 100
 before bounce
 after loop
 frame_mode offset
 frame 10
 name Read1
}
set C7f00a1 [stack 0]
LiveGroup {
 file live.nk
 name LG
}
 Precomp {
  file "\\[file join \\[file dirname \\[value root.name]] pre.nk]"
  reading true
  on_error "read input"
  name Pre
 }
 Read {
  file {tex/t.<UDIM>.exr}
  frame "frame*2+\\[value parent.offset]"
  name R
 }
end_group
push $C7f00a1
clone $C7f00a1 {
 xpos 1
}
Camera2 {
 read_from_file true
 file $env(HOME)/cam.abc
 name Cam
}
Write {
 file out/comp.%04d.exr
 reading true
 frame_mode offset
 frame -1000
 on_error black
 name Back
}
Fuzz {
 plate p.####.exr
 geo g.abc
 name Fuzz1
}
""",
]

# Next to the fuzzed script: the precomp it reads back and the gizmo its Fuzz node uses.
PRECOMP = """Root {
 inputs 0
}
Read {
 file plates/fg.####.exr
 last 1100
 name FG
}
Write {
 file renders/pre.####.exr
 name PreOut
}
"""
GIZMO = """Gizmo {
 addUserKnob {2 plate}
 plate default.####.exr
 addUserKnob {41 geo l geometry T Geo.file}
}
 Read {
  file "\\[value parent.plate]"
  last 100
  name R
 }
 ReadGeo2 {
  file default.abc
  name Geo
 }
 Fuzz {
  name Inner
 }
end_group
"""

# Characters that matter to the TCL reader, over-represented.
TCL_TEXT = st.text(
    alphabet=st.sampled_from(list('{}[]"\\ \n\t;$#.%/<>') + list("abcdefFV0123456789")),
    max_size=400,
)
KEYWORDS = st.sampled_from(
    [
        "Read {", "}", "Group {", "end_group", "clone $C1 {", "set C1 [stack 0]", "push $C1",
        "file ", "first ", "last ", "before ", "after loop", "frame_mode \"start at\"", "frame ",
        "disable true", "{{curve x1 0}}", "[value root.name]", "\\[", "\"", "{", "[", "Precomp {",
        "LiveGroup {", "views {{left \"\"} {right \"\"}}", "name ", "\n", " ", "####", "%V",
        "<UDIM>", "Root {", "OCIO_config custom", "customOCIOConfigPath ", "1e400", "nan",
        "[expr 1/0]", "[value a.b]", "[python x]", "$env(", "parent.", "1001", "-5",
        "Write {", "reading true", "on_error black", "on_error \"read input\"", "Fuzz {",
        "Gizmo {", "addUserKnob {41 f T R.file}", "addUserKnob {2 plate}", "use_output true",
        "output PreOut", "frame_mode offset",
    ]
)  # fmt: skip


@pytest.fixture(scope="module")
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "pre.nk").write_text(PRECOMP)
        (Path(tmp) / "Fuzz.gizmo").write_text(GIZMO)
        yield Path(tmp)


def _list(prefix: str, recursive: bool) -> list[ObjectInfo]:
    if not prefix.startswith("file://"):
        return []
    try:
        return LocalStore().list(prefix, recursive=recursive)
    except OSError:
        return []


def _resolve(folder: Path, data: bytes) -> None:
    scene = folder / "fuzz.nk"
    scene.write_bytes(data)

    def fetch(url: str) -> Path:
        path = local_path_of(url)
        if folder not in path.parents:
            raise FileNotFoundError(url)
        return path

    ctx = ResolveContext(file_url(scene), scene, (1, 2, 1001), PathMap(), _list, fetch)
    try:
        found = resolve_nuke(ctx)
    except SceneParseError as exc:
        assert "\n" not in exc.message
        assert re.match(r"file://.*fuzz\.nk:\d+:\d+: \S", exc.message), exc.message
        return
    for dep in found.deps:
        assert dep.url


FUZZ = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_only_ever_raise_scene_parse_error(folder: Path, data: bytes) -> None:
    _resolve(folder, data)


@FUZZ
@given(text=TCL_TEXT)
def test_random_tcl_like_text_only_ever_raises_scene_parse_error(folder: Path, text: str) -> None:
    _resolve(folder, text.encode())


@FUZZ
@given(pieces=st.lists(st.one_of(KEYWORDS, TCL_TEXT.map(lambda t: t[:12])), max_size=60))
def test_keyword_soup_only_ever_raises_scene_parse_error(folder: Path, pieces: list[str]) -> None:
    _resolve(folder, "".join(pieces).encode())


@FUZZ
@given(
    which=st.sampled_from(range(len(VALID_SCRIPTS))),
    edits=st.lists(
        st.tuples(
            st.floats(0, 1), st.integers(0, 40), st.one_of(KEYWORDS, TCL_TEXT.map(lambda t: t[:8]))
        ),
        min_size=1,
        max_size=6,
    ),
)
def test_mutated_valid_scripts_only_ever_raise_scene_parse_error(
    folder: Path, which: int, edits: list[tuple[float, int, str]]
) -> None:
    text = VALID_SCRIPTS[which]
    for where, cut, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + cut :]
    _resolve(folder, text.encode())


@FUZZ
@given(which=st.sampled_from(range(len(VALID_SCRIPTS))), where=st.floats(0, 1))
def test_truncated_scripts_only_ever_raise_scene_parse_error(
    folder: Path, which: int, where: float
) -> None:
    text = VALID_SCRIPTS[which]
    _resolve(folder, text[: int(where * len(text))].encode())


def test_every_truncation_of_a_real_script_is_reported_or_resolved(folder: Path) -> None:
    text = VALID_SCRIPTS[0]
    for end in range(0, len(text), 7):
        _resolve(folder, text[:end].encode())


def test_an_unterminated_quote_fails_fast(folder: Path) -> None:
    with pytest.raises(SceneParseError, match="unterminated quoted string"):
        resolve_text = 'Read {\n file "' + "a" * 200_000 + "\n}\n"
        scene = folder / "long.nk"
        scene.write_text(resolve_text)
        resolve_nuke(ResolveContext(file_url(scene), scene, (1,), PathMap(), _list, local_path_of))
