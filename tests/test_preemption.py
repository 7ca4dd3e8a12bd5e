"""Preemption with real processes against fake-gcs-server: ``kill -9`` at every phase of a
frame's life, SIGTERM with a deadline, a second signal, and the GCE preemption notice. After
each, a rerun must leave every frame's output in the bucket exactly once, overwrite nothing,
re-render only what was not finished, and find the cache clean."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.faultproxy import Fault, FaultProxy, Request
from tests.renderjobs import (
    RenderJob,
    assert_exactly_once,
    bucket_objects,
    cache_verify,
    finish,
    jitrender_env,
    make_job,
    run,
    start_run,
    wait_for,
)


def kill_and_rerun(job: RenderJob, proc: subprocess.Popen[bytes]) -> list[int]:
    """SIGKILL the run, rerun it to the end, check the bucket and cache; the frames the rerun
    rendered."""
    proc.kill()
    proc.wait(timeout=10)
    before = bucket_objects(job.bucket, "renders/")
    marked = {int(n.rsplit(".", 2)[1]) for n in before if "/_jitrender/" in n}
    with_output = {int(n.split(".")[1]) for n in before if "/_jitrender/" not in n}
    job.clear_phases()
    started = time.monotonic()
    code, out, report = run(job, report="rerun.json")
    assert code == 0, out
    assert time.monotonic() - started < 20  # no stale lock held it up
    assert_exactly_once(job, before)
    rerendered = job.phases("start")
    assert not set(rerendered) & (marked | with_output), (rerendered, marked, with_output)
    assert sorted(report["frames"]["skipped_already_done"]) == sorted(marked | with_output)
    verified = cache_verify(job)
    assert verified["bad"] == 0, verified
    return rerendered


def held_on(proxy: FaultProxy, matches: Callable[[Request], bool], *, forward: bool) -> Fault:
    """Hold the first request that ``matches`` (the run is killed while it is held)."""
    fault = Fault("hold", forward=forward)
    taken = threading.Lock()

    def rule(request: Request) -> Fault | None:
        if matches(request) and taken.acquire(blocking=False):
            return fault
        return None

    proxy.rules.append(rule)
    return fault


def test_kill_during_fetch_then_rerun(gcs_bucket: str, tmp_path: Path, proxy: FaultProxy) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-5")
    fault = held_on(proxy, lambda r: r.is_download and "tex.0004.bin" in r.path, forward=True)
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert fault.held.wait(20)
    kill_and_rerun(job, proc)
    fault.release.set()
    assert not list((job.cache_dir / "tmp").iterdir())  # the rerun cleared the dead download


def test_kill_during_render_then_rerun(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-5")
    proc = start_run(job, env=jitrender_env(job, RENDER_SLEEP="0.3", SLEEP_FRAMES="3:20"))
    wait_for(lambda: 3 in job.phases("start"))
    pids = [int(p.name.split(".")[2]) for p in job.phase_dir.glob("start.3.*")]
    rerendered = kill_and_rerun(job, proc)
    assert 3 in rerendered
    for pid in pids:  # the killed run's renderer died with it
        assert _gone(pid)


def _gone(pid: int) -> bool:
    """The process has exited (a zombie waiting for its reaper counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("forward", [False, True], ids=["lost", "landed"])
def test_kill_during_upload_then_rerun(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, forward: bool
) -> None:
    """Killed while frame 3's output is on the wire: the upload is lost, or it lands after the
    client died (the rerun must then adopt it, not render or upload it again)."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-5")
    fault = held_on(proxy, lambda r: r.is_upload and r.names("frame.0003.txt"), forward=forward)
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert fault.held.wait(20)
    proc.kill()
    fault.release.set()
    if forward:
        wait_for(lambda: "renders/frame.0003.txt" in bucket_objects(gcs_bucket, "renders/"))
    rerendered = kill_and_rerun(job, proc)
    assert (3 in rerendered) is not forward


@pytest.mark.parametrize("forward", [False, True], ids=["lost", "landed"])
def test_kill_during_marker_write_then_rerun(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy, forward: bool
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-5")
    fault = held_on(
        proxy,
        lambda r: r.is_upload and r.names("_jitrender/") and r.names("frame.2.json"),
        forward=forward,
    )
    proc = start_run(job, env=jitrender_env(job, STORAGE_EMULATOR_HOST=proxy.url))
    assert fault.held.wait(20)
    proc.kill()
    fault.release.set()
    time.sleep(0.2)
    rerendered = kill_and_rerun(job, proc)
    assert 2 not in rerendered  # its output was whole in the bucket: adopted, not re-rendered


def test_sigterm_mid_render_exits_75_fast_and_rerun_renders_the_rest(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-6")
    # frame 3's renderer ignores SIGTERM and would take 30 s: it gets SIGKILL after the grace
    # (shortened here; test_default_grace_and_flush_fit_gke_spots_15_s checks the defaults)
    env = jitrender_env(
        job, RENDER_SLEEP="0.5", SLEEP_FRAMES="3:30", IGNORE_TERM="1", JITRENDER_TERM_GRACE_S="1"
    )
    proc = start_run(job, env=env)
    wait_for(lambda: 3 in job.phases("start"))
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=20)
    assert code == 75, out
    assert time.monotonic() - signalled < 8  # the 1 s grace, not the 5 s default
    report = json.loads((job.root / "report.json").read_text())
    assert report["status"] == "preempted"
    assert report["frames"]["done"] == [1, 2]
    objects = bucket_objects(gcs_bucket, "renders/")
    assert {"renders/frame.0001.txt", "renders/frame.0002.txt"} <= set(objects)
    job.clear_phases()
    code, out, report = run(job, report="rerun.json")
    assert code == 0, out
    assert job.phases("start") == [3, 4, 5, 6]
    assert report["frames"]["skipped_already_done"] == [1, 2]
    assert_exactly_once(job, objects)


def test_second_signal_exits_at_once(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-3")
    proc = start_run(job, env=jitrender_env(job, RENDER_SLEEP="5", IGNORE_TERM="1"))
    wait_for(lambda: 1 in job.phases("start"))
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # now waiting for a renderer that ignores SIGTERM
    second = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, out = finish(proc, timeout=10)
    assert code == 75, out
    assert time.monotonic() - second < 2
    renderers = [int(p.name.split(".")[2]) for p in job.phase_dir.glob("start.1.*")]
    wait_for(lambda: all(_gone(pid) for pid in renderers), timeout=2)  # it died with the run


class _Metadata:
    """A tiny GCE metadata server: ``instance/preempted`` answers FALSE until ``preempt()``;
    with ``wait_for_change=true`` it holds the request until the value changes (bounded)."""

    def __init__(self) -> None:
        self.preempted = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        metadata = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                metadata.requests.append((self.path, self.headers.get("Metadata-Flavor")))
                if not self.path.startswith("/computeMetadata/v1/instance/preempted"):
                    self.send_error(404)
                    return
                if self.headers.get("Metadata-Flavor") != "Google":
                    self.send_error(403)
                    return
                if "wait_for_change=true" in self.path:
                    metadata.preempted.wait(10)
                body = b"TRUE" if metadata.preempted.is_set() else b"FALSE"
                self.send_response(200)
                self.send_header("Metadata-Flavor", "Google")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> _Metadata:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.preempted.set()
        self.server.shutdown()
        self.server.server_close()


def test_gce_preemption_notice_stops_the_run_like_sigterm(gcs_bucket: str, tmp_path: Path) -> None:
    job = make_job(tmp_path / "job", gcs_bucket, "1-5")
    with _Metadata() as metadata:
        env = jitrender_env(
            job, RENDER_SLEEP="0.5", GCE_METADATA_HOST=metadata.host, JITRENDER_PREEMPTION_WATCH=""
        )
        proc = start_run(job, env=env)
        wait_for(lambda: 2 in job.phases("start"))
        noticed = time.monotonic()
        metadata.preempted.set()
        code, out = finish(proc, timeout=20)
        assert code == 75, out
        assert time.monotonic() - noticed < 15
        assert any(flavor == "Google" for _path, flavor in metadata.requests)
    report = json.loads((job.root / "report.json").read_text())
    assert report["status"] == "preempted"
    assert "preempt" in (report["error"] or "").lower()
    assert 1 in report["frames"]["done"]
    assert 5 not in report["frames"]["done"]


def test_preemption_watcher_costs_nothing_off_gce(monkeypatch: pytest.MonkeyPatch) -> None:
    from jitrender.preemption import PreemptionWatcher

    monkeypatch.delenv("GCE_METADATA_HOST", raising=False)
    monkeypatch.setenv("JITRENDER_PREEMPTION_WATCH", "")
    stop = threading.Event()
    watcher = PreemptionWatcher(stop, hosts_file=Path(os.devnull), product_file=Path(os.devnull))
    started = time.monotonic()
    assert watcher.start() is False
    assert time.monotonic() - started < 0.1
    assert not stop.is_set()


def test_sigterm_with_a_stuck_upload_still_exits_75_in_time(
    gcs_bucket: str, tmp_path: Path, proxy: FaultProxy
) -> None:
    """Storage hangs on frame 2's upload when SIGTERM comes: the flush is bounded."""
    job = make_job(tmp_path / "job", gcs_bucket, "1-4")
    fault = held_on(proxy, lambda r: r.is_upload and r.names("frame.0002.txt"), forward=False)
    env = jitrender_env(
        job, STORAGE_EMULATOR_HOST=proxy.url, RENDER_SLEEP="0.3", JITRENDER_FLUSH_BUDGET_S="1"
    )
    proc = start_run(job, env=env)
    assert fault.held.wait(20)
    signalled = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, timeout=40)
    fault.release.set()
    assert code == 75, out
    assert time.monotonic() - signalled < 6, out  # the 1 s flush budget, not the 8 s default
    report = json.loads((job.root / "report.json").read_text())
    assert report["status"] == "preempted"
    assert 1 in report["frames"]["done"] and 2 not in report["frames"]["done"]


def test_default_grace_and_flush_fit_gke_spots_15_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A renderer's SIGTERM grace plus the upload flush stay inside GKE Spot's ~15 s."""
    from jitrender.run import RunOptions
    from jitrender.stages import term_grace_s

    monkeypatch.delenv("JITRENDER_TERM_GRACE_S", raising=False)
    monkeypatch.delenv("JITRENDER_FLUSH_BUDGET_S", raising=False)
    assert term_grace_s() + RunOptions().flush_budget_s < 15
    monkeypatch.setenv("JITRENDER_FLUSH_BUDGET_S", "2.5")
    assert RunOptions().flush_budget_s == 2.5
