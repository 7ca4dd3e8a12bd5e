"""How a stage's process starts, seen from the stage and from the report (real runs, file://),
and the run's agent it talks to.

The renderer is started without a fork of the run (util-linux ``setpriv`` sets its parent-death
signal where it is there): it still sees its command line as written, its environment as the
run gives it, the run as its parent and SIGKILL as its parent-death signal
(``tests/test_preemption.py`` kills a run mid-render and finds its renderer gone). A command
that cannot start fails its frame with the reason, as it always did: not found, not
executable, not a program, an interpreter that is not there.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from tests.renderjobs import descriptors_taken, finish, jitrender_env, make_job, run, start_run

PROBE = r"""
import ctypes, json, os, pathlib, sys
signal = ctypes.c_int(0)
ctypes.CDLL(None, use_errno=True).prctl(2, ctypes.byref(signal), 0, 0, 0)  # PR_GET_PDEATHSIG
out = pathlib.Path(os.environ["JITRENDER_OUTPUTS"]) / f"frame.{int(sys.argv[1]):04d}.txt"
out.write_text(json.dumps({"argv": sys.argv, "ppid": os.getppid(), "pdeathsig": signal.value,
                           "frames": os.environ["JITRENDER_FRAMES"],
                           "pwd": os.environ.get("PWD"), "odd": os.environ.get("ODD")}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_stage_sees_its_command_line_the_run_as_parent_and_dies_with_it(
    tmp_path: Path, local_bucket: str
) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    command = [sys.executable, str(probe), "{frame}", "as written"]
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=100,
                   extra={"stages": [{"name": "render", "command": command}]})  # fmt: skip
    odd = 'it\'s "quoted" $HOME'
    proc = start_run(job, env=jitrender_env(job, PWD="/not/the/stage's/cwd", ODD=odd))
    code, out = finish(proc)
    assert code == 0, out
    seen = json.loads(Path(local_bucket.removeprefix("file://"), "renders", "frame.0001.txt")
                      .read_text())  # fmt: skip
    assert seen["argv"] == [str(probe), "1", "as written"]
    assert seen["ppid"] == proc.pid
    assert seen["pdeathsig"] == 9  # SIGKILL
    assert seen["frames"] == "1"
    assert (seen["pwd"], seen["odd"]) == ("/not/the/stage's/cwd", odd)  # its environment as given


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal: Linux")
def test_a_setpriv_that_cannot_set_the_signal_is_not_used_and_the_stage_still_runs(
    tmp_path: Path, local_bucket: str
) -> None:
    """Where a seccomp profile refuses prctl, util-linux setpriv fails before it runs anything.
    Stood in for by a ``setpriv`` first on PATH that knows ``--pdeathsig`` and fails as that
    one would: the run finds it unusable once and starts its stages the way it did before
    setpriv (a fork that sets the signal itself), so the frame renders."""
    fake = tmp_path / "bin" / "setpriv"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\n# --pdeathsig\necho 'setpriv: prctl: Operation not permitted' >&2\n"
                    "exit 127\n")  # fmt: skip
    fake.chmod(0o755)
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    command = [sys.executable, str(probe), "{frame}"]
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=100,
                   extra={"stages": [{"name": "render", "command": command}]})  # fmt: skip
    env = jitrender_env(job)
    proc = start_run(job, env=dict(env, PATH=f"{fake.parent}:{env['PATH']}"))
    code, out = finish(proc)
    assert code == 0, out
    seen = json.loads(Path(local_bucket.removeprefix("file://"), "renders", "frame.0001.txt")
                      .read_text())  # fmt: skip
    assert seen["ppid"] == proc.pid and seen["pdeathsig"] == 9  # set by the fork instead


