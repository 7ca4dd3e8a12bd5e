"""Frame claims (jitrender.claims): two runs of the same frames at once render each frame
once, through ``jitrender run`` against fake-gcs-server; a killed run's frames are taken back
at once on its node; another node's live claim is waited for, a dead one taken over.

The renderer (tests/renderjobs.py) leaves ``start.<frame>.<pid>`` in the phase folder each
time it starts a frame: a frame rendered twice leaves two."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import gcs_client, put_object
from tests.faultproxy import Fault, FaultProxy, Request
from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    finish,
    jitrender_env,
    job_cli,
    make_job,
    run,
    start_run,
    wait_for,
)


def _env(job: RenderJob, **more: str) -> dict[str, str]:
    return jitrender_env(job, JITRENDER_HEARTBEAT_INTERVAL="0.5", **more)


def _hash(job: RenderJob) -> str:
    from jitrender.job import load_job

    return load_job(job.job_file).job_hash()


def _plant(job: RenderJob, frame: int, run_id: str, host: str, refreshed: float) -> str:
    """Another run's claim on ``frame`` and its lease, as a run on ``host`` writes them."""
    folder = f"{job.outputs_url}/_jitrender/{_hash(job)}/claims"
    lease = {"run": run_id, "host": host, "boot": "b", "pidns": "p", "pid": 1, "pid_start": "1",
             "refreshed": refreshed, "ttl": 60.0, "frames": str(frame)}  # fmt: skip
    put_object(f"{folder}/run.{run_id}.json", json.dumps(lease).encode())
    put_object(f"{folder}/frame.{frame}.0.json", json.dumps({"run": run_id}).encode())
    return folder


