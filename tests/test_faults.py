"""Storage faults between a real ``jitrender run`` process and fake-gcs-server: transient ones
heal through retries and the outputs are byte-exact; permanent ones end with the right code."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.faultproxy import Fault, FaultProxy, Request
from tests.renderjobs import (
    bucket_objects,
    cache_verify,
    expected_output,
    jitrender_env,
    make_job,
    run,
)

# Read by the shared ``proxy`` fixture (tests/conftest.py).
PROXY_SETTINGS = {"stall_s": 0.5, "seed": 1}


def test_job_completes_with_exact_bytes_through_ten_percent_faults(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-8", storage_attempts=10)
    proxy.rate = 0.10
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    code, out, report = run(job, env=env)
    assert code == 0, out
    faults = {k: v for k, v in proxy.counts.items() if k != "pass"}
    assert sum(faults.values()) >= 3, proxy.counts  # the proxy really did get in the way
    objects = bucket_objects(gcs_bucket, "renders/")
    for frame in job.frames:
        data = objects[f"renders/frame.{frame:04d}.txt"][1]
        assert data == expected_output(frame, job.frame_inputs(frame))
    markers = [n for n in objects if "/_jitrender/" in n]
    assert len(markers) == len(job.frames)
    assert report["frames"]["done"] == job.frames
    assert cache_verify(job)["bad"] == 0


def test_every_fault_kind_on_every_call_kind_heals(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Each kind of fault hits each kind of call (list, stat, download, upload) once."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-3", storage_attempts=6)
    seen: set[tuple[str, str]] = set()

    def once_each(request: Request) -> Fault | None:
        call = (
            "upload"
            if request.is_upload
            else "download"
            if request.is_download
            else "list"
            if request.path.split("?")[0].endswith("/o")
            else "stat"
        )
        for kind in ("503", "429", "reset", "reset_after", "truncate", "stall"):
            if (call, kind) not in seen:
                seen.add((call, kind))
                return Fault(kind)
        return None

    proxy.rules.append(once_each)
    code, out, _report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 0, out
    assert {call for call, _ in seen} >= {"upload", "download", "list", "stat"}
    objects = bucket_objects(gcs_bucket, "renders/")
    for frame in job.frames:
        data = objects[f"renders/frame.{frame:04d}.txt"][1]
        assert data == expected_output(frame, job.frame_inputs(frame))


def test_missing_dependency_exits_65_before_rendering(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")
    from tests.conftest import gcs_client

    gcs_client().bucket(gcs_bucket[5:]).blob("assets/tex.0002.bin").delete()  # type: ignore[attr-defined]
    code, out, report = run(job)
    assert code == 65, out
    assert "tex.0002.bin" in out
    assert job.phases("start") == []
    assert report["status"] == "failed"


def test_dependency_gone_at_download_exits_65(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """A 404 on the download itself (deleted after it was listed) is permanent: no retries."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")

    def gone(request: Request) -> Fault | None:
        if request.is_download and "tex.0002.bin" in request.path:
            return Fault("status", status=404)
        return None

    proxy.rules.append(gone)
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 65, out
    assert "tex.0002.bin" in (report["error"] or "")
    downloads = [r for r in proxy.requests if r.is_download and "tex.0002.bin" in r.path]
    assert len(downloads) == 1


@pytest.mark.parametrize("status", [401, 403])
def test_permission_denied_exits_78(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, status: int
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    proxy.rules.append(lambda request: Fault("status", status=status))
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 78, out
    assert "permission denied" in out
    assert report["status"] == "failed"


def test_storage_that_stays_down_exits_75(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2", storage_attempts=3)
    proxy.rules.append(lambda request: Fault("503"))
    code, out, report = run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert code == 75, out
    assert report["status"] == "transient_failure"
    assert "transient storage failure" in report["error"]


def test_upload_failing_after_retries_exits_75_and_rerun_completes(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3", storage_attempts=2)

    def uploads_fail(request: Request) -> Fault | None:
        return Fault("503") if request.is_upload and request.names("frame.0002") else None

    proxy.rules.append(uploads_fail)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url)
    code, out, report = run(job, env=env)
    assert code == 75, out
    assert 2 not in report["frames"]["done"]
    proxy.rules.clear()
    job.clear_phases()
    code, out, report = run(job, env=env)
    assert code == 0, out
    assert job.phases("start") == [2]
    assert sorted(report["frames"]["skipped_already_done"]) == [1, 3]


@pytest.mark.parametrize(
    ("texture_size", "path"), [(20_000, "asyncio"), (9 << 20, "ranged")], ids=["small", "large"]
)
def test_a_download_that_stalls_mid_body_is_retried_after_the_read_timeout(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, texture_size: int, path: str
) -> None:
    """The first download of frame 1's texture sends its headers and half its body, then
    nothing, on a connection left open (a stalled link). With ``JITRENDER_READ_TIMEOUT_S=1``
    the request is given up after a second of silence and retried: the run ends 0 with exact
    outputs long before the stall would end by itself (the proxy resets it after 30 s). Small
    objects take the asyncio path (obstore), large ones the ranged one (urllib3)."""
    import time

    from jitrender.storage import GCSStore
    from jitrender.transport import route

    job = make_job(tmp_path / "job", gcs_bucket, "1-2", texture_size=texture_size)
    store = GCSStore()
    info = store.stat(f"{gcs_bucket}/assets/tex.0001.bin")
    assert info is not None and route(info, store) == path
    stall = Fault("stall_body")
    taken: list[Request] = []

    def first_texture_download(request: Request) -> Fault | None:
        if taken or not (request.is_download and request.names("tex.0001")):
            return None
        taken.append(request)
        return stall

    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url, JITRENDER_READ_TIMEOUT_S="1")
    started = time.monotonic()
    try:
        with proxy.rule(first_texture_download):
            code, out, report = run(job, env=env)
    finally:
        stall.release.set()
    elapsed = time.monotonic() - started
    assert code == 0, out
    assert stall.held.is_set()  # the stall really happened
    assert elapsed < 20, f"{elapsed:.1f} s: the stalled read was not given up"
    objects = bucket_objects(gcs_bucket, "renders/")
    for frame in job.frames:
        data = objects[f"renders/frame.{frame:04d}.txt"][1]
        assert data == expected_output(frame, job.frame_inputs(frame))
    assert report["frames"]["done"] == job.frames
    assert cache_verify(job)["bad"] == 0


@pytest.mark.parametrize("value", ["soon", "0", "-3", "nan"])
def test_a_read_timeout_that_is_not_a_positive_number_is_refused_at_start(
    gcs_bucket: str, tmp_path: Path, value: str
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1", upload=False)
    code, out, _ = run(job, env=jitrender_env(job, JITRENDER_READ_TIMEOUT_S=value))
    assert code == 78, out
    assert "JITRENDER_READ_TIMEOUT_S" in out and repr(value) in out, out
    assert "Traceback" not in out
