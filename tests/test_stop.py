"""SIGTERM at any moment of a real ``jitrender run`` process, and while storage hangs.

The promises: a SIGTERM at start-up, during the run, just after the last frame or while the
last lines print ends with the report's exit code (75 preempted, or 0 when every frame was
already done and marked), never with the signal itself (-15); and a stopped run exits inside
15 s whatever storage does (every storage call after the stop has a deadline; a backstop
writes the report and exits at ``JITRENDER_STOP_BACKSTOP_S``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.faultproxy import Fault, FaultProxy, Request
from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    finish,
    jitrender_env,
    make_job,
    start_run,
    wait_for,
)


def _handles_sigterm(pid: int) -> bool:
    """True once the process has a handler for SIGTERM (its ``SigCgt`` mask in /proc)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def _report(job: RenderJob) -> dict[str, object]:
    data: dict[str, object] = json.loads((job.root / "report.json").read_text())
    return data


class _Hang:
    """A fault-proxy rule: from ``start`` on (or from the first request ``trigger`` matches),
    every request hangs until the test ends (bounded by the proxy's own ceiling)."""

    def __init__(self, trigger: object = None) -> None:
        self.trigger = trigger
        self.on = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()

    def __call__(self, request: Request) -> Fault | None:
        if not self.on.is_set() and callable(self.trigger) and self.trigger(request):
            self.on.set()
        if not self.on.is_set():
            return None
        fault = Fault("hold", forward=False)
        fault.held, fault.release = self.held, self.release
        return fault


@pytest.mark.parametrize("delay", [0.0, 0.1])
def test_sigterm_at_startup_exits_75_with_a_preempted_report_never_minus_15(
    gcs_bucket: str, tmp_path: Path, delay: float
) -> None:
    """The handler is in place before the run's imports and the job load: a TERM right after
    the CLI starts is a preemption (75, report "preempted", nothing rendered)."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")
    started = time.monotonic()
    proc = start_run(job, env=jitrender_env(job))
    wait_for(lambda: _handles_sigterm(proc.pid) or proc.poll() is not None, timeout=20)
    held_after = time.monotonic() - started
    time.sleep(delay)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=30)
    assert code == 75, (code, out)
    report = _report(job)
    assert report["status"] == "preempted", report
    assert report["exit_code"] == 75
    assert job.phases("start") == []
    assert held_after < 5, held_after  # installed first thing, not after the slow imports


def test_sigterm_while_the_job_file_is_still_being_read_exits_75(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """The job file is a FIFO nobody writes yet, so the CLI is stuck loading it: the handler
    is already in place (before the load, before the run's imports), and the TERM that comes
    then is a preemption, not a death by signal."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    text = job.job_file.read_bytes()
    job.job_file.unlink()
    os.mkfifo(job.job_file)
    proc = start_run(job, env=jitrender_env(job))
    try:
        wait_for(lambda: _handles_sigterm(proc.pid), timeout=20)
    finally:
        proc.send_signal(signal.SIGTERM)
        writer = threading.Thread(target=job.job_file.write_bytes, args=(text,), daemon=True)
        writer.start()
    code, out = finish(proc, timeout=30)
    assert code == 75, (code, out)
    assert _report(job)["status"] == "preempted"
    assert job.phases("start") == []


def test_sigterm_after_the_last_frame_exits_0_and_the_report_says_succeeded(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """The TERM comes while the CLI writes its final heartbeat (every frame done and
    marked): the run's outcome stands (0, "succeeded"), it is not killed by the signal."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    final_beat = _Hang(lambda r: r.is_upload and r.names('"state": "succeeded"'))
    proxy.rules.append(final_beat)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url, JITRENDER_HEARTBEAT_INTERVAL="30")
    proc = start_run(job, env=env)
    assert final_beat.held.wait(30)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=20)
    final_beat.release.set()
    assert code == 0, (code, out)
    report = _report(job)
    assert report["status"] == "succeeded"
    assert report["frames"]["done"] == [1, 2]  # type: ignore[index]
    markers = [n for n in bucket_objects(gcs_bucket, "renders/_jitrender/") if "/frame." in n]
    assert len(markers) == 2


def _term_while_held(
    job: RenderJob, hang: _Hang, env: dict[str, str], timeout: float
) -> tuple[int, str, float]:
    """Start the run, SIGTERM it once storage holds a request, wait for it to end; returns
    (exit code, output, seconds from the signal). The held request is released after."""
    proc = start_run(job, env=env)
    assert hang.held.wait(30)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code, out = finish(proc, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    took = time.monotonic() - signalled
    hang.release.set()
    return code, out, took


def _hang_at_last_marker(job: RenderJob) -> _Hang:
    last = job.frames[-1]
    return _Hang(lambda r: r.is_upload and r.names("_jitrender/") and r.names(f"frame.{last}."))


def test_sigterm_while_storage_hangs_exits_75_within_the_flush_budget(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Storage stops answering at the last frame's marker, and stays so: the stop's flush and
    every storage call after it are bounded (1 s budget here), the exit is 75 in time, and
    the report does not call the hung frame done."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")
    hang = _hang_at_last_marker(job)
    proxy.rules.append(hang)
    env = jitrender_env(
        job,
        STORAGE_EMULATOR_HOST=proxy.url,
        JITRENDER_FLUSH_BUDGET_S="1",
        JITRENDER_STOP_BACKSTOP_S="4",
        JITRENDER_HEARTBEAT_INTERVAL="30",  # the final heartbeat hangs too
    )
    code, out, took = _term_while_held(job, hang, env, timeout=40)
    assert code == 75, (code, out)
    assert took < 4.5, (took, out)
    report = _report(job)
    assert report["status"] == "preempted"
    assert 3 not in report["frames"]["done"]  # type: ignore[index,operator]


def test_sigterm_while_storage_hangs_at_the_defaults_exits_75_inside_15_s(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    hang = _hang_at_last_marker(job)
    proxy.rules.append(hang)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url, JITRENDER_HEARTBEAT_INTERVAL="30")
    for name in ("JITRENDER_FLUSH_BUDGET_S", "JITRENDER_STOP_BACKSTOP_S", "JITRENDER_TERM_GRACE_S"):
        env.pop(name, None)
    code, out, took = _term_while_held(job, hang, env, timeout=60)
    assert code == 75, (code, out)
    assert took < 15, (took, out)
    assert _report(job)["status"] == "preempted"


def test_backstop_ends_a_run_stuck_on_storage_before_any_flush(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Storage hangs from the run's first request (the resume listing, with its full retry
    policy): the backstop writes the report and exits 75 at JITRENDER_STOP_BACKSTOP_S."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-2")
    hang = _Hang()
    hang.on.set()
    proxy.rules.append(hang)
    env = jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url, JITRENDER_STOP_BACKSTOP_S="2")
    code, out, took = _term_while_held(job, hang, env, timeout=30)
    assert code == 75, (code, out)
    assert 1.5 < took < 4, (took, out)
    report = _report(job)
    assert report["status"] == "preempted" and report["frames"]["done"] == []  # type: ignore[index]
    assert job.phases("start") == []
