"""Bad input met through the CLI, as a pipeline engineer meets it: each case was a traceback,
a setting taken and then ignored, a file lost, or a mistake found only after rendering. Now
each is one line naming the file, line or key, with the documented exit code (78), and
nothing partial (or at all) in the cache or the bucket."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import cli
from tests.test_bad_input import node_env, one_line

GOOD = """\
name: shot
frames: 1-2
stages:
  - name: render
    command: [sh, -c, 'echo r > {outputs}/r.{frame:04d}.txt']
outputs:
  to: BUCKET/renders
  files: ["r.####.txt"]
"""


def job_file(tmp_path: Path, text: str = GOOD, bucket: str | None = None) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text.replace("BUCKET", bucket or f"file://{tmp_path}/bucket"))
    return path


def stage_line(old: str, new: str) -> str:
    """GOOD with one line of its stage replaced."""
    assert old in GOOD
    return GOOD.replace(old, new)


COMMAND = "    command: [sh, -c, 'echo r > {outputs}/r.{frame:04d}.txt']"


def nothing_written(tmp_path: Path) -> None:
    """No output anywhere: not in the bucket, not beside the job file (a local folder named
    after a mistyped URL), not in the cache's workspaces or partial downloads."""
    assert not (tmp_path / "bucket").exists(), list((tmp_path / "bucket").rglob("*"))
    stray = [
        p.name
        for p in tmp_path.iterdir()
        if p.name not in ("job.yaml", "cache", "rules.json", "x.mb")
    ]
    assert not stray, stray
    cache = tmp_path / "cache"
    for folder in ("runs", "tmp"):
        held = list((cache / folder).iterdir()) if (cache / folder).is_dir() else []
        assert not held, held


def refused(tmp_path: Path, job: Path, *names: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``validate`` and ``run`` (with --json: its document says the same) both refuse the job
    with exit 78 and one line; the lines, which must be the same, and contain ``names``."""
    lines = []
    for command in ("validate", "run"):
        result = cli(command, str(job), "--json", *extra, env=node_env(tmp_path))
        line = one_line(result, 78)
        document = json.loads(result.stdout)
        # A failure before the run starts is {"ok": false, ...}; one found by the run's own
        # checks is its report: {"status": "failed", ...}. Both say the code and the line.
        assert document.get("ok") is False or document["status"] == "failed", document
        assert document["exit_code"] == 78, document
        assert line.endswith(document["error"])
        for name in names:
            assert name in line, line
        lines.append(line)
    assert lines[0] == lines[1], lines
    nothing_written(tmp_path)
    return lines


# -- the job file ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # YAML keeps the last of two: the first setting was read and ignored.
        (
            GOOD + "name: other\n",
            ":9:1: not valid YAML: key 'name' is given twice (first on line 1)",
        ),
        (
            GOOD.replace("  files:", "  to: file:///elsewhere\n  files:"),
            ":8:3: not valid YAML: key 'to' is given twice (first on line 7)",
        ),
        (
            stage_line(COMMAND, COMMAND + "\n    per: chunk\n    per: frame"),
            ":7:5: not valid YAML: key 'per' is given twice (first on line 6)",
        ),
    ],
    ids=["top", "outputs", "stage"],
)
def test_a_key_given_twice_is_refused_naming_both_lines(
    tmp_path: Path, text: str, says: str
) -> None:
    refused(tmp_path, job_file(tmp_path, text), f"{tmp_path / 'job.yaml'}{says}")


def test_a_merge_key_overridden_in_place_is_still_yaml(tmp_path: Path) -> None:
    """``<<: {...}`` then one of its keys again is YAML's override, not a key given twice."""
    job = job_file(tmp_path, GOOD + "env:\n  <<: {A: '1', B: '2'}\n  A: '3'\n")
    result = cli("validate", str(job))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        # Was a traceback (IndexError, exit 70) after the run had started.
        (COMMAND, "    command: ''", "stages[0]: 'command' is empty"),
        (COMMAND, "    command: '   '", "stages[0]: 'command' is empty"),
        # Was exit 65 after every frame failed "cannot start ''".
        ("[sh, -c,", "['', -c,", "stages[0]: 'command' names no program: its first item is empty"),
        # The command engine reads no args: they were taken and ignored.
        (
            COMMAND,
            COMMAND + "\n    args: {samples: 64}",
            "stages[0]: args (samples): the 'command' engine takes no args",
        ),
        # Log files and stage markers are named by the stage: '../x' wrote the log outside the
        # workspace's logs/ folder (and never uploaded it).
        ("  - name: render", "  - name: ../x", "stages[0]: name '../x': a stage's name is a plain"),
        ("  - name: render", "  - name: a/b", "stages[0]: name 'a/b'"),
        ("  - name: render", "  - name: '..'", "stages[0]: name '..'"),
        # Were tracebacks (ValueError from the process start, exit 70).
        (COMMAND, COMMAND + "\n    env: {'A=B': x}", "stages[0].env: 'A=B' is not an environment"),
        (
            COMMAND,
            COMMAND + '\n    env: {A: "x\\0y"}',
            "stages[0].env: A: a value cannot hold a NUL",
        ),
    ],
)
def test_a_stage_that_could_never_run_is_refused_at_load(
    tmp_path: Path, old: str, new: str, says: str
) -> None:
    job = job_file(tmp_path, stage_line(old, new))
    refused(tmp_path, job, f"{job}:4:" if "env" not in says else f"{job}:", says)


