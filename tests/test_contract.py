"""Issue 12, the job and CLI contract, each promise the way a user meets it (``jitrender``
processes against fake-gcs-server): path mapping as studios write it, validate = run's checks,
missing extras, the output contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import cli, put_object
from tests.renderjobs import (
    RenderJob,
    jitrender_env,
    job_cli,
    jobs_on_one_node,
    make_job,
    node_health,
    run,
)

ROOT = Path(__file__).resolve().parent.parent


def _rewrite(job: RenderJob, **changes: Any) -> None:
    data = yaml.safe_load(job.job_file.read_text())
    data.update(changes)
    job.job_file.write_text(yaml.safe_dump(data))


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("jitrender: error:")]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr, stderr
    return lines[0]


# -- 1. path_map ---------------------------------------------------------------------------


def test_mapping_form_path_map_maps_scene_deps_and_outputs(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    put_object(f"{gcs_bucket}/shots/deps.txt", b"/mnt/show/assets/lut.bin\n")
    _rewrite(
        job,
        path_map={"/mnt/show/": f"{gcs_bucket}/"},
        scene="/mnt/show/shots/deps.txt",
        deps=["/mnt/show/assets/tex.####.bin"],
        outputs={"to": "/mnt/show/renders", "files": ["frame.####.txt"]},
    )
    assert cli("validate", str(job.job_file)).returncode == 0
    code, out, report = run(job)
    assert code == 0, out
    assert report["deps"]["count"] == 4  # scene, lut, two textures: all gs://, nothing file://
    assert sorted(report["outputs"]["urls"]) == [job.output_url(1), job.output_url(2)]


def test_unreadable_path_map_is_78_naming_the_key(tmp_path: Path) -> None:
    base = {"frames": 1, "stages": [{"name": "r", "command": "true"}], "outputs": {"to": "out"}}
    cases = {
        "'/mnt/show/'": {"/mnt/show/": 3},
        "'rules'": {"version": "pathmapping-1.0", "rules": []},
        "'/mnt/x'": {"/mnt/x": None},
    }
    for key, path_map in cases.items():
        job_file = tmp_path / "job.yaml"
        job_file.write_text(yaml.safe_dump({**base, "path_map": path_map}))
        for command in ("validate", "run") if key == "'/mnt/show/'" else ("validate",):
            result = cli(command, str(job_file))
            assert result.returncode == 78, (command, result.stderr)
            line = _error_line(result.stderr)
            assert "path_map" in line and key in line, line


def test_farm_openjd_rules_chain_before_the_jobs_own_with_windows_paths(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """Documented order: the farm's rules (workstation -> node path) first, then the job's
    (node path -> bucket); ``P:\\show`` -> ``/mnt/show`` -> ``gs://...``."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    put_object(
        f"{gcs_bucket}/shots/deps.txt",
        b"P:\\show\\assets\\lut.bin\np:/SHOW/assets/tex.####.bin\n",
    )
    _rewrite(
        job,
        path_map={"/mnt/show": gcs_bucket},
        scene="P:\\show\\shots\\deps.txt",
        deps=[],
        outputs={"to": "P:\\show\\renders", "files": ["frame.####.txt"]},
    )
    rules = tmp_path / "rules.json"
    rules.write_text(
        json.dumps(
            {
                "version": "pathmapping-1.0",
                "path_mapping_rules": [
                    {
                        "source_path_format": "WINDOWS",
                        "source_path": "P:\\show",
                        "destination_path": "/mnt/show",
                    }
                ],
            }
        )
    )
    listed = cli(
        "deps", "P:\\show\\shots\\deps.txt", "--job", str(job.job_file), "--frames", "2",
        "--path-map-rules", str(rules), "--json", "--cache-dir", str(tmp_path / "c"),
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    document = json.loads(listed.stdout)
    assert document["scene"] == f"{gcs_bucket}/shots/deps.txt"
    assert sorted(d["url"] for d in document["deps"]) == [
        f"{gcs_bucket}/assets/lut.bin",
        f"{gcs_bucket}/assets/tex.0002.bin",
    ]
    code, out, report = run(job, "--path-map-rules", str(rules))
    assert code == 0, out
    assert sorted(report["outputs"]["urls"]) == [job.output_url(1), job.output_url(2)]
    # Without the farm's rules the Windows paths are not the bucket's: said, not guessed.
    code, out, _ = run(job)
    assert code == 78, out


# -- 2. one validation for validate and run --------------------------------------------------


CORPUS = ROOT / ".." / "shared" / "corpus"


def _bad_jobs(bucket: str, renderer: Path) -> dict[str, dict[str, Any]]:
    """Jobs `run` refuses before fetching; each with a word its error line must hold."""
    base: dict[str, Any] = {
        "frames": "1-2",
        "stages": [{"name": "render", "command": [sys.executable, str(renderer), "{frame}"]}],
        "outputs": {"to": f"{bucket}/renders", "files": ["frame.####.txt"]},
    }
    blender_stage = {"name": "render", "engine": "blender", "args": {"samples": 0}}
    return {
        "fram": {**base, "stages": [{"name": "render", "command": "echo {fram}"}]},
        "samples": {**base, "scene": f"{bucket}/shot.blend", "stages": [blender_stage]},
        "outputs.files": {**base, "outputs": {"to": f"{bucket}/r", "files": ["../x.####.txt"]}},
        "nosuchengine": {**base, "stages": [{"name": "render", "engine": "nosuchengine"}]},
        "max_size": {**base, "cache": {"max_size": "12 parsecs"}},
    }


def test_validate_refuses_what_run_refuses_with_the_same_line(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2", upload=False)
    for word, body in _bad_jobs(gcs_bucket, job.root / "renderer.py").items():
        job.job_file.write_text(yaml.safe_dump(body))
        checked = cli("validate", str(job.job_file))
        assert checked.returncode == 78, (word, checked.stderr)
        line = _error_line(checked.stderr)
        assert word in line, line
        (job.root / "report.json").unlink(missing_ok=True)
        code, out, report = run(job)
        assert code == 78, (word, out)
        assert line in out.splitlines(), (line, out)
        assert report.get("cache", {}).get("bytes_fetched", 0) == 0  # refused before fetching
        if word != "fram":
            continue  # --json once: the same document for every case
        as_json = cli("validate", str(job.job_file), "--json")
        assert as_json.returncode == 78
        assert json.loads(as_json.stdout) == {
            "ok": False,
            "exit_code": 78,
            "error": line.removeprefix("jitrender: error: "),
        }


def test_validate_json_describes_a_good_job(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3", upload=False)
    result = cli("validate", str(job.job_file), "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert document["frames"] == [1, 2, 3]
    assert document["outputs"] == f"{gcs_bucket}/renders"


def test_deps_check_fails_65_on_unresolved_unless_allowed(gcs_bucket: str, tmp_path: Path) -> None:
    manifest = f"{gcs_bucket}/shot/deps.txt"
    put_object(f"{gcs_bucket}/a.bin", b"a")
    put_object(manifest, b"../a.bin\n../nothing-here/\n")
    common = ("deps", manifest, "--cache-dir", str(tmp_path / "c"))
    checked = cli(*common, "--check")
    assert checked.returncode == 65, checked.stderr
    assert "unresolved" in checked.stderr and "nothing-here" in checked.stderr
    allowed = cli(*common, "--check", "--allow-unresolved", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert len(json.loads(allowed.stdout)["unresolved"]) == 1
    assert cli(*common).returncode == 0  # listing alone is not a check


# -- 3. a missing optional extra ---------------------------------------------------------------

BLOCKER = """
import sys
class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "pxr" or name.startswith("pxr."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocked())
"""


def test_missing_usd_extra_is_78_naming_the_extra(gcs_bucket: str, tmp_path: Path) -> None:
    import os

    found = sorted(CORPUS.glob("usd/cases/*/files/*.usda"))
    if not found:
        pytest.skip(f"no USD corpus at {CORPUS}")
    scene = f"{gcs_bucket}/shot/{found[0].name}"
    put_object(scene, found[0].read_bytes())
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker), env.get("PYTHONPATH", str(ROOT))])
    job = make_job(tmp_path / "job", gcs_bucket, "1", upload=False, extra={"scene": scene})
    probe = subprocess.run(
        [sys.executable, "-c", "import pxr"], env=env, capture_output=True, check=False
    )
    assert probe.returncode != 0  # the blocker works: pxr is "not installed" in these runs
    results = {
        "deps": cli("deps", scene, "--cache-dir", str(tmp_path / "c"), env=env),
        "validate": cli("validate", str(job.job_file), env=env),
    }
    code, out, _ = run(job, env={**jitrender_env(job), "PYTHONPATH": env["PYTHONPATH"]})
    for name, result in results.items():
        assert result.returncode == 78, (name, result.stderr)
        assert "jitrender[usd]" in _error_line(result.stderr), name
    assert code == 78, out
    assert "jitrender[usd]" in out and "Traceback" not in out


# -- 4. the output contract ---------------------------------------------------------------------


def test_version_flag_and_json_on_every_command(gcs_bucket: str, tmp_path: Path) -> None:
    flag = cli("--version")
    assert flag.returncode == 0 and flag.stdout.strip() == cli("version").stdout.strip()
    info = json.loads(cli("version", "--json").stdout)
    assert info["version"] == flag.stdout.strip() and set(info["extras"]) >= {"blender", "usd"}
    job = make_job(tmp_path / "job", gcs_bucket, "1")
    cache = ("--cache-dir", str(tmp_path / "c"))
    commands = [
        ("validate", str(job.job_file)),
        ("status", str(job.job_file)),
        ("deps", f"{gcs_bucket}/assets/lut.bin", "--resolver", "manifest", *cache),
        ("health", *cache),
        ("cache", "stats", *cache),
        ("version",),
    ]
    for command in commands:
        result = cli(*command, "--json")
        assert result.returncode == 0, (command, result.stderr)
        json.loads(result.stdout)  # one JSON document on stdout, nothing else


def test_progress_json_is_only_json_lines_with_wall_clock_and_durations(
    gcs_bucket: str, tmp_path: Path
) -> None:
    from datetime import datetime

    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    proc = job_cli(job, "run", str(job.job_file), "--progress", "json")
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in proc.stderr.splitlines()]  # fails on a plain line
    for record in records:
        assert isinstance(record, dict) and record["kind"]
        datetime.fromisoformat(record["time"])
    kinds = [r["kind"] for r in records]
    assert kinds[-1] == "result" and records[-1]["exit_code"] == 0
    starts = [r for r in records if r["kind"] == "stage_start"]
    ends = [r for r in records if r["kind"] == "stage_end"]
    frames = [r for r in records if r["kind"] == "frame_end"]
    assert [r["frame"] for r in starts] == [1, 2] and all(r["stage"] == "render" for r in starts)
    assert all(r["seconds"] >= 0 and r["stage"] == "render" for r in ends)
    assert sorted(r["frame"] for r in frames) == [1, 2]
    assert all(r["status"] == "done" and r["seconds"] > 0 for r in frames)
    # Failing before the run starts is a JSON line too.
    bad = cli("run", str(tmp_path / "nope.yaml"), "--progress", "json", timeout=60)
    assert bad.returncode == 78
    assert json.loads(bad.stderr)["kind"] == "result"


def test_plain_lines_carry_timestamps_and_quiet_prints_nothing(
    gcs_bucket: str, tmp_path: Path
) -> None:
    import re

    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    code, out, _ = run(job)
    assert code == 0, out
    progress = [line for line in out.splitlines() if line.startswith("jitrender: 20")]
    assert progress and all(
        re.match(r"jitrender: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z ", line) for line in progress
    )
    job2 = make_job(tmp_path / "job2", gcs_bucket, "3-4", name="other")
    quiet = job_cli(job2, "run", str(job2.job_file), "--progress", "quiet")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == "", quiet.stderr


def test_rich_bars_count_every_fetched_file_and_name_the_stage(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    put_object(f"{gcs_bucket}/shots/deps.txt", b"../assets/lut.bin\n")
    _rewrite(job, scene=f"{gcs_bucket}/shots/deps.txt", deps=[f"{gcs_bucket}/assets/tex.####.bin"])
    proc = subprocess.run(
        [sys.executable, "-m", "jitrender.cli", "run", str(job.job_file), "--progress", "rich"],
        env={**jitrender_env(job), "COLUMNS": "160", "TERM": "dumb"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"files\s.*\b4/4\b", proc.stderr), proc.stderr  # scene, lut, 2 textures
    assert re.search(r"frames\s.*\b2/2\b", proc.stderr), proc.stderr
    assert "render frame 2" in proc.stderr  # the last stage that ran, by name and frame


# -- 7. health: the node's faults only; a per-job blocklist --------------------------------------


def test_jobs_with_bad_flags_do_not_drain_a_healthy_node(gcs_bucket: str, tmp_path: Path) -> None:
    for job in jobs_on_one_node(tmp_path, gcs_bucket, {"a": "1-2", "b": "1-2"}):
        # A typo in the render flags: the renderer says so and exits 2, every frame.
        typo = "import sys; print('error: unknown option --smaples'); sys.exit(2)"
        _rewrite(job, stages=[{"name": "render", "command": [sys.executable, "-c", typo]}])
        code, out, _ = run(job)
        assert code == 65, out
    code, state = node_health(job)
    assert code == 0 and state["healthy"] is True, state
    assert state["failed_frames_in_a_row"] == 0
    # A missing output pattern is the job's too.
    (job,) = jobs_on_one_node(tmp_path, gcs_bucket, {"c": "1-2"})
    _rewrite(job, outputs={"to": f"{gcs_bucket}/c", "files": ["nothing.####.exr"]})
    code, out, _ = run(job)
    assert code == 65 and "did not write outputs/nothing.0001.exr" in out, out
    assert node_health(job)[0] == 0


def test_node_that_failed_one_jobs_frames_n_times_stops_taking_that_job(
    gcs_bucket: str, tmp_path: Path
) -> None:
    bad, good = jobs_on_one_node(tmp_path, gcs_bucket, {"bad": "1-3", "good": "4-5"})
    code, out, _ = run(bad, env=jitrender_env(bad, FAIL_FRAMES="1,2,3"))
    assert code == 65, out
    code, state = node_health(bad)
    assert code == 0, state  # the node is fine...
    assert [v["job_name"] for v in state["blocked_jobs"].values()] == ["bad"]
    code, out, _ = run(bad)  # ...but takes no more of this job's frames
    assert code == 69, out
    assert "takes no more of that job's frames" in _error_line(out)
    assert bad.phases("start") == [1, 2, 3]  # nothing ran the second time
    code, out, _ = run(good)  # other jobs still run here
    assert code == 0, out


# -- 9. GPU rendering with the blender engine ------------------------------------------------------


@pytest.mark.slow
def test_blender_gpu_without_a_gpu_is_78_naming_what_it_looked_for(
    gcs_bucket: str, tmp_path: Path
) -> None:
    import importlib.util

    if importlib.util.find_spec("bpy") is None:
        pytest.skip("needs the bpy module (extra 'blender')")
    import gzip

    blends = sorted(CORPUS.glob("blend/blends/**/basic_file.blend.gz"))
    if not blends:
        pytest.skip(f"no Blender corpus at {CORPUS}")
    scene = f"{gcs_bucket}/shot/basic_file.blend"
    put_object(scene, gzip.decompress(blends[0].read_bytes()))
    job = make_job(tmp_path / "job", gcs_bucket, "1", upload=False)
    for device, looked in (("GPU", "OPTIX, CUDA, HIP, ONEAPI, METAL"), ("cuda", "CUDA")):
        stage = {"name": "render", "engine": "blender", "args": {"device": device, "samples": 1}}
        _rewrite(job, scene=scene, deps=[], stages=[stage],
                 outputs={"to": f"{gcs_bucket}/r", "files": ["*.png"]})  # fmt: skip
        checked = cli("validate", str(job.job_file))
        if checked.returncode == 0:
            pytest.skip("this machine has a GPU: the no-GPU path cannot be shown here")
        assert checked.returncode == 78, checked.stderr
        line = _error_line(checked.stderr)
        assert "stages.render.args.device" in line and f"looked for {looked})" in line, line
        if device != "GPU":
            continue  # one run shows run refuses it the same way; each costs a Blender start
        code, out, report = run(job)
        assert code == 78, out
        assert line in out.splitlines()
        assert report["cache"]["bytes_fetched"] == 0  # refused before fetching the scene


@pytest.mark.parametrize(
    "args", [["--bogus"], ["--task-index", "x"], ["--frames", "9-1"], ["--progress=json", "-h2"]]
)
def test_progress_json_usage_errors_are_json_lines_too(tmp_path: Path, args: list[str]) -> None:
    """``--progress json`` promises nothing but JSON lines on stderr: a usage error (an unknown
    flag, a value typer refuses) is its one ``result`` line, as any other failure is."""
    job = tmp_path / "job.yaml"
    job.write_text(
        'frames: 1-2\nstages: [{name: r, command: ["true"]}]\n'
        f"outputs: {{to: 'file://{tmp_path}/bucket', files: [r.####.exr]}}\n"
    )
    result = cli("run", str(job), "--progress", "json", *args)
    assert result.returncode == 78, result.stderr
    lines = [json.loads(line) for line in result.stderr.splitlines()]
    assert [r["kind"] for r in lines] == ["result"], lines
    assert lines[0]["status"] == "failed" and lines[0]["exit_code"] == 78, lines
