"""Resume trusts the bucket: a frame whose marker stands but whose output was deleted is
rendered again, and ``jitrender status`` says the job is not complete (fake-gcs-server, real
``jitrender`` processes)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import gcs_client
from tests.renderjobs import RenderJob, bucket_objects, job_cli, make_job, run


def status(job: RenderJob) -> dict[str, object]:
    out = job_cli(job, "status", str(job.job_file), "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.parametrize("files", ["frame.####.txt", "**/*.txt"], ids=["frame-token", "glob"])
def test_deleted_output_is_rendered_again_and_status_says_incomplete(
    gcs_bucket: str, tmp_path: Path, files: str
) -> None:
    job = make_job(
        tmp_path / "job", gcs_bucket, "1-3",
        extra={"outputs": {"to": f"{gcs_bucket}/renders", "files": [files]}},
    )  # fmt: skip
    code, out, _ = run(job)
    assert code == 0, out
    assert status(job)["complete"] is True
    bucket = gcs_bucket[len("gs://") :]
    gcs_client().bucket(bucket).blob("renders/frame.0002.txt").delete()  # type: ignore[attr-defined]
    state = status(job)
    assert state["complete"] is False
    frames: dict[str, list[int]] = state["frames"]  # type: ignore[assignment]
    assert frames["done"] == [1, 3] and frames["missing"] == [2] and frames["pending"] == [2]
    job.clear_phases()
    code, out, report = run(job, report="rerun.json")
    assert code == 0, out
    assert job.phases("start") == [2]
    assert report["frames"]["skipped_already_done"] == [1, 3]
    assert report["frames"]["done"] == [2]
    assert "renders/frame.0002.txt" in bucket_objects(gcs_bucket, "renders/")
    assert status(job)["complete"] is True
