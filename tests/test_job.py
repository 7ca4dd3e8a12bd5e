"""Bad job files: exit 78 and one line naming the file, the line and the key; no traceback."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from jitrender.errors import ConfigError
from jitrender.job import load_job
from tests.conftest import cli

GOOD = """\
name: shot
frames: 1-10
stages:
  - name: render
    command: echo {frame}
outputs:
  to: out/
  files: ["r.####.exr"]
"""

BAD_CASES = {
    "unknown_key": (GOOD + "colour: blue\n", ":9: colour: unknown key"),
    "typo_in_stage": (
        GOOD.replace("command: echo {frame}", "comand: echo {frame}"),
        ":5: stages[0].comand: unknown key (did you mean 'command'?)",
    ),
    # The misspelt key is named (and the key it meant), not the required one it leaves out.
    "typo_of_a_required_key": (
        GOOD.replace("stages:", "stage:"),
        ":3: stage: unknown key (did you mean 'stages'?) (and 1 more)",
    ),
    "typo_in_a_nested_mapping": (
        GOOD + "retries:\n  storage_deadlin: 30\n",
        ":10: retries.storage_deadlin: unknown key (did you mean 'storage_deadline'?)",
    ),
    "wrong_type": (GOOD.replace("name: shot", "name: [1, 2]"), ":1: name:"),
    "bad_range": (GOOD.replace("frames: 1-10", "frames: 10-x"), ":2: frames: '10-x' is not"),
    "missing_outputs": (GOOD.split("outputs:")[0], "outputs: required key is missing"),
    "stage_without_command": (
        GOOD.replace("    command: echo {frame}\n", ""),
        "stages[0]: give a 'command' or an 'engine'",
    ),
    "bad_per": (
        GOOD.replace("    command:", "    per: shot\n    command:"),
        ":5: stages[0].per: Input should be 'frame' or 'chunk'",
    ),
    "yaml_syntax": ("frames: [1, 2\nstages: x\n", ": not valid YAML"),
    "not_a_mapping": ("- just\n- a list\n", "a job file is a YAML mapping"),
    "negative_retries": (GOOD + "retries:\n  frame: -1\n", ":10: retries.frame:"),
    # YAML reads yes/on/true as True, which pydantic took as 1: frame 1, one frame a task.
    "yes_as_frames": (
        GOOD.replace("frames: 1-10", "frames: yes"),
        ":2: frames: YAML read a yes/no word here",
    ),
    "true_as_a_count": (GOOD + "chunk: true\n", ":9: chunk: YAML read a yes/no word here"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_job_file_is_one_clear_line(case: str, tmp_path: Path) -> None:
    text, expected = BAD_CASES[case]
    job = tmp_path / "job.yaml"
    job.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_job(job)
    message = caught.value.message
    assert "\n" not in message
    assert message.startswith(str(job)), message
    assert expected in message, message


def test_missing_job_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml")


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli(*args, cwd=cwd)


def test_cli_exit_78_without_traceback(tmp_path: Path) -> None:
    """Several kinds of mistakes through the real command: exit 78, one line, no traceback."""
    job = tmp_path / "job.yaml"
    job.write_text(GOOD + "colour: blue\n")
    result = _cli("run", str(job), "--cache-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode == 78
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "colour: unknown key" in result.stderr

    job.write_text(GOOD.replace("name: shot", "name: shot\nscene: missing.nk"))
    result = _cli("run", str(job), "--cache-dir", str(tmp_path / "c"), cwd=tmp_path)
    assert result.returncode == 78, result.stderr
    assert "missing.nk does not exist" in result.stderr
    assert "Traceback" not in result.stderr

    result = _cli("run", str(job), "--frames", "1-", cwd=tmp_path)
    assert result.returncode == 78 and "--frames" in result.stderr

    result = _cli("run", str(job), "--no-such-flag", cwd=tmp_path)
    assert result.returncode == 78 and "no-such-flag" in result.stderr.lower()


def test_job_hash_ignores_frames_but_not_stages(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    a.write_text(GOOD)
    b.write_text(GOOD.replace("frames: 1-10", "frames: 1-100"))
    c.write_text(GOOD.replace("echo {frame}", "echo frame {frame}"))
    assert load_job(a).job_hash() == load_job(b).job_hash()
    assert load_job(a).job_hash() != load_job(c).job_hash()
