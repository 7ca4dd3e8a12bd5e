"""A user's mistake is one line with the documented exit code, found as early as possible, and
never a traceback (exit 70): unsafe output paths and alias bombs at load, frame ranges that
are too long or backwards, names the local file system cannot hold, a full disk."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import cli, put_object
from tests.renderjobs import jitrender_env, make_job, run


def one_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single error line of a command that must fail with ``code``."""
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("jitrender: error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def node_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """This process's environment for a run on a node of its own: the cache in ``tmp_path``,
    no preemption watch (no metadata server here) and no heartbeats, then ``settings``."""
    env = dict(os.environ, JITRENDER_CACHE_DIR=str(tmp_path / "cache"))
    env.update(JITRENDER_PREEMPTION_WATCH="off", JITRENDER_HEARTBEAT_INTERVAL="0")
    env.update(settings)
    return env


def write_job(tmp_path: Path, **changes: Any) -> Path:
    job: dict[str, Any] = {
        "frames": "1-2",
        "stages": [{"name": "render", "command": ["true"]}],
        "outputs": {"to": f"file://{tmp_path}/bucket/renders", "files": ["r.####.exr"]},
    }
    for key, value in changes.items():
        if key.startswith("outputs_"):
            job["outputs"][key.removeprefix("outputs_")] = value
        else:
            job[key] = value
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


# -- item 9: validation at load -------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        ("../x.####", "climbs out of outputs/ with '..'"),
        ("sub/../../x.####", "climbs out of outputs/ with '..'"),
        ("/etc/x.####", "is an absolute path"),
        ("C:\\x.####", "is an absolute path"),
    ],
)
def test_output_patterns_outside_outputs_are_refused_at_load(
    tmp_path: Path, pattern: str, why: str
) -> None:
    job = write_job(tmp_path, outputs_files=["ok.####.exr", pattern])
    for command in ("validate", "run"):
        line = one_line(cli(command, str(job)), 78)
        assert f"{job}:" in line and "outputs.files[1]" in line and why in line, line


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("gs://show/renders/../other", "holds a '.' or '..' segment"),
        ("gs://show/./renders", "holds a '.' or '..' segment"),
        ("file:///tmp/bucket/../etc", "holds a '.' or '..' segment"),
        ("gs://", "names no bucket"),
        ("gs:///renders", "names no bucket"),
    ],
)
def test_outputs_to_that_escapes_its_prefix_or_names_no_bucket_is_refused_at_load(
    tmp_path: Path, target: str, why: str
) -> None:
    job = write_job(tmp_path, outputs_to=target)
    for command in ("validate", "run"):
        line = one_line(cli(command, str(job)), 78)
        assert "outputs.to" in line and why in line, line


def test_a_relative_local_outputs_folder_with_dots_is_still_fine(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    job = write_job(tmp_path / "sub", outputs_to="../renders")
    result = cli("validate", str(job))
    assert result.returncode == 0, result.stderr


def test_a_yaml_alias_bomb_is_refused_quickly_with_one_line(tmp_path: Path) -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):  # 10**9 values once expanded
        prev = f"*a{level - 1}"
        levels.append(f"a{level}: &a{level} [{', '.join([prev] * 10)}]")
    job = tmp_path / "job.yaml"
    body = "\n".join(f"      {line}" for line in levels)
    job.write_text(
        "frames: 1\n"
        f"outputs: {{to: 'file://{tmp_path}/bucket'}}\n"
        "stages:\n"
        "  - name: render\n"
        "    command: ['true']\n"
        "    args:\n"
        f"{body}\n"
    )
    for command in ("validate", "run"):
        started = time.monotonic()
        line = one_line(cli(command, str(job)), 78)
        assert time.monotonic() - started < 20
        assert "expands to more than 1000000 values" in line, line


def test_too_many_frames_names_the_count_and_the_limit(tmp_path: Path) -> None:
    job = write_job(tmp_path, frames="1-100000000")
    line = one_line(cli("validate", str(job)), 78)
    assert "frames: '1-100000000' is too many frames (100000000); the limit is 1000000" in line
    line = one_line(cli("run", str(write_job(tmp_path)), "--frames", "1-2000000"), 78)
    assert "--frames: '1-2000000' is too many frames (2000000)" in line


def test_a_backwards_range_is_refused_naming_the_forward_spelling(tmp_path: Path) -> None:
    job = write_job(tmp_path, frames="1,10-1")
    line = one_line(cli("validate", str(job)), 78)
    assert "frames: '10-1' runs backwards (10 down to 1); write 1-10" in line
    assert cli("validate", str(write_job(tmp_path, frames="-10-5,20"))).returncode == 0


# -- item 8: no exit 70 for a user's input ---------------------------------------------------


def prefix_job(tmp_path: Path, bucket: str) -> Path:
    """A job whose one dependency is everything below ``{bucket}/assets/``."""
    return write_job(
        tmp_path,
        frames="1",
        deps=[{"prefix": f"{bucket}/assets/"}],
        outputs_to=f"{bucket}/renders",
    )


def run_cli(job: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return cli("run", str(job), "--progress", "plain", env=node_env(tmp_path))


def test_an_object_named_with_dot_dot_under_a_prefix_is_refused_not_placed_outside(
    tmp_path: Path, gcs_bucket: str
) -> None:
    put_object(f"{gcs_bucket}/assets/ok.bin", b"ok")
    put_object(f"{gcs_bucket}/assets/a/../../../x", b"escape")
    line = one_line(run_cli(prefix_job(tmp_path, gcs_bucket), tmp_path), 65)
    assert "assets/a/../../../x: the object name holds a '..' segment" in line
    assert not list(tmp_path.glob("**/x"))  # landed nowhere


def test_an_object_name_too_long_for_the_local_file_system_is_one_line(
    tmp_path: Path, gcs_bucket: str
) -> None:
    put_object(f"{gcs_bucket}/assets/{'n' * 300}.bin", b"long")
    line = one_line(run_cli(prefix_job(tmp_path, gcs_bucket), tmp_path), 65)
    assert "a name in it is 304 bytes long" in line and "at most 255" in line


def test_a_300_character_path_component_in_a_file_dependency_is_one_line(
    tmp_path: Path, local_bucket: str
) -> None:
    job = write_job(tmp_path, frames="1", deps=[f"{local_bucket}/{'p' * 300}/a.bin"])
    line = one_line(run_cli(job, tmp_path), 65)
    assert "longer than the local file system allows" in line


def test_a_job_file_in_a_folder_whose_name_is_not_utf8_is_one_config_line(
    tmp_path: Path,
) -> None:
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9"))
    folder.mkdir()
    for target in ("renders", f"file://{tmp_path}/bucket/renders"):
        job = write_job(folder, outputs_to=target)
        line = one_line(run_cli(job, tmp_path), 78)
        assert "caf\\xe9" in line and "a folder or file name here is not valid UTF-8" in line


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (needs root); skipped where it cannot be mounted."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        check=False,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("bucket_kind", ["file", "gs"])
def test_a_full_cache_disk_is_one_retryable_line_naming_the_folder_and_the_bytes(
    tmp_path: Path, small_disk: Path, bucket_kind: str, request: pytest.FixtureRequest
) -> None:
    bucket = request.getfixturevalue("local_bucket" if bucket_kind == "file" else "gcs_bucket")
    job = make_job(tmp_path / "job", bucket, "1", texture_size=1_500_000)
    cache = small_disk / "cache"
    code, out, _ = run(job, env=jitrender_env(job, JITRENDER_CACHE_DIR=str(cache)))
    assert code == 75, out
    assert "Traceback" not in out
    line = next(line for line in out.splitlines() if "error:" in line)
    assert f"{cache}: no space left on the cache's disk for {bucket}/assets/" in line
    assert "(1500000 bytes needed" in line


@pytest.mark.parametrize("value", ["5s", "-1", "nan", "inf"])
@pytest.mark.parametrize(
    "name", ["JITRENDER_FLUSH_BUDGET_S", "JITRENDER_TERM_GRACE_S", "JITRENDER_STOP_BACKSTOP_S"]
)
def test_a_stop_timing_that_is_not_a_number_is_78_before_anything_renders(
    tmp_path: Path, name: str, value: str
) -> None:
    """The stop's timings are read only once a run stops; a bad one is refused at start."""
    job = write_job(tmp_path)
    env = node_env(tmp_path, **{name: value})
    line = one_line(cli("run", str(job), "--progress", "plain", env=env), 78)
    assert f"{name}: {value!r} is not a number of seconds (0 or more)" in line
    assert not (tmp_path / "bucket").exists()  # nothing rendered, nothing delivered


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("JITRENDER_READ_TIMEOUT_S", "1m", "is not a positive number of seconds"),
        ("JITRENDER_PREEMPTION_WATCH", "maybe", "is not off/0/false/no or on/1/true/yes/auto"),
        ("JITRENDER_HEALTH_FAILED_FRAMES", "three", "is not a whole number of 1 or more"),
        ("JITRENDER_HEALTH_JOB_FAILURES", "0", "is not a whole number of 1 or more"),
    ],
)
def test_a_node_setting_that_cannot_be_taken_is_78_before_anything_renders(
    tmp_path: Path, name: str, value: str, says: str
) -> None:
    """Settings read in a background thread (the read timeout, the preemption watch) or only
    at the end of a run (the health thresholds) are refused at start, never silently taken
    as their default (a typo of ``off`` left the watch on; ``0`` was read as 1)."""
    job = write_job(tmp_path)
    env = node_env(tmp_path, **{name: value})
    line = one_line(cli("run", str(job), "--progress", "plain", env=env), 78)
    assert f"{name}: {value!r} {says}" in line
    assert not (tmp_path / "bucket").exists()  # nothing rendered, nothing delivered
    if name.startswith("JITRENDER_HEALTH"):
        line = one_line(cli("health", "--cache-dir", str(tmp_path / "cache"), env=env), 78)
        assert f"{name}: {value!r} {says}" in line


