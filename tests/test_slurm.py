"""``jitrender submit --farm slurm`` on a real one-node Slurm cluster (tests/slurmcluster.py):
a 20-frame job as 4 array tasks, one task sent SIGTERM mid-render, which exits 75 and is
requeued by the generated script (``scontrol requeue``); every frame ends with exactly one
output and one done marker. Skipped, with the reason, where the cluster cannot start."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.slurmcluster import SlurmCluster, slurm_cluster, why_not

pytestmark = pytest.mark.slow  # real processes, a real browser / cluster: ~15-50 s

ROOT = Path(__file__).resolve().parent.parent

# Renders one frame: says where it is in $PHASE_DIR, sleeps long on the first attempt of
# $SLOW_FRAME (the one the test interrupts), writes its output to a temp name and renames it.
RENDERER = r"""
import os, pathlib, sys, time
frame, outputs = int(sys.argv[1]), pathlib.Path(sys.argv[2])
phase = pathlib.Path(os.environ["PHASE_DIR"])
attempt = len(list(phase.glob(f"start.{frame}.*")))
(phase / f"start.{frame}.{os.getpid()}").write_text("")
time.sleep(120 if frame == int(os.environ["SLOW_FRAME"]) and attempt == 0 else 0.1)
tmp = outputs / f".f.{frame:04d}.tmp"
tmp.write_text(f"frame {frame}\n")
os.replace(tmp, outputs / f"f.{frame:04d}.txt")
(phase / f"done.{frame}.{os.getpid()}").write_text("")
"""


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    reason = why_not()
    if reason is not None:
        pytest.skip(reason)
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as cluster:
        yield cluster


def wait_until(what: object, timeout: float, describe: object) -> None:
    assert callable(what) and callable(describe)
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out: {describe()}")
        time.sleep(0.2)


def test_slurm_array_with_a_terminated_and_requeued_task_renders_each_frame_once(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    phase = tmp_path / "phases"
    phase.mkdir()
    renderer = tmp_path / "render.py"
    renderer.write_text(RENDERER)
    outputs = tmp_path / "bucket" / "renders"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "name": "slurmshot",
                "frames": "1-20",
                "stages": [
                    {
                        "name": "render",
                        "command": [sys.executable, str(renderer), "{frame}", "{outputs}"],
                    }
                ],
                "outputs": {"to": f"file://{outputs}", "files": ["f.####.txt"]},
            }
        )
    )
    logs = tmp_path / "logs" / "slurm"  # does not exist: submit must create it
    env = {
        **slurm.env,
        "PYTHONPATH": os.environ.get("PYTHONPATH", str(ROOT)),
        "PHASE_DIR": str(phase),
        "SLOW_FRAME": "7",  # task 1 renders frames 6-10
        "JITRENDER_PREEMPTION_WATCH": "off",
        "JITRENDER_CACHE_DIR": str(tmp_path / "cache"),
    }
    submitted = subprocess.run(
        [
            sys.executable, "-m", "jitrender.cli", "submit", str(job_file), "--farm", "slurm",
            "--tasks", "4", "--cpus", "1", "--memory", "200MB", "--time-limit", "600",
            "--log-dir", str(logs),
            "--jitrender", f"{shlex.quote(sys.executable)} -m jitrender.cli",
        ],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    match = re.search(r"to slurm: (\d+)", submitted.stdout)
    assert match is not None, submitted.stdout
    job_id = match.group(1)
    assert f"jitrender status {job_file}" in submitted.stdout

    def describe() -> str:
        tails = " | ".join(p.read_text()[-300:] for p in sorted(logs.glob("*.out")))
        return f"states {slurm.job_states(job_id)}; logs: {tails}"

    wait_until(lambda: list(phase.glob("start.7.*")), 60, describe)
    signalled = subprocess.run(
        ["scancel", "--signal=TERM", "--batch", f"{job_id}_1"],
        env=env, capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert signalled.returncode == 0, signalled.stderr

    def all_completed() -> bool:
        states = slurm.job_states(job_id)
        return sorted(states) == ["0", "1", "2", "3"] and set(states.values()) == {"COMPLETED"}

    wait_until(all_completed, 120, describe)
    elapsed = time.monotonic() - started

    names = sorted(p.name for p in outputs.iterdir() if p.is_file())
    assert names == [f"f.{frame:04d}.txt" for frame in range(1, 21)]
    for frame in range(1, 21):
        assert (outputs / f"f.{frame:04d}.txt").read_text() == f"frame {frame}\n"
    markers = sorted(p.name for p in outputs.glob("_jitrender/*/frame.*.json"))
    assert markers == sorted(f"frame.{frame}.json" for frame in range(1, 21))
    # Frame 7 was started twice (interrupted, then after the requeue) and finished once; the
    # requeued task skipped frame 6, which it had finished before the signal.
    assert len(list(phase.glob("start.7.*"))) == 2
    assert len(list(phase.glob("done.7.*"))) == 1
    assert len(list(phase.glob("done.6.*"))) == 1
    (task_log,) = logs.glob(f"*_{job_id}_1.out")
    text = task_log.read_text()
    assert "exit 75, requeue 1 of 3" in text and "task 1 done" in text
    # The job-wide view agrees, from the tasks' last heartbeats: task 1 ran twice. --watch
    # stops at the first look, the job being complete (one JSON line).
    followed = subprocess.run(
        [sys.executable, "-m", "jitrender.cli", "status", str(job_file), "--json", "--watch"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    document = json.loads(followed.stdout)
    assert document["complete"] is True and document["counts"]["done"] == 20
    tasks = {t["task"]: t for t in document["tasks"]}
    assert sorted(tasks) == ["0", "1", "2", "3"]
    assert {t["state"] for t in tasks.values()} == {"succeeded"}
    assert tasks["1"]["attempt"] == 1 and tasks["0"]["attempt"] == 0
    print(f"slurm: cluster up in {slurm.started_s:.1f} s; job with requeue took {elapsed:.1f} s")
