"""Issue 12, storage: gzip-encoded objects and outages, through a real ``jitrender run``
against fake-gcs-server behind the fault proxy."""

from __future__ import annotations

import gzip
import time
from pathlib import Path
from typing import Any

from tests.conftest import gcs_client, put_object
from tests.faultproxy import Fault, FaultProxy, Request, first_only
from tests.renderjobs import (
    bucket_objects,
    expected_output,
    jitrender_env,
    make_job,
    run,
    shared_lut,
    texture,
)

# Read by the shared ``proxy`` fixture (tests/conftest.py).
PROXY_SETTINGS = {"stall_s": 0.5, "seed": 3}


def _put_gzip_encoded(url: str, data: bytes) -> bytes:
    """Upload ``data`` gzip-encoded (``Content-Encoding: gzip``, as ``gsutil cp -Z`` does);
    returns the stored bytes."""
    bucket, _, name = url[len("gs://") :].partition("/")
    stored = gzip.compress(data, mtime=0)
    blob = gcs_client().bucket(bucket).blob(name)  # type: ignore[attr-defined]
    blob.content_encoding = "gzip"
    blob.upload_from_string(stored, content_type="application/octet-stream")
    return stored


def test_gzip_encoded_dependency_is_fetched_as_stored_and_verified(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")
    stored = _put_gzip_encoded(f"{gcs_bucket}/assets/lut.bin", shared_lut(job.texture_size))
    proxy.rate = 0.05  # a few faults on the way: they heal, the encoding never counts as one
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0, out
    assert "storage said" not in out
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"]
    objects = bucket_objects(gcs_bucket, "renders/")
    for frame in job.frames:
        inputs = stored + texture(frame, job.texture_size)  # the stored bytes reach the renderer
        assert objects[f"renders/frame.{frame:04d}.txt"][1] == expected_output(frame, inputs)


def _run_through_outage(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, outage_s: float, deadline_s: float
) -> tuple[int, str, dict[str, Any], float]:
    """Run a two-frame job with ``retries.storage_deadline`` at ``deadline_s`` while every
    storage request fails (503 or a reset, alternately) for ``outage_s`` from the first one;
    (exit code, output, report, seconds the run took)."""
    job = make_job(
        tmp_path / "job", gcs_bucket, "1-2", extra={"retries": {"storage_deadline": deadline_s}}
    )
    began: list[float] = []

    def outage(request: Request) -> Fault | None:
        now = time.monotonic()
        if not began:
            began.append(now)
        if now - began[0] < outage_s:
            return Fault("503" if int(now * 10) % 2 else "reset")
        return None

    proxy.rules.append(outage)
    started = time.monotonic()
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    return code, out, report, time.monotonic() - started


def test_storage_outage_of_a_few_seconds_is_ridden_out(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    code, out, report, elapsed = _run_through_outage(gcs_bucket, tmp_path, proxy, 2.0, 30)
    assert code == 0, out
    assert elapsed >= 2.0  # it really waited the outage out
    assert proxy.counts["503"] + proxy.counts["reset"] >= 3, proxy.counts
    assert report["frames"]["done"] == [1, 2]


def test_outage_past_the_deadline_is_75_transient_storage_failure_not_preempted(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    code, out, report, elapsed = _run_through_outage(gcs_bucket, tmp_path, proxy, 60.0, 2)
    assert code == 75, out
    assert report["status"] == "transient_failure"
    assert report["error"].startswith("transient storage failure:"), report["error"]
    assert "preempted" not in out
    # The 2 s deadline, not a count of attempts, ended it: retried, then given up well before
    # 20 s. (No lower bound on the time: a jittered pause that would end past the deadline is
    # not slept, so the run may give up before 2 s have passed.)
    assert proxy.counts["503"] + proxy.counts["reset"] >= 2, proxy.counts
    assert elapsed < 20, elapsed


def _uploads_of(proxy: FaultProxy, name: str) -> list[Request]:
    """The uploads (JSON API, multipart) whose metadata part names object ``name``."""
    named = f'"name": "{name}"'.encode()
    return [r for r in proxy.requests if r.is_upload and named in r.body[:4096]]


def test_small_upload_answered_503_is_retried_and_lands_once(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    first_upload_of_frame_1, refused = first_only(
        lambda r: r.is_upload and b'"name": "renders/frame.0001.txt"' in r.body[:4096], "503"
    )
    proxy.rules.append(first_upload_of_frame_1)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0, out
    assert refused and proxy.counts["503"] == 1, proxy.counts
    uploads = _uploads_of(proxy, "renders/frame.0001.txt")
    assert len(uploads) == 2  # the refused one and one retry, which created it
    assert all(
        "uploadType=multipart" in u.path and "ifGenerationMatch=0" in u.path for u in uploads
    )
    assert report["frames"]["done"] == [1, 2] and report["outputs"]["conflicts"] == []
    objects = bucket_objects(gcs_bucket, "renders/")
    assert objects["renders/frame.0001.txt"][1] == expected_output(1, job.frame_inputs(1))


def test_small_output_over_someone_elses_object_is_a_conflict_not_an_overwrite(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    put_object(f"{gcs_bucket}/renders/frame.0002.txt", b"not jitrender's\n")
    before = bucket_objects(gcs_bucket, "renders/")["renders/frame.0002.txt"]
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code != 0, out
    assert report["outputs"]["conflicts"] == ["frame.0002.txt"], report["outputs"]
    assert bucket_objects(gcs_bucket, "renders/")["renders/frame.0002.txt"] == before
    assert len(_uploads_of(proxy, "renders/frame.0002.txt")) == 1  # refused (412), not retried


def test_small_upload_refused_403_is_not_retried_and_says_permission_denied(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    named = b'"name": "renders/frame.0002.txt"'
    proxy.rules.append(
        lambda r: Fault("status", status=403) if r.is_upload and named in r.body[:4096] else None
    )
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 65, out  # as through google-cloud-storage: the frame fails, not the node
    assert report["frames"]["done"] == [1] and report["frames"]["failed"] == [2]
    assert "frame.0002.txt: permission denied (403" in report["error"], report["error"]
    assert len(_uploads_of(proxy, "renders/frame.0002.txt")) == 1  # denied: never retried
