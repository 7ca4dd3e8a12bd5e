"""Logs live with the job: stage logs reach the bucket while the stage runs and at exit
(SIGTERM included), ``jitrender logs`` prints them, and a ``--keep-workspace`` workspace
survives later runs until ``cache prune`` (fake-gcs-server, real processes)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from tests.renderjobs import (
    RenderJob,
    finish,
    jitrender_env,
    job_cli,
    make_job,
    run,
    start_run,
    wait_for,
)


def logs(job: RenderJob, *args: str) -> tuple[int, str]:
    out = job_cli(job, "logs", str(job.job_file), *args, timeout=60)
    return out.returncode, out.stdout + out.stderr


# Says something, then works until the test creates the file argv[4] (at most argv[3] s),
# long enough for a periodic copy to happen.
CHATTY = (
    "import sys, time, pathlib; print('frame', sys.argv[1], 'halfway', flush=True)\n"
    "end = time.monotonic() + float(sys.argv[3])\n"
    "while time.monotonic() < end and not pathlib.Path(sys.argv[4]).exists(): time.sleep(0.1)\n"
    "pathlib.Path(sys.argv[2], f'frame.{{int(sys.argv[1]):04d}}.txt').write_text('ok')"
)


def _chatty(job_root: Path, bucket: str, seconds: float) -> RenderJob:
    release = job_root / "release"
    stage = {
        "name": "render",
        "command": [
            sys.executable, "-c", CHATTY, "{frame}", "{outputs}", str(seconds), str(release),
        ],
    }  # fmt: skip
    return make_job(job_root, bucket, "1", extra={"stages": [stage]})


def test_failing_frames_log_is_readable_with_jitrender_logs(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")
    code, out, _ = run(job, env=jitrender_env(job, FAIL_FRAMES="2"))
    assert code == 65, out
    code, text = logs(job, "--frame", "2")
    assert code == 0, text
    assert "frame 2 exploded: out of cheese" in text
    assert "==> frames-1-3/" in text and "/render.2.0.log <==" in text
    assert "render.1.0.log" not in text  # only frame 2's
    code, text = logs(job)
    assert "render.1.0.log" in text and "report.json" in text and '"failed"' in text


def _said_halfway(job: RenderJob) -> bool:
    """The stage's local log (in the run's workspace) has its first line."""
    found = (job.cache_dir / "runs").glob("*/logs/render.1.0.log")
    return any("frame 1 halfway" in path.read_text() for path in found)


def test_logs_reach_the_bucket_while_the_stage_runs(gcs_bucket: str, tmp_path: Path) -> None:
    job = _chatty(tmp_path / "job", gcs_bucket, 20)
    proc = start_run(job)
    wait_for(lambda: _said_halfway(job), timeout=30, step=0.1)
    with _ctrl_c_reaches_children():
        follower = subprocess.Popen(
            [sys.executable, "-m", "jitrender.cli", "logs", str(job.job_file), "--follow"],
            env=jitrender_env(job), stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
    try:
        assert follower.stdout is not None
        wait_for(lambda: "frame 1 halfway" in logs(job, "--frame", "1")[1], timeout=15, step=0.2)
        assert proc.poll() is None  # still rendering
        line = follower.stdout.readline()
        while "frame 1 halfway" not in line:
            line = follower.stdout.readline()
        assert "frame 1 halfway" in line
    finally:
        follower.send_signal(signal.SIGINT)
        stuck = _ended_or_why(follower, 10.0)
    (job.root / "release").write_text("")  # the stage may end now
    code, out = finish(proc)
    assert code == 0, out
    assert not stuck, f"logs --follow outlived its Ctrl-C: {stuck}"


@contextlib.contextmanager
def _ctrl_c_reaches_children() -> Iterator[None]:
    """A child started meanwhile takes Ctrl-C as a terminal's user would: a suite started as a
    background job of a non-interactive shell ignores SIGINT, and its children inherit that
    (a follower then outlived its Ctrl-C, with SigIgn showing SIGINT ignored)."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # reset to default in a child
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ended_or_why(proc: subprocess.Popen[str], seconds: float) -> str:
    """'' once ``proc`` has ended within ``seconds``; else its kernel state (State, signal
    masks, wait channel), and then it is killed."""
    try:
        proc.wait(timeout=seconds)
        return ""
    except subprocess.TimeoutExpired:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text().splitlines()
            wchan = Path(f"/proc/{proc.pid}/wchan").read_text()
        except OSError as exc:
            status, wchan = [str(exc)], ""
        keep = ("State", "SigQ", "SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt", "Threads")
        why = "; ".join(line for line in status if line.split(":")[0] in keep)
        proc.kill()
        proc.wait(timeout=10)
        return f"{why}; wchan {wchan}"


def test_sigterm_still_copies_the_log(gcs_bucket: str, tmp_path: Path) -> None:
    job = _chatty(tmp_path / "job", gcs_bucket, 30)
    proc = start_run(job)
    wait_for(lambda: _said_halfway(job), timeout=30, step=0.1)
    proc.send_signal(signal.SIGTERM)  # before the next periodic copy: the last one has it
    code, out = finish(proc, timeout=20)
    assert code == 75, out
    code, text = logs(job, "--frame", "1")
    assert "frame 1 halfway" in text


def test_kept_workspace_survives_later_runs_until_cache_prune(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    code, out, report = run(job, "--frames", "1", "--keep-workspace")
    assert code == 0, out
    kept = Path(report["workspace"])
    assert (kept / "logs" / "render.1.0.log").is_file()
    code, out, _ = run(job, "--frames", "2", report="second.json")
    assert code == 0, out
    assert kept.is_dir()  # a later run on the node left it alone
    pruned = job_cli(job, "cache", "prune", timeout=60)
    assert pruned.returncode == 0, pruned.stderr
    assert not kept.exists()
