"""Issue 12, storage: gzip-encoded objects and outages, through a real ``jitrender run``
against fake-gcs-server behind the fault proxy."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import gcs_client
from tests.faultproxy import FaultProxy
from tests.renderjobs import (
    bucket_objects,
    expected_output,
    jitrender_env,
    make_job,
    run,
    shared_lut,
    texture,
)


@pytest.fixture
def proxy(gcs_server: str) -> Iterator[FaultProxy]:
    with FaultProxy(gcs_server, stall_s=0.5, seed=3) as running:
        yield running


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