def _claim_objects(job: RenderJob) -> list[str]:
    """The claims and leases in the job's bucket (gs:// or a local folder)."""
    if job.bucket.startswith("file://"):
        root = Path(job.bucket[len("file://") :])
        found = (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
        return sorted(n for n in found if "/claims/" in n)
    return sorted(n for n in bucket_objects(job.bucket, "renders/") if "/claims/" in n)


def _outputs(job: RenderJob) -> set[str]:
    if job.bucket.startswith("file://"):
        root = Path(job.bucket[len("file://") :])
        return {str(p.relative_to(root)) for p in (root / "renders").glob("frame.*.txt")}
    return set(bucket_objects(job.bucket, "renders/"))


@pytest.mark.parametrize("where", ["gcs_bucket", "local_bucket"])
def test_two_runs_of_overlapping_frames_at_once_render_each_frame_once(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A run of 1-4 is rendering when a run of 3-6 starts (a farm's second dispatch, chunks
    that overlap): the second renders 5 and 6, waits for 3 and 4, and both end 0. Each frame
    was rendered once, every output is there, and no claim is left in the bucket: on GCS and
    on a local folder as the bucket (claims created with link(), as outputs are)."""
    job = make_job(tmp_path / "job", request.getfixturevalue(where), "1-6")
    env = _env(job, RENDER_SLEEP="0.7")
    first = start_run(job, "--frames", "1-4", env=env, report="first.json")
    wait_for(lambda: 1 in job.phases("start"))
    second = start_run(job, "--frames", "3-6", env=env, report="second.json")
    code_a, out_a = finish(first, timeout=120)
    code_b, out_b = finish(second, timeout=120)
    assert code_a == 0, out_a
    assert code_b == 0, out_b
    assert job.phases("start") == [1, 2, 3, 4, 5, 6], sorted(os.listdir(job.phase_dir))
    a = json.loads((job.root / "first.json").read_text())
    b = json.loads((job.root / "second.json").read_text())
    assert a["frames"]["done"] == [1, 2, 3, 4]
    assert b["frames"]["done"] == [5, 6] and b["frames"]["skipped_already_done"] == [3, 4]
    assert "is rendering them" in out_b and "waiting for frames 3-4" in out_b
    landed = _outputs(job)
    assert all(f"renders/frame.{f:04d}.txt" in landed for f in range(1, 7)), landed
    assert _claim_objects(job) == []


def test_a_killed_runs_frames_are_taken_back_at_once_on_its_node(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A run killed outright (SIGKILL: no release) leaves its claims and lease; the retry on
    the same node sees that process gone and renders the frames at once, not a minute later
    when the lease would expire."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    env = _env(job, RENDER_SLEEP="60")
    first = start_run(job, env=env, report="killed.json")
    wait_for(lambda: 1 in job.phases("start"))
    wait_for(lambda: len(_claim_objects(job)) >= 3)  # its lease and two claims
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    for started in job.phase_dir.glob("start.*"):  # its renderer dies with it; if not, now
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(started.name.split(".")[2]), signal.SIGKILL)
    job.clear_phases()
    began = time.monotonic()
    code, out, report = run(job, env=_env(job), report="retry.json")
    assert code == 0, out
    assert time.monotonic() - began < 30, out
    assert report["frames"]["done"] == [1, 2]
    assert _claim_objects(job) == []


def test_another_nodes_live_claim_is_waited_for_and_a_stopped_ones_frame_rendered_here(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """Frame 2 is claimed by a live run on another host: this run renders frame 1 and waits,
    rendering nothing more. When that run stops holding frame 2 without its done marker (it
    was preempted, say), this run says so and renders frame 2 itself (claiming it as any run
    would): the job ends done, without spending a farm retry on it."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    folder = _plant(job, 2, "elsewhere-7-abcd", "render-node-9", time.time())
    proc = start_run(job, env=_env(job), report="waiting.json")
    wait_for(lambda: 1 in job.phases("done"))
    time.sleep(2)  # waiting: it polls, renders nothing more
    assert job.phases("start") == [1]
    status = job_cli(job, "status", str(job.job_file), "--json")
    assert status.returncode == 0, status.stderr
    document = json.loads(status.stdout)
    assert document["frames"]["claimed"] == [2]  # frame 1: done
    # Who holds it: the other host's run (and this waiting run, whose lease claims frame 1).
    rows = {row["run"]: row for row in document["claims"]}
    other = rows["elsewhere-7-abcd"]
    assert (other["host"], other["frames"], other["lapsed"]) == ("render-node-9", "2", False)
    assert len(rows) == 2 and all(row["age_s"] < 60 for row in rows.values())
    text = job_cli(job, "status", str(job.job_file)).stdout
    assert "claims:  frames 2 by run elsewhere-7-abcd on render-node-9 pid 1" in text
    client = gcs_client()
    bucket = client.bucket(job.bucket[len("gs://") :])  # type: ignore[attr-defined]
    name = folder[len(job.bucket) + 1 :]
    bucket.blob(f"{name}/frame.2.0.json").delete()
    bucket.blob(f"{name}/run.elsewhere-7-abcd.json").delete()
    code, out = finish(proc, timeout=60)
    assert code == 0, out
    assert "frame 2: run elsewhere-7-abcd (host render-node-9, pid 1) stopped without" in out
    assert "this run renders it" in out
    assert job.phases("start") == [1, 2]
    report = json.loads((job.root / "waiting.json").read_text())
    assert report["frames"]["done"] == [1, 2]
    assert report["status"] == "succeeded"
    assert _claim_objects(job) == []


def test_a_claim_whose_lease_was_not_written_for_its_ttl_is_taken_over(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A run on another node died without releasing (its lease last written two minutes ago,
    its ttl one): its frame is taken over with the next claim; at the end the dead claim goes,
    and its lease with it (the only frame it names was taken over)."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    _plant(job, 2, "gone-1-0000", "render-node-3", time.time() - 120)
    code, out, report = run(job, env=_env(job))
    assert code == 0, out
    assert report["frames"]["done"] == [1, 2]
    assert job.phases("start") == [1, 2]
    assert _claim_objects(job) == []


def test_without_heartbeats_no_claim_is_written(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1")
    code, out, _ = run(job, env=jitrender_env(job, JITRENDER_HEARTBEAT_INTERVAL="0"))
    assert code == 0, out
    assert _claim_objects(job) == []


def test_a_stopped_run_releases_its_claims_for_the_retry_elsewhere(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """SIGTERM (a Spot VM's preemption notice): the run exits 75 and its claims and lease are
    gone from the bucket, so the farm's retry on another node starts on the frames at once
    instead of waiting out the lease."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    proc = start_run(job, env=_env(job, RENDER_SLEEP="60"), report="stopped.json")
    wait_for(lambda: 1 in job.phases("start"))
    wait_for(lambda: len(_claim_objects(job)) >= 3)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=30)
    assert code == 75, out
    assert _claim_objects(job) == []


def test_a_frame_taken_over_is_not_claimed_afresh_by_a_third_run(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A dead run's claim 0 is taken over with claim 1; while that run renders, a third run's
    first claim (0) must still be refused: the dead claim stays below the held one until its
    holder releases both. The third run waits, the frame is rendered once."""
    job = make_job(tmp_path / "job", gcs_bucket, "1")
    _plant(job, 1, "gone-2-0000", "render-node-4", time.time() - 120)
    env = _env(job, RENDER_SLEEP="2")
    taker = start_run(job, env=env, report="taker.json")
    wait_for(lambda: 1 in job.phases("start"))
    third = start_run(job, env=env, report="third.json")
    code_a, out_a = finish(taker, timeout=60)
    code_b, out_b = finish(third, timeout=60)
    assert code_a == 0, out_a
    assert code_b == 0, out_b
    assert job.phases("start") == [1], sorted(os.listdir(job.phase_dir))
    third_report = json.loads((job.root / "third.json").read_text())
    assert third_report["frames"]["skipped_already_done"] == [1]
    assert _claim_objects(job) == []


def test_a_lease_the_credentials_cannot_rewrite_is_said_once(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Create-only credentials (GCS's objectCreator role) write the lease once but cannot
    rewrite it: the run goes on and says, once, that other runs may take its frames after the
    lease's ttl (through a proxy answering 403 to every later write of the lease)."""
    job = make_job(tmp_path / "job", gcs_bucket, "1")
    writes: list[str] = []

    def refuse_rewrites(request: Request) -> Fault | None:
        if request.is_upload and request.names("/claims/run."):
            writes.append(request.path)
            return Fault("status", status=403) if len(writes) > 1 else None
        return None

    proxy.rules.append(refuse_rewrites)
    env = _env(job, STORAGE_EMULATOR_HOST=proxy.url, RENDER_SLEEP="2.5")
    code, out, report = run(job, env=env)
    assert code == 0, out
    assert report["frames"]["done"] == [1]
    assert len(writes) >= 3, writes  # every 0.5 s
    assert out.count("frame claims: cannot rewrite this run's lease") == 1, out


def test_a_run_waiting_for_a_holder_about_to_finish_ends_soon_after_it(
    tmp_path: Path, local_bucket: str
) -> None:
    """The same chunk dispatched twice on a node, heartbeats at their default 10 s: the second
    run waits for the first's frames, and learns that they are done within a fraction of its
    wait so far (looked at after 0.25 s, then doubling), not at its next 10 s look."""
    job = make_job(tmp_path / "job", local_bucket, "1-2")
    env = jitrender_env(job, JITRENDER_HEARTBEAT_INTERVAL="10", RENDER_SLEEP="1.0")
    first = start_run(job, env=env, report="first.json")
    wait_for(lambda: 1 in job.phases("start"))
    second = start_run(job, env=env, report="second.json")
    code_a, out_a = finish(first, timeout=120)
    first_ended = time.monotonic()
    code_b, out_b = finish(second, timeout=120)
    lag = time.monotonic() - first_ended
    assert (code_a, code_b) == (0, 0), out_a + out_b
    b = json.loads((job.root / "second.json").read_text())
    assert b["frames"]["skipped_already_done"] == [1, 2] and b["frames"]["done"] == []
    assert job.phases("start") == [1, 2]  # each frame rendered once
    assert lag < 5.0, f"the waiting run ended {lag:.1f} s after the holder"