@pytest.mark.parametrize(
    ("flag", "env_value"), [("-1", None), ("nan", None), ("inf", None), (None, "-0.5")]
)
def test_a_heartbeat_interval_that_is_not_seconds_is_78_before_anything_renders(
    tmp_path: Path, flag: str | None, env_value: str | None
) -> None:
    """A negative, NaN or infinite heartbeat interval (the flag, or its variable) was taken as
    "no heartbeats" without a word; it is refused at start, as every bad setting is."""
    job = write_job(tmp_path)
    env = node_env(tmp_path)
    if env_value is not None:
        env["JITRENDER_HEARTBEAT_INTERVAL"] = env_value
    args = ["--heartbeat-interval", flag] if flag is not None else []
    line = one_line(cli("run", str(job), *args, "--progress", "plain", env=env), 78)
    value = float(flag if flag is not None else str(env_value))
    assert f"--heartbeat-interval (or JITRENDER_HEARTBEAT_INTERVAL): {value!r} is not" in line
    assert not (tmp_path / "bucket").exists()  # nothing rendered, nothing delivered


@pytest.mark.parametrize(
    ("flag", "in_job"), [("-5GB", None), ("inf", None), ("1e3", None), (None, -5), (None, "-1MB")]
)
def test_a_cache_size_that_is_not_a_size_is_78_before_anything_renders(
    tmp_path: Path, flag: str | None, in_job: int | str | None
) -> None:
    """Sizes are read by pydantic's ByteSize (``50GB``, ``500MiB``, ``1.5 TB``). A negative cap
    was taken as one (every run evicted all it could), ``inf`` was a traceback; both are one
    line, naming where the size was written."""
    job = write_job(tmp_path, **({"cache": {"max_size": in_job}} if in_job is not None else {}))
    env = node_env(tmp_path)
    args = ["--cache-max-size", flag] if flag is not None else []
    line = one_line(cli("run", str(job), *args, "--progress", "plain", env=env), 78)
    where = "--cache-max-size" if flag is not None else "cache.max_size"
    assert f"{where}: {flag if flag is not None else in_job!r} is not a size" in line, line
    assert not (tmp_path / "bucket").exists()  # nothing rendered, nothing delivered