@pytest.mark.parametrize(
    "kind", ["missing", "not_executable", "not_a_program", "missing_interpreter"]
)
def test_a_stage_that_cannot_start_fails_its_frame_with_the_reason(
    tmp_path: Path, local_bucket: str, kind: str
) -> None:
    tool = tmp_path / "tool"
    if kind == "not_executable":
        tool.write_text("#!/bin/sh\nexit 0\n")
        tool.chmod(0o644)
    elif kind == "missing_interpreter":
        tool.write_text("#!/no/such/interpreter\nexit 0\n")
        tool.chmod(0o755)
    elif kind == "not_a_program":
        tool.write_text("exit 0\n")  # no #! line: exec refuses it; no shell is guessed
        tool.chmod(0o755)
    command = [str(tool), "{frame}"]
    job = make_job(tmp_path / "job", local_bucket, "1", texture_size=100,
                   extra={"stages": [{"name": "render", "command": command}]})  # fmt: skip
    code, out, report = run(job)
    assert code == 65, out
    why = report["frames"]["failures"][0]["why"]
    expected = {
        "missing": "No such file or directory",
        "not_executable": "Permission denied",
        "not_a_program": "Exec format error",
        "missing_interpreter": "No such file or directory",
    }[kind]
    assert why == f"cannot start {str(tool)!r}: {expected}", why
    assert "Traceback" not in out
    assert os.path.exists(tmp_path / "job" / "report.json")


FRAME_FILES = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import jitrender_client
files = jitrender_client.Resolver().frame_files(int(sys.argv[2]))
out = os.path.join(os.environ["JITRENDER_OUTPUTS"], f"frame.{int(sys.argv[2]):04d}.txt")
open(out, "w").write(json.dumps(sorted(f["url"] for f in files if "local" in f)))
"""


def test_the_runs_agent_started_while_it_resolved_answers_a_frames_files(
    tmp_path: Path, local_bucket: str
) -> None:
    """The agent is started before the resolver's answer is in (while the run waits on
    storage); a stage asking it for its frame's files gets the resolver's, local."""
    from jitrender.agent import hooks_dir

    script = tmp_path / "frame_files.py"
    script.write_text(FRAME_FILES)
    command = [sys.executable, str(script), str(hooks_dir()), "{frame}"]
    job = make_job(tmp_path / "job", local_bucket, "1-2", texture_size=100,
                   extra={"stages": [{"name": "render", "command": command}]})  # fmt: skip
    code, out, _ = run(job)
    assert code == 0, out
    for frame in (1, 2):
        text = Path(local_bucket.removeprefix("file://"), "renders", f"frame.{frame:04d}.txt")
        assert json.loads(text.read_text()) == [
            f"{local_bucket}/assets/lut.bin",
            f"{local_bucket}/assets/tex.{frame:04d}.bin",
        ]


def test_a_run_holding_over_1024_descriptors_waits_for_its_stages_and_watches_its_outputs(
    tmp_path: Path, local_bucket: str
) -> None:
    """A busy run (sockets, cache files, a host process that passed it descriptors) gets
    descriptor numbers past 1,024, where select() refuses them: the stage's end is waited for
    and the outputs folder watched all the same. Here the run starts with 3-1,030 taken."""
    render = (
        "import os, sys\n"
        "out = os.environ['JITRENDER_OUTPUTS']\n"
        "tmp = os.path.join(out, f'.frame.{sys.argv[1]}.tmp')\n"
        "open(tmp, 'w').write('done')\n"
        "os.replace(tmp, os.path.join(out, f'frame.{int(sys.argv[1]):04d}.txt'))\n"
    )
    script = tmp_path / "render.py"
    script.write_text(render)
    command = [sys.executable, str(script), "{frame}"]
    job = make_job(tmp_path / "job", local_bucket, "1-2", texture_size=100,
                   extra={"stages": [{"name": "render", "command": command}]})  # fmt: skip
    with descriptors_taken() as taken:
        proc = start_run(job, pass_fds=tuple(taken))
    code, out = finish(proc)
    assert code == 0, out
    report = json.loads((job.root / "report.json").read_text())
    assert report["frames"]["done"] == [1, 2]
    renders = Path(local_bucket.removeprefix("file://"), "renders")
    assert sorted(p.name for p in renders.glob("frame.*.txt")) == [
        "frame.0001.txt",
        "frame.0002.txt",
    ]
