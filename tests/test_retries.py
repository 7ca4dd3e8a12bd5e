"""Frame retries, node health, and a changed job definition, with real ``jitrender run``
processes against fake-gcs-server."""

from __future__ import annotations

import json
from pathlib import Path

from jitrender.health import FrameOutcome, HealthPolicy, NodeHealth
from tests.conftest import cli
from tests.renderjobs import (
    bucket_objects,
    expected_output,
    jitrender_env,
    jobs_on_one_node,
    make_job,
    node_health,
    rendered,
    run,
)


def test_flaky_frame_heals_on_retry(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3", retries_frame=1)
    code, out, report = run(job, env=jitrender_env(job, FLAKY_FRAMES="2"))
    assert code == 0, out
    assert job.phases("start") == [1, 2, 2, 3]
    assert report["frames"]["done"] == [1, 2, 3]
    data = bucket_objects(gcs_bucket, "renders/")["renders/frame.0002.txt"][1]
    assert data == expected_output(2, job.frame_inputs(2))


def test_frame_that_keeps_failing_fails_the_run_after_the_others(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-4", retries_frame=2)
    code, out, report = run(job, env=jitrender_env(job, FAIL_FRAMES="2"))
    assert code == 65, out
    assert job.phases("start").count(2) == 3  # the first attempt and retries.frame=2 more
    assert report["status"] == "failed"
    assert report["frames"]["done"] == [1, 3, 4]
    assert report["frames"]["failed"] == [2]
    (failure,) = report["frames"]["failures"]
    assert failure["frame"] == 2 and failure["stage"] == "render"
    assert "exit code 3" in failure["why"]
    assert any("out of cheese" in line for line in failure["log_tail"])
    assert "frame 2" in (report["error"] or "")
    assert "frame.0002.txt" not in str(bucket_objects(gcs_bucket, "renders/"))


def test_node_failing_frames_of_several_jobs_reports_unhealthy(
    gcs_bucket: str, tmp_path: Path
) -> None:
    first, second = jobs_on_one_node(tmp_path, gcs_bucket, {"a": "1-2", "b": "3-4"})
    cache = first.cache_dir
    assert node_health(first)[0] == 0
    code, out, _ = run(first, env=jitrender_env(first, CRASH_FRAMES="1,2"))
    assert code == 65, out
    code, state = node_health(first)
    assert code == 0, state  # two failures of one job: that job's problem
    assert state["failed_frames_in_a_row"] == 2
    code, out, _ = run(second, env=jitrender_env(second, GPU_ERROR_FRAMES="3,4"))
    assert code == 65, out
    code, state = node_health(first)
    assert code == 69 and state["healthy"] is False, state
    assert state["failed_jobs_in_a_row"] == 2
    assert "CUDA error" in state["recent_failures"][-1]["cause"]
    assert "SIGKILL" in state["recent_failures"][0]["cause"]
    assert json.loads((cache / "health.json").read_text())["streak"]  # plain JSON on disk
    code, out, _ = run(first)  # a drained node starts nothing
    assert code == 69, out
    assert cli("health", "--reset", env=jitrender_env(first)).returncode == 0
    code, out, _ = run(first)  # repaired: it renders, and a rendered frame clears the streak
    assert code == 0, out
    assert NodeHealth(cache).status()["failed_frames_in_a_row"] == 0


def test_health_reset_and_thresholds(tmp_path: Path) -> None:
    node = NodeHealth(tmp_path / "cache", HealthPolicy(failed_frames=2, failed_jobs=2))
    node.record([FrameOutcome("a", "a", 1, False, "render: exit code -9")])
    node.record([FrameOutcome("a", "a", 2, False, "render: exit code 139")])
    assert node.status()["healthy"] is True  # one job failing is that job's problem
    node.record([FrameOutcome("c", "c", 3, False, "render: exit code 2: unknown flag --sample")])
    assert node.status()["failed_frames_in_a_row"] == 2  # bad flags are not the node's fault
    node.record([FrameOutcome("b", "b", 7, False, "render: exit code 1", ("GPU lost",))])
    assert node.status()["healthy"] is False
    node.reset()
    assert node.status()["healthy"] is True
    assert HealthPolicy.from_env({"JITRENDER_HEALTH_FAILED_FRAMES": "5"}).failed_frames == 5


def test_changed_job_does_not_reuse_old_markers_and_reports_conflicts(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = rendered(tmp_path / "job", gcs_bucket, "1-3")
    before = bucket_objects(gcs_bucket, "renders/")
    # Same outputs, a different definition (the stage's env): a different job hash, refused
    # before anything renders because the old version's outputs are in the way.
    changed = make_job(
        tmp_path / "job", gcs_bucket, "1-3", upload=False,
        extra={"env": {"LOOK": "v2"}},
    )  # fmt: skip
    job.clear_phases()
    code, out, report = run(changed, report="changed.json")
    assert code == 65, out
    assert changed.phases("start") == []
    assert "3 outputs of another version of this job" in out and "--overwrite" in out
    # --overwrite: identical bytes are left alone (same generation), markers for the new hash.
    code, out, report = run(changed, "--overwrite", report="changed.json")
    assert report["frames"]["skipped_already_done"] == []  # old markers are not this job's
    assert changed.phases("start") == [1, 2, 3]
    assert code == 0, out
    after = bucket_objects(gcs_bucket, "renders/")
    for name, (generation, _) in before.items():
        assert after[name][0] == generation
    assert len([n for n in after if "/_jitrender/" in n]) == 6  # one marker set per hash
    # Different bytes from a changed renderer, --overwrite: replaced, generation-matched.
    looked = make_job(
        tmp_path / "job", gcs_bucket, "1-3", upload=False,
        extra={"env": {"LOOK": "v3"}},
    )  # fmt: skip
    env = jitrender_env(looked, OUTPUT_TAG="graded ")
    code, out, report = run(looked, "--overwrite", report="conflict.json", env=env)
    assert code == 0, out
    final = bucket_objects(gcs_bucket, "renders/")
    for name in (f"renders/frame.{f:04d}.txt" for f in (1, 2, 3)):
        assert final[name][1].startswith(b"graded ")
        assert final[name][0] != before[name][0]