@pytest.mark.parametrize("command", ["run", "deps"])
def test_an_empty_frames_flag_is_78_not_the_whole_job(tmp_path: Path, command: str) -> None:
    """``--frames "$FRAMES"`` with the variable unset gave ``--frames ""``, which was read as
    no flag at all: every frame of the job rendered (or frame 1 listed) without a word."""
    job = write_job(tmp_path)
    env = node_env(tmp_path)
    scene = tmp_path / "scene.txt"
    scene.write_text(f"{tmp_path}/tex.png\n")
    args = [str(job)] if command == "run" else [str(scene)]
    line = one_line(cli(command, *args, "--frames", "", env=env), 78)
    assert "--frames: empty frame range" in line, line
    assert not (tmp_path / "bucket").exists()  # nothing rendered, nothing delivered


@pytest.mark.parametrize("flag", ["--cache-dir", "--report", "--mount", "--path-map-rules"])
def test_an_empty_path_option_is_78_not_the_current_folder(tmp_path: Path, flag: str) -> None:
    """``--cache-dir ""`` made a cache in the current folder, ``--report ""`` a traceback after
    the work (and a temporary file left beside it): an empty path is a usage error."""
    job = write_job(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = node_env(tmp_path)
    line = one_line(cli("run", str(job), f"{flag}=", "--progress", "plain", cwd=cwd, env=env), 78)
    assert f"'{flag}'" in line and "an empty path" in line, line
    assert list(cwd.iterdir()) == [] and not (tmp_path / "bucket").exists()


def test_a_report_path_that_is_a_folder_is_78_before_anything_renders(tmp_path: Path) -> None:
    job = write_job(tmp_path)
    env = node_env(tmp_path)
    line = one_line(cli("run", str(job), "--report", str(tmp_path), env=env), 78)
    assert f"--report {tmp_path}: is a folder" in line, line
    assert not (tmp_path / "bucket").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary report


@pytest.mark.parametrize("action", ["stats", "verify", "prune", "clear"])
def test_a_cache_command_on_a_folder_that_holds_other_files_is_78_and_makes_no_cache(
    tmp_path: Path, action: str
) -> None:
    """``jitrender cache clear --cache-dir /tmp`` made a cache among the folder's files and
    said all was well; a folder that holds something else is refused, and left as it was (a
    folder not made yet is a node's first cache, as before)."""
    (tmp_path / "notes.txt").write_text("not a cache")
    line = one_line(cli("cache", action, "--cache-dir", str(tmp_path)), 78)
    assert f"{tmp_path}: no jitrender cache there" in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_an_outputs_bucket_that_does_not_exist_is_one_config_line_naming_it(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """``outputs.to: gs://typo-bucket/renders``: run and status say the bucket does not exist
    (exit 78, a setting to fix), not "dependency does not exist in storage" (exit 65); a
    scene's folder line in such a bucket names it too."""
    outputs = {"to": "gs://no-such-bucket-jitrender/renders", "files": ["frame.####.txt"]}
    job = make_job(tmp_path / "job", gcs_bucket, "1", extra={"outputs": outputs})
    code, out, _ = run(job)
    says = "gs://no-such-bucket-jitrender/renders: bucket 'no-such-bucket-jitrender' does not"
    assert code == 78 and f"outputs.to: {says}" in out, out
    line = one_line(cli("status", str(job.job_file), env=jitrender_env(job)), 78)
    assert "bucket 'no-such-bucket-jitrender' does not exist in storage" in line, line
    scene = tmp_path / "scene.txt"
    scene.write_text("gs://no-such-bucket-jitrender/tex/\n")
    line = one_line(cli("deps", str(scene), env=jitrender_env(job)), 65)
    assert "gs://no-such-bucket-jitrender/tex/: bucket 'no-such-bucket-jitrender'" in line, line


@pytest.mark.parametrize("farm", ["slurm", "kubernetes", "gcp-batch", "aws-batch", "openjd"])
@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--memory", "0", "--memory 0 bytes: must be at least 1MiB"),
        ("--time-limit", "0", "--time-limit 0: must be at least 1 second"),
        ("--time-limit", "-5", "--time-limit -5: must be at least 1 second"),
        ("--max-retries", "-1", "--max-retries -1: must be 0 or more"),
    ],
)
def test_a_farm_limit_no_farm_can_take_is_78_for_every_farm(
    tmp_path: Path, farm: str, flag: str, value: str, says: str
) -> None:
    """``--time-limit 0`` was written as Slurm's ``--time=00:00:00`` (no limit at all), ``--memory
    0`` as ``--mem=1M``, ``--max-retries -1`` as a negative backoff limit: refused for every
    farm, before anything is written or submitted."""
    job = write_job(tmp_path)
    args = ["submit", str(job), "--farm", farm, "--dry-run", "--tasks", "2", flag, value]
    line = one_line(cli(*args, "--bundle-dir", str(tmp_path / "bundle")), 78)
    assert says in line, line
    assert not (tmp_path / "bundle").exists()


