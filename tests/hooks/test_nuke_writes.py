"""Nuke Writes land in the bucket: ``jitrender run`` with the ``nuke`` engine, the Nuke plugin
(``hooks/nuke``) and the run's agent, against fake-gcs-server, on a public Nuke script
(``dl_multi_load_save/multi-load-save.nk`` from the corpus: three Writes, two Reads).

Real Nuke cannot run on these machines, so the ``nuke`` binary is a stand-in (``FAKE_NUKE``):
it takes the command line the engine builds (``-x -F 50-51 script.nk``), loads
``hooks/nuke/init.py`` from ``NUKE_PATH`` the way Nuke does at start-up with a stand-in
``nuke`` module (``addFilenameFilter``, ``addAfterFrameRender``, ``addAfterRender``,
``thisNode``, ``frame``), reads each Read's file of the frame through the registered filter
and renders each Write's file through it (some with the frame-token pattern, some with the
frame's own name, as Nuke may pass either), calling the after-frame callbacks after each
frame as Nuke does. Everything else — the engine, the filter, the agent, the uploader, the
bucket — is the real thing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import put_object
from tests.renderjobs import bucket_objects

ROOT = Path(__file__).resolve().parents[2]
CASE = ROOT / ".." / "shared" / "corpus" / "nuke" / "cases" / "dl_multi_load_save"

FAKE_NUKE = r"""
import os, re, sys, types
argv = sys.argv[1:]
frames, script, i = [], argv[-1], 0
while i < len(argv) - 1:
    if argv[i] == "-F":
        first, _, last = argv[i + 1].partition("-")
        frames += range(int(first), int(last or first) + 1)
        i += 2
    else:
        i += 2 if argv[i] == "-X" else 1
hooks = os.environ["NUKE_PATH"].split(os.pathsep)[0]
state = {"node": None, "frame": 0}
filters, after_frame, after_render = [], [], []

class Knob:
    def __init__(self, value): self._value = value
    def value(self): return self._value

class Node:
    def __init__(self, cls, knobs): self.cls, self.knobs = cls, knobs
    def Class(self): return self.cls
    def knob(self, name): return Knob(self.knobs[name]) if name in self.knobs else None

nuke = types.ModuleType("nuke")
nuke.addFilenameFilter = filters.append
nuke.addAfterFrameRender = after_frame.append
nuke.addAfterRender = after_render.append
nuke.thisNode = lambda: state["node"]
nuke.frame = lambda: state["frame"]
sys.modules["nuke"] = nuke
sys.path.insert(0, hooks)
init = os.path.join(hooks, "init.py")
exec(compile(open(init).read(), init, "exec"), {"__name__": "init"})

nodes, current = [], None
for line in open(script):
    start = re.match(r"^(\w+) \{$", line)
    if start:
        current = (start.group(1), {})
        nodes.append(current)
        continue
    knob = re.match(r"^ (\w+) (.*)$", line)
    if knob and current is not None:
        current[1].setdefault(knob.group(1), knob.group(2).strip('"'))
    if line.startswith("}"):
        current = None

def at(pattern, frame):
    return re.sub("#+", lambda m: f"{frame:0{len(m.group())}d}", pattern)

def through_filters(path):
    for function in filters:
        answer = function(path)
        path = path if answer is None else answer
    return path

here = os.path.dirname(script)
for frame in frames:
    state["frame"] = frame
    read = []
    for cls, knobs in nodes:
        if cls == "Read":
            state["node"] = Node(cls, knobs)
            local = through_filters(os.path.join(here, knobs["file"]))
            first, last = int(knobs.get("first", 1)), int(knobs.get("last", frame))
            with open(at(local, min(max(frame, first), last)), "rb") as handle:
                read.append(handle.read().decode())
    for cls, knobs in nodes:
        if cls == "Write":
            state["node"] = Node(cls, knobs)
            if knobs["name"] == "Write2":  # the pattern, frame filled in by "Nuke"
                target = at(through_filters(knobs["file"]), frame)
            else:  # the frame's own file name
                target = through_filters(at(knobs["file"], frame))
            with open(target, "w") as handle:
                handle.write(f"{knobs['name']} frame {frame} from {read}")
            for callback in after_frame:
                callback()
for callback in after_render:
    callback()
"""


@pytest.mark.skipif(not CASE.is_dir(), reason="the public corpus (../shared/corpus) is absent")
def test_nuke_writes_land_in_the_bucket_frame_by_frame(gcs_bucket: str, tmp_path: Path) -> None:
    script = (CASE / "multi-load-save.nk").read_text()
    # Write1 renders to a studio path below outputs.to; Write2/Write3 keep their relative paths.
    script = script.replace(
        "file output/output_####.png", "file /mnt/show/renders/multi/comp.####.png"
    )
    put_object(f"{gcs_bucket}/scenes/multi/multi-load-save.nk", script.encode())
    for frame in range(45, 56):  # the frames the Read2 needs, and decoys around them
        put_object(f"{gcs_bucket}/scenes/multi/some_exrs_{frame:04d}.exr", f"exr{frame}".encode())
    for frame in range(1, 11):
        put_object(f"{gcs_bucket}/scenes/multi/input_seq_{frame:04d}.jpg", f"jpg{frame}".encode())
    fake = tmp_path / "bin" / "nuke"
    fake.parent.mkdir()
    fake.write_text(f"#!{sys.executable}\n{FAKE_NUKE}")
    fake.chmod(0o755)
    job = {
        "scene": f"{gcs_bucket}/scenes/multi/multi-load-save.nk",
        "frames": "50-51",
        "path_map": [{"from": "/mnt/show", "to": gcs_bucket}],
        "stages": [{"name": "comp", "per": "chunk", "engine": "nuke", "args": {"nuke": str(fake)}}],
        "outputs": {
            "to": f"{gcs_bucket}/renders/multi",
            "files": ["comp.####.png", "more_output_####.exr", "third_output_####.png"],
        },
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    result = subprocess.run(
        [sys.executable, "-m", "jitrender.cli", "run", str(job_file), "--json",
         "--progress", "plain", "--cache-dir", str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"]["done"] == [50, 51]
    objects = {n: data for n, (_, data) in bucket_objects(gcs_bucket, "renders/multi/").items()}
    names = {n for n in objects if "/_jitrender/" not in n}
    assert names == {
        f"renders/multi/{stem}{frame:04d}.{ext}"
        for frame in (50, 51)
        for stem, ext in (("comp.", "png"), ("more_output_", "exr"), ("third_output_", "png"))
    }
    assert objects["renders/multi/comp.0050.png"] == b"Write1 frame 50 from ['exr50', 'jpg10']"
    assert objects["renders/multi/more_output_0051.exr"].startswith(b"Write2 frame 51")
    # The Writes' files were never fetched as inputs: only the scene and the Reads' frames.
    assert report["deps"]["count"] == 4  # scene, some_exrs 50 and 51, input_seq 10 (held)
    assert report["cache"]["misses"] == 4