@pytest.mark.parametrize(
    ("env", "says"),
    [("{'A=B': x}", "env: 'A=B' is not an environment variable name"),
     ("{'': x}", "env: '' is not an environment variable name"),
     ('{A: "x\\0y"}', "env: A: a value cannot hold a NUL character")],
)  # fmt: skip
def test_a_job_env_no_process_can_take_is_refused_naming_the_line(
    tmp_path: Path, env: str, says: str
) -> None:
    job = job_file(tmp_path, GOOD + f"env: {env}\n")
    refused(tmp_path, job, f"{job}:9: {says}")


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        # Read as a relative path: the outputs went to a local folder 'gs:/bucket' (exit 0).
        ("to", "'gs:/show/renders'", "outputs.to: 'gs:/show/renders' is not a URL (write gs://"),
        ("to", "'gs:show'", "outputs.to: 'gs:show' is not a URL"),
        # Went to a folder named '~' beside the job file (exit 0).
        ("to", "~/renders", "outputs.to: '~/renders': '~' is not expanded here"),
        ("to", "'gs://My Bucket/x'", "outputs.to: 'gs://My Bucket/x': 'My Bucket' is not a GCS"),
        # Checkpoints are best effort: a URL no store takes was dropped without a word.
        ("checkpoints", "'zz://b/previews'", "outputs.checkpoints: zz://b/previews: no storage"),
        ("checkpoints", "'gs://'", "outputs.checkpoints: 'gs://' names no bucket"),
        ("checkpoints", "'gs://show/../x'", "outputs.checkpoints: 'gs://show/../x' holds a '.'"),
        # validate said ok; run refused it (78) only then.
        ("to", "'zz://b/renders'", "outputs.to: zz://b/renders: no storage backend for zz://"),
    ],
)
def test_an_outputs_location_that_is_not_one_is_refused_before_anything_renders(
    tmp_path: Path, key: str, value: str, says: str
) -> None:
    text = GOOD.replace("  files:", f"  checkpoints: {value}\n  files:")
    if key == "to":
        text = GOOD.replace("  to: BUCKET/renders", f"  to: {value}")
    job = job_file(tmp_path, text)
    refused(tmp_path, job, f"{job}", says)


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ("scene: ~/comp.nk", ":9: scene: '~/comp.nk': '~' is not expanded here"),
        ("scene: 'gs:show/comp.nk'", ":9: scene: 'gs:show/comp.nk' is not a URL"),
        ("scene: zz://b/comp.nk", ": scene: zz://b/comp.nk: no storage backend for zz://"),
        ("deps: ['gs:/show/a.exr']", ":9: deps[0]: 'gs:/show/a.exr' is not a URL"),
        ("deps: [{prefix: '~/hdri/'}]", ":9: deps[0].prefix: '~/hdri/': '~' is not expanded"),
        ("deps: ['zz://b/a.exr']", ": deps[0]: zz://b/a.exr: no storage backend for zz://"),
        # validate said ok; run refused it once it had made its workspace.
        ("deps: [{path: /a.exr, frames: 10-1}]", ":9: deps[0]: frames: '10-1' runs backwards"),
        ("path_map: {/mnt/show: 'gs:/show'}", ":9: path_map./mnt/show: 'gs:/show' is not a URL"),
        ("path_map: [{from: /mnt/show, to: ~/show}]", ":9: path_map[0].to: '~/show': '~' is"),
        # Named neither the file nor the line.
        ("cache: {max_size: -5}", ":9: cache.max_size: -5 is not a size"),
        ("cache: {max_size: 10XB}", ":9: cache.max_size: '10XB' is not a size"),
    ],
)
def test_an_input_location_or_setting_that_cannot_work_is_refused_naming_file_and_key(
    tmp_path: Path, lines: str, says: str
) -> None:
    job = job_file(tmp_path, GOOD + lines + "\n")
    refused(tmp_path, job, f"{job}{says}")