@pytest.mark.parametrize(
    ("variable", "size"),
    [
        ("SLURM_ARRAY_TASK_ID", "the array's size"),
        ("JOB_COMPLETION_INDEX", "the Job's completions"),
        ("AWS_BATCH_JOB_ARRAY_INDEX", "the array job's size"),
    ],
)
def test_a_farm_index_without_a_count_asks_for_it_in_the_farms_words(
    tmp_path: Path, variable: str, size: str
) -> None:
    job = write_job(tmp_path)
    env = node_env(tmp_path, **{variable: "1"})
    line = one_line(cli("run", str(job), env=env), 78)
    assert f"{variable}=1" in line and f"set JITRENDER_TASK_COUNT (to {size})" in line, line
    assert not (tmp_path / "bucket").exists()


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--watch", "--interval", "0"], "--interval 0.0: must be a number of seconds above 0"),
        (["--watch", "--interval", "-1"], "--interval -1.0: must be a number of seconds above 0"),
        (["--serve", "--port", "70000"], "--port 70000: must be 0 (any free port) to 65535"),
        (["--serve", "--port", "-1"], "--port -1: must be 0 (any free port) to 65535"),
    ],
)
def test_status_watch_and_serve_settings_that_cannot_be_taken_are_78(
    tmp_path: Path, args: list[str], says: str
) -> None:
    """``--interval -1`` and ``--port 70000`` were tracebacks (exit 1); ``--interval 0`` listed
    the bucket again and again without a pause."""
    job = write_job(tmp_path)
    line = one_line(cli("status", str(job), *args, timeout=30), 78)
    assert says in line, line
