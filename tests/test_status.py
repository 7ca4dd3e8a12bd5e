"""Heartbeats and job-wide status, the way a wrangler meets them: three ``jitrender run``
tasks of one job on fake-gcs-server — one that failed a frame, one rendering, one frozen
(SIGSTOP: its heartbeat goes stale) — then ``jitrender status --json``, the text view,
``--serve``'s JSON API, and the status page in a real browser (Debian's chromium)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from jitrender.job import load_job
from jitrender.status import Observed, summarise, text_lines
from tests.conftest import gcs_client
from tests.renderjobs import RenderJob, jitrender_env, make_job, start_run, wait_for

pytestmark = pytest.mark.slow  # real processes, a real browser / cluster: ~15-50 s

INTERVAL = "1"  # seconds between heartbeats: a frozen task is stalled after 3 s


def heartbeat(job: RenderJob, task: int) -> dict[str, Any] | None:
    from jitrender.markers import marker_prefix

    url = f"{marker_prefix(load_job(job.job_file))}tasks/{task}.json"
    bucket, _, name = url[len("gs://") :].partition("/")
    blob: Any = gcs_client().bucket(bucket).blob(name)  # type: ignore[attr-defined]
    if not blob.exists():
        return None
    data: dict[str, Any] = json.loads(blob.download_as_bytes())
    return data


def status(job: RenderJob, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jitrender.cli", "status", str(job.job_file), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=jitrender_env(job),
        check=False,
    )


@pytest.fixture(scope="module")
def three_tasks(gcs_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RenderJob]:
    """Frames 1-9 as 3 tasks: task 0 ran and failed frame 2 (exit 65), task 1 is rendering
    frame 5, task 2 is frozen while rendering frame 7 and its heartbeat is stale."""
    name = f"status-{uuid.uuid4().hex[:10]}"
    gcs_client().create_bucket(name)  # type: ignore[attr-defined]
    job = make_job(tmp_path_factory.mktemp("status"), f"gs://{name}", "1-9")
    base = {"JITRENDER_HEARTBEAT_INTERVAL": INTERVAL}
    failed = start_run(
        job, "--task-index", "0", "--task-count", "3",
        env=jitrender_env(job, FAIL_FRAMES="2", **base), report="r0.json",
    )  # fmt: skip
    running = start_run(
        job, "--task-index", "1", "--task-count", "3",
        env=jitrender_env(job, SLEEP_FRAMES="5:120", **base), report="r1.json",
    )  # fmt: skip
    frozen = start_run(
        job, "--task-index", "2", "--task-count", "3",
        env=jitrender_env(job, SLEEP_FRAMES="7:120", **base), report="r2.json",
    )  # fmt: skip
    try:
        out, _ = failed.communicate(timeout=60)
        assert failed.returncode == 65, out.decode()
        wait_for(lambda: (heartbeat(job, 1) or {}).get("frame") == 5, timeout=60, step=0.2)
        wait_for(lambda: (heartbeat(job, 2) or {}).get("frame") == 7, timeout=60, step=0.2)
        frozen.send_signal(signal.SIGSTOP)
        time.sleep(3 * float(INTERVAL) + 1.5)
        yield job
    finally:
        for proc in (running, frozen):
            proc.kill()
            proc.send_signal(signal.SIGCONT)
            proc.communicate(timeout=30)


def test_status_json_reports_done_failed_running_pending_and_the_stalled_task(
    three_tasks: RenderJob,
) -> None:
    done = status(three_tasks, "--json")
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    frames = document["frames"]
    assert frames["done"] == [1, 3, 4]
    assert frames["failed"] == [2]
    assert frames["running"] == [5]
    assert frames["pending"] == [6, 7, 8, 9]  # 7: its task is stalled, nobody is rendering it
    assert document["complete"] is False
    tasks = {t["task"]: t for t in document["tasks"]}
    assert tasks["0"]["state"] == "failed" and not tasks["0"]["stalled"]
    assert tasks["1"]["state"] == "running" and tasks["1"]["stage"] == "render"
    assert not tasks["1"]["stalled"] and tasks["1"]["age_s"] < 3
    assert tasks["2"]["stalled"] and tasks["2"]["frame"] == 7 and tasks["2"]["age_s"] > 3
    assert document["stalled"] == ["2"]
    (failure,) = [f for f in document["failures"] if f["frame"] == 2]
    assert failure["task"] == "0" and "out of cheese" in failure["why"]
    for frame in ("1", "3", "4"):
        assert document["render_s"][frame] > 0
    timings = {t["frame"]: t for t in document["timeline"]}
    assert timings[4]["upload_s"] is not None and timings[4]["bytes"] >= 0
    assert document["eta_s"] is not None and document["eta_s"] > 0
    assert document["outputs"]["count"] == 3


def test_status_text_names_the_stalled_task_and_the_failure(three_tasks: RenderJob) -> None:
    done = status(three_tasks)
    assert done.returncode == 0, done.stderr
    assert re.search(r"task 2 .*STALLED", done.stdout), done.stdout
    assert "frame 2: " in done.stdout and "out of cheese" in done.stdout
    assert "3/9 done, 1 running, 1 failed, 4 pending" in done.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def status_page(three_tasks: RenderJob) -> Iterator[str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "jitrender.cli", "status", str(three_tasks.job_file), "--serve",
         "--port", str(port)],
        env=jitrender_env(three_tasks), stderr=subprocess.PIPE,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/api/jobs", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_for(up, timeout=30, step=0.1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_served_api_answers_the_same_document(three_tasks: RenderJob, status_page: str) -> None:
    job_hash = load_job(three_tasks.job_file).job_hash()
    with urllib.request.urlopen(f"{status_page}/api/jobs/{job_hash}/status", timeout=30) as reply:
        served = json.loads(reply.read())
    assert served["job_hash"] == job_hash
    assert (served["frames"]["failed"], served["frames"]["running"]) == ([2], [5])
    assert served["stalled"] == ["2"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(f"{status_page}/api/jobs/0000/status", timeout=10)
    assert caught.value.code == 404


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_status_page_shows_frame_states_tasks_and_timeline_in_a_browser(
    status_page: str, tmp_path: Path
) -> None:
    assert CHROMIUM is not None
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
    ]  # fmt: skip
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", f"{status_page}/"],
        capture_output=True, text=True, timeout=90, check=False,
    )  # fmt: skip
    html = dom.stdout
    assert 'data-loaded="true"' in html, dom.stderr[-2000:]

    def frame_state(frame: int) -> str:
        found = re.search(rf'<div class="frame (\w+)" id="frame-{frame}"', html)
        assert found is not None, f"frame {frame} not in the grid"
        return found.group(1)

    assert [frame_state(f) for f in range(1, 10)] == [
        "done", "failed", "done", "done", "running", "pending", "pending", "pending", "pending",
    ]  # fmt: skip
    assert re.search(r'<tr id="task-2" class="stalled" data-state="stalled">', html)
    assert re.search(r'<tr id="task-1" class="" data-state="running">', html)
    assert re.search(r'<li class="failure">task 0, frame 2: [^<]*out of cheese', html)
    for kind in ("fetch", "render", "upload"):
        assert f'class="bar {kind}"' in html
    shot = tmp_path / "status.png"
    subprocess.run(
        [CHROMIUM, *flags, "--window-size=1000,800", f"--screenshot={shot}", f"{status_page}/"],
        capture_output=True, timeout=90, check=False,
    )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 5000


def test_summarise_marks_a_running_task_stalled_after_three_intervals() -> None:
    job_file = Path(__file__).resolve().parent.parent / "examples" / "farm" / "job.yaml"
    job = load_job(job_file)
    beat = {
        "task": "0", "state": "running", "frame": 1001, "stage": "render", "frames": [1001],
        "interval_s": 10.0, "updated": 1000.0, "timings": {}, "failed": [], "failures": [],
    }  # fmt: skip
    seen = Observed([], [beat], [])
    fresh = summarise(job, [1001, 1002], seen, now=1029.0)
    stale = summarise(job, [1001, 1002], seen, now=1031.0)
    assert fresh["stalled"] == [] and fresh["frames"]["running"] == [1001]
    assert stale["stalled"] == ["0"] and stale["frames"]["pending"] == [1001, 1002]


def test_summarise_says_a_claiming_run_whose_lease_is_past_its_ttl_has_lapsed() -> None:
    job = load_job(Path(__file__).resolve().parent.parent / "examples" / "farm" / "job.yaml")
    lease = {"run": "n-7-ab", "host": "n", "pid": 7, "frames": "1001", "refreshed": 1000.0,
             "ttl": 60.0}  # fmt: skip
    seen = Observed([], [], [], frozenset({1001}), (lease, {"run": "odd"}))
    held = summarise(job, [1001], seen, now=1059.0)["claims"]
    lapsed = summarise(job, [1001], seen, now=1061.0)["claims"]
    assert [(c["run"], c["age_s"], c["lapsed"]) for c in held] == [
        ("n-7-ab", 59.0, False),
        ("odd", None, None),
    ]
    assert lapsed[0]["lapsed"] is True
    text = "\n".join(text_lines(summarise(job, [1001], seen, now=1061.0)))
    assert "claims:  frames 1001 by run n-7-ab on n pid 7 (lease 61 s old, LAPSED" in text


def test_task_state_times_each_frame_from_the_runs_events() -> None:
    from jitrender.heartbeat import TaskState

    ticks = iter([100.0, 101.0, 103.0, 104.0, 106.0, 107.0, 107.5, 108.0, 110.0, 111.0])
    state = TaskState("0", [1, 2], 10.0, 0, lambda url: int(url[-6:-4]), lambda: next(ticks))
    state.on_totals()  # 101: fetching starts
    state.on_event("stage", {"stage": "prep", "frames": "1"})  # 103
    state.on_event("stage_end", {"stage": "prep", "frames": "1"})  # 104
    state.on_event("stage", {"stage": "render", "frames": "1"})  # 106: same frame, next stage
    state.on_event("stage_end", {"stage": "render", "frames": "1"})  # 107
    state.on_event("uploaded", {"url": "gs://b/out/f.01.txt"})  # 107.5
    state.on_event("frame", {"frame": 1, "status": "done"})  # 108
    state.on_event("stage", {"stage": "prep", "frames": "2"})  # 110
    timings = state.to_json()["timings"]  # 111
    assert timings["1"]["fetch_s"] == 2.0  # from the plan to its first stage
    assert timings["1"]["render_s"] == 4.0  # first stage start to last stage end
    assert timings["1"]["upload_s"] == 1.0  # last stage end to its marker
    assert timings["2"]["fetch_s"] == 3.0 and state.frame == 2 and state.stage == "prep"