def test_an_unknown_resolver_names_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "x.mb").write_text("x")
    job = job_file(tmp_path, GOOD + "scene: x.mb\nresolver: maya\n")
    refused(tmp_path, job, f"{job}: resolver 'maya' is not known; available:")


def test_a_gs_job_refused_at_load_leaves_its_bucket_empty(gcs_bucket: str, tmp_path: Path) -> None:
    from tests.conftest import gcs_client

    text = stage_line(COMMAND, COMMAND + "\n    args: {samples: 64}") + "name: again\n"
    job = job_file(tmp_path, text, bucket=gcs_bucket)
    line = one_line(cli("run", str(job), env=node_env(tmp_path)), 78)
    assert f"{job}:10:1: not valid YAML: key 'name' is given twice" in line, line
    job.write_text(job.read_text().replace("name: again\n", ""))
    line = one_line(cli("run", str(job), env=node_env(tmp_path)), 78)
    assert "the 'command' engine takes no args" in line, line
    bucket = gcs_client().bucket(gcs_bucket.removeprefix("gs://"))  # type: ignore[attr-defined]
    assert list(bucket.list_blobs()) == []
    nothing_written(tmp_path)


# -- the command line --------------------------------------------------------------------


def test_a_report_named_as_the_job_file_is_refused_and_the_job_file_kept(tmp_path: Path) -> None:
    """``--report job.yaml`` rendered the job, then wrote the report over the job file."""
    job = job_file(tmp_path)
    before = job.read_text()
    line = one_line(cli("run", str(job), "--report", str(job), env=node_env(tmp_path)), 78)
    assert f"--report {job}: is the job file" in line, line
    assert job.read_text() == before
    nothing_written(tmp_path)


@pytest.mark.parametrize(
    ("rules", "says"),
    [
        # Was a traceback, exit 1 (AttributeError: 'list' object has no attribute 'get').
        ("[]", "expected an Open Job Description document (a JSON object"),
        ('"rules"', "expected an Open Job Description document"),
        # A number was read as the path "5".
        (
            '{"version": "pathmapping-1.0", "path_mapping_rules": [{"source_path_format": '
            '"POSIX", "source_path": 5, "destination_path": "/b"}]}',
            "path_mapping_rules[0] needs source_path_format, source_path and destination_path",
        ),
    ],
)
def test_path_mapping_rules_that_are_not_a_document_are_one_line(
    tmp_path: Path, rules: str, says: str
) -> None:
    (tmp_path / "rules.json").write_text(rules)
    job = job_file(tmp_path)
    refused(
        tmp_path,
        job,
        f"{tmp_path / 'rules.json'}: {says}",
        extra=("--path-map-rules", str(tmp_path / "rules.json")),
    )


@pytest.mark.parametrize(
    ("pair", "says"),
    [("/mnt/show=gs:/show", "'gs:/show' is not a URL"),
     ("/mnt/show=gs://", "'gs://' names no bucket"),
     ("/mnt/show=~/show", "'~/show': '~' is not expanded here")],
)  # fmt: skip
def test_a_path_map_flag_whose_target_is_not_a_location_is_refused(
    tmp_path: Path, pair: str, says: str
) -> None:
    refused(
        tmp_path, job_file(tmp_path), f"--path-map '{pair}': {says}", extra=("--path-map", pair)
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--interval", "0"], "--interval 0.0: goes with --watch"),
        (["--port", "9000"], "--port 9000: goes with --serve"),
        (["--host", "0.0.0.0"], "--host 0.0.0.0: goes with --serve"),
        (["--serve", "--watch"], "--serve with --watch"),
    ],
)
def test_a_status_option_without_the_one_it_goes_with_is_refused(
    tmp_path: Path, args: list[str], says: str
) -> None:
    """They were taken and ignored: ``status --interval 0`` printed once and exited 0."""
    line = one_line(cli("status", str(job_file(tmp_path)), *args, timeout=30), 78)
    assert says in line, line


