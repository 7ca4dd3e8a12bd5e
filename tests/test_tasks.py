"""Four farm tasks share one job by index (flags on two, GCP Batch variables on the other two),
two of them are SIGKILLed mid-chunk and rerun: the whole frame range ends up in the bucket
exactly once, and no rerun renders a frame another run already delivered."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.conftest import cli
from tests.renderjobs import (
    RenderJob,
    assert_exactly_once,
    bucket_objects,
    cache_verify,
    finish,
    jitrender_env,
    make_job,
    start_run,
    wait_for,
)

FRAMES = list(range(1, 17))
CHUNKS = {0: [1, 2, 3, 4], 1: [5, 6, 7, 8], 2: [9, 10, 11, 12], 3: [13, 14, 15, 16]}


def _task(job: RenderJob, index: int, cache: Path, **env: str) -> subprocess.Popen[bytes]:
    """Tasks 0 and 1 get their slot from flags, 2 and 3 from BATCH_TASK_INDEX/COUNT."""
    variables = jitrender_env(job, JITRENDER_CACHE_DIR=str(cache), **env)
    args: list[str] = []
    if index < 2:
        args = ["--task-index", str(index), "--task-count", "4"]
    else:
        variables.update({"BATCH_TASK_INDEX": str(index), "BATCH_TASK_COUNT": "4"})
    return start_run(job, *args, env=variables, report=f"task{index}.json")


def _report(job: RenderJob, index: int) -> dict[str, object]:
    data: dict[str, object] = json.loads((job.root / f"task{index}.json").read_text())
    return data


def test_four_tasks_some_killed_and_rerun_render_every_frame_exactly_once(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-16", texture_size=4000)
    node_a, node_b = tmp_path / "node-a", tmp_path / "node-b"  # two tasks per node cache
    caches = {0: node_a, 1: node_a, 2: node_b, 3: node_b}
    tasks = {i: _task(job, i, caches[i], RENDER_SLEEP="0.3") for i in range(4)}
    doomed = (1, 3)
    for index in doomed:  # killed while rendering the second frame of its chunk
        second = CHUNKS[index][1]
        wait_for(lambda frame=second: frame in job.phases("start"))  # type: ignore[misc]
        tasks[index].kill()
    for index, proc in tasks.items():
        code, out = finish(proc)
        if index in doomed:
            assert code == -9
        else:
            assert code == 0, out
            assert _report(job, index)["task"] == {
                "index": index,
                "count": 4,
                "source": "--task-index/--task-count"
                if index < 2
                else "BATCH_TASK_INDEX/BATCH_TASK_COUNT",
            }
    before = bucket_objects(gcs_bucket, "renders/")
    delivered = {int(n.split(".")[1]) for n in before if "/_jitrender/" not in n}
    delivered |= {int(n.rsplit(".", 2)[1]) for n in before if "/_jitrender/" in n}
    assert set(CHUNKS[0]) | set(CHUNKS[2]) <= delivered
    starts_before = job.phases("start")
    job.clear_phases()
    for index in doomed:
        code, out = finish(_task(job, index, caches[index]))
        assert code == 0, out
    rerendered = job.phases("start")
    assert not set(rerendered) & delivered, (rerendered, delivered)
    assert set(rerendered) <= set(CHUNKS[1]) | set(CHUNKS[3])
    assert sorted(set(starts_before) | set(rerendered)) == FRAMES

    assert_exactly_once(job, before)
    for cache in (node_a, node_b):
        job.cache_dir = cache
        assert cache_verify(job)["bad"] == 0

    status = cli("status", str(job.job_file), "--json", env=jitrender_env(job))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["complete"] is True


def test_a_task_past_the_last_frame_has_nothing_to_do(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2", texture_size=100)
    code, out = finish(_task(job, 3, tmp_path / "cache"))
    assert code == 0, out
    assert _report(job, 3)["frames"] == {
        "requested": [],
        "done": [],
        "skipped_already_done": [],
        "failed": [],
        "failures": [],
    }
