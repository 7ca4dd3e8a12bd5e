"""The job hash is the pixels' identity, and re-rendering is a command: through ``jitrender
run`` / ``jitrender requeue`` against fake-gcs-server, with real stage processes."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    jitrender_env,
    job_cli,
    rendered,
    run,
)


def _edit(job: RenderJob, **changes: object) -> None:
    data = yaml.safe_load(job.job_file.read_text())
    for key, value in changes.items():
        if key == "timeout":
            data["stages"][0]["timeout"] = value
        else:
            data[key] = value
    job.job_file.write_text(yaml.safe_dump(data))


def _cli(job: RenderJob, *args: str) -> tuple[int, str]:
    out = job_cli(job, *args, timeout=60)
    return out.returncode, out.stdout + out.stderr


def test_timeout_retries_and_name_edits_keep_the_job_and_render_nothing(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = rendered(tmp_path / "job", gcs_bucket, "1-3")
    before = bucket_objects(gcs_bucket, "renders/")
    _edit(job, timeout=1200, retries={"frame": 3, "storage": 4}, name="shot_v2", chunk=2)
    job.clear_phases()
    code, out, report = run(job, report="edited.json")
    assert code == 0, out
    assert job.phases("start") == []
    assert report["frames"]["skipped_already_done"] == [1, 2, 3]
    assert bucket_objects(gcs_bucket, "renders/") == before


def test_incompatible_edit_is_refused_before_anything_is_fetched_or_rendered(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = rendered(tmp_path / "job", gcs_bucket, "1-3")
    before = bucket_objects(gcs_bucket, "renders/")
    _edit(job, env={"LOOK": "graded"})  # changes what the stages see: other pixels
    job.clear_phases()
    code, out, report = run(job, report="edited.json")
    assert code == 65, out
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in out
    line = errors[0]
    assert f"{gcs_bucket}/renders/" in line and "3 outputs of another version" in line
    assert "--overwrite" in line and "outputs.to" in line
    assert job.phases("start") == []
    assert report["cache"]["bytes_fetched"] == 0
    assert bucket_objects(gcs_bucket, "renders/") == before


def test_rerender_replaces_a_frames_output_and_marker(gcs_bucket: str, tmp_path: Path) -> None:
    job = rendered(tmp_path / "job", gcs_bucket, "1-3")
    before = bucket_objects(gcs_bucket, "renders/")
    job.clear_phases()
    env = jitrender_env(job, OUTPUT_TAG="fixed ")
    code, out, _ = run(job, "--frames", "2", "--rerender", env=env, report="again.json")
    assert code == 0, out
    assert job.phases("start") == [2]
    after = bucket_objects(gcs_bucket, "renders/")
    name = "renders/frame.0002.txt"
    assert after[name][1].startswith(b"fixed ") and after[name][0] != before[name][0]
    assert after["renders/frame.0001.txt"] == before["renders/frame.0001.txt"]
    marker = next(n for n in after if n.endswith("/frame.2.json"))
    assert after[marker][0] != before[marker][0]  # a new marker for the new render
    assert json.loads(after[marker][1])["frame"] == 2


def test_requeue_makes_the_next_run_render_the_frames_again(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = rendered(tmp_path / "job", gcs_bucket, "1-4")
    before = bucket_objects(gcs_bucket, "renders/")
    code, out = _cli(job, "requeue", str(job.job_file), "--frames", "2-3")
    assert code == 0, out
    code, out = _cli(job, "status", str(job.job_file), "--json")
    assert json.loads(out)["frames"]["missing"] == [2, 3]
    job.clear_phases()
    env = jitrender_env(job, OUTPUT_TAG="requeued ")
    code, out, _ = run(job, env=env, report="farm.json")
    assert code == 0, out
    assert job.phases("start") == [2, 3]
    after = bucket_objects(gcs_bucket, "renders/")
    assert after["renders/frame.0002.txt"][1].startswith(b"requeued ")
    assert after["renders/frame.0001.txt"] == before["renders/frame.0001.txt"]
    assert not [n for n in after if "/requeue." in n]  # the requests were served
    # --delete-outputs removes the outputs too; the next run renders the frame from nothing.
    code, out = _cli(job, "requeue", str(job.job_file), "--frames", "4", "--delete-outputs")
    assert code == 0, out
    assert "renders/frame.0004.txt" not in bucket_objects(gcs_bucket, "renders/")
    job.clear_phases()
    code, out, _ = run(job, report="farm2.json")
    assert code == 0 and job.phases("start") == [4], out