def test_deps_allow_unresolved_without_check_is_refused(tmp_path: Path) -> None:
    scene = tmp_path / "x.nk"
    scene.write_text("Root {}\n")
    line = one_line(cli("deps", str(scene), "--allow-unresolved"), 78)
    assert "--allow-unresolved: goes with --check" in line, line


@pytest.mark.parametrize(
    ("farm", "flag", "value"),
    [
        ("kubernetes", "--queue", "render"),
        ("slurm", "--region", "us-west-2"),
        ("slurm", "--image", "img:1"),
        ("kubernetes", "--bundle-dir", "bundle"),
        ("openjd", "--project", "p"),
        ("aws-batch", "--log-dir", "logs"),
    ],
)
def test_a_submit_option_the_farm_does_not_read_is_refused(
    tmp_path: Path, farm: str, flag: str, value: str
) -> None:
    job = job_file(tmp_path)
    args = ["submit", str(job), "--farm", farm, "--tasks", "2", "--dry-run", flag, value]
    result = cli(*args, cwd=tmp_path)
    line = one_line(result, 78)
    assert f"{flag} {value}: --farm {farm} does not use it (it is for " in line, line
    assert result.stdout == ""
    nothing_written(tmp_path)


def test_health_of_a_cache_folder_that_is_a_file_is_78_not_healthy(tmp_path: Path) -> None:
    (tmp_path / "cache").write_text("not a folder")
    result = cli("health", "--cache-dir", str(tmp_path / "cache"), "--json")
    line = one_line(result, 78)
    assert f"{tmp_path / 'cache'}: not a folder" in line, line
    assert json.loads(result.stdout)["ok"] is False


def test_valid_neighbours_of_the_refused_inputs_still_run(tmp_path: Path) -> None:
    """What the checks above must not catch: a relative outputs folder, a Windows drive in a
    path mapping, a stage name with a space and a dot, an empty args mapping, an env value
    with '=' in it, a one-letter bucket."""
    text = (
        GOOD.replace("  - name: render", "  - name: 'beauty pass.v2'")
        .replace(COMMAND, COMMAND + "\n    args: {}\n    env: {OPTS: 'a=b'}")
        .replace("BUCKET/renders", "out/renders")
        + "path_map: {'P:\\show': 'gs://s/show'}\n"
    )
    job = job_file(tmp_path, text)
    assert cli("validate", str(job)).returncode == 0
    result = cli("run", str(job), env=node_env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "out" / "renders").glob("r.*")) == [
        "r.0001.txt",
        "r.0002.txt",
    ]


def test_an_empty_job_name_is_refused_not_replaced_by_the_file_name(tmp_path: Path) -> None:
    job = job_file(tmp_path, GOOD.replace("name: shot", "name: ''"))
    refused(tmp_path, job, f"{job}:1: name: String should have at least 1 character")


def test_validate_refuses_a_cache_folder_that_is_a_file_as_run_does(tmp_path: Path) -> None:
    """validate said ok; run then exited 78 on it."""
    (tmp_path / "afile").write_text("x")
    job = job_file(tmp_path, GOOD + f"cache: {{dir: {tmp_path / 'afile'}}}\n")
    env = node_env(tmp_path, JITRENDER_CACHE_DIR="")
    for command in ("validate", "run"):
        line = one_line(cli(command, str(job), env=env), 78)
        assert f"{tmp_path / 'afile'}: cannot use as cache folder" in line, line
    assert not (tmp_path / "bucket").exists()


def test_a_resolver_without_a_scene_is_refused_with_deps_too(tmp_path: Path) -> None:
    """With ``deps:`` the resolver was taken and never used (it reads only a scene)."""
    (tmp_path / "x.mb").write_text("x")  # the dep (named so nothing_written allows it)
    job = job_file(tmp_path, GOOD + "resolver: nuke\ndeps: [x.mb]\n")
    refused(tmp_path, job, f"{job}: resolver 'nuke' needs a 'scene'")


def test_a_tab_and_a_byte_that_is_not_utf8_are_named_with_their_line(tmp_path: Path) -> None:
    """They were named by PyYAML's words only, and by the byte's offset in the file."""
    job = job_file(tmp_path, GOOD.replace("  - name: render", "\t- name: render"))
    refused(tmp_path, job, f"{job}:4:1: not valid YAML:", "(a tab: YAML indents with spaces)")
    job.write_bytes(GOOD.replace("BUCKET", f"file://{tmp_path}/bucket").encode() + b"# \xff\n")
    refused(tmp_path, job, f"{job}:9: cannot read job file: byte 0xff is not UTF-8 text")
