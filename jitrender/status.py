"""Job-wide status: one listing of a job's outputs prefix (done markers, task heartbeats,
outputs) folded into one JSON document, for ``jitrender status`` and its web page.

:func:`gather` does the I/O (one listing, then one read per heartbeat); :func:`summarise` is a
pure function of what was read and the clock, so tests can call it without a bucket. The
document (``jitrender status --json`` and ``GET /api/jobs/<hash>/status``)::

    job, job_hash, time, complete
    frames    {requested, done, running, failed, pending, missing, claimed}   # frame lists
    counts    {requested, done, running, failed, pending}
    render_s  {frame: seconds}            # from the heartbeats' per-frame timings
    timeline  [{frame, task, started, fetch_s, render_s, upload_s, bytes}]
    eta_s     seconds until every pending frame is done at the current pace, or null
    tasks     [{task, node, pid, attempt, state, frame, stage, age_s, stalled, ...}]
    claims    [{run, host, pid, frames, age_s, ttl_s, lapsed}]   # the claiming runs' leases
    stalled   [task names whose running heartbeat is older than 3 intervals]
    failures  [{task, frame, why}]
    outputs   {count, bytes}

A frame is ``done`` once its marker exists; ``failed`` when a task gave up on it (and it is
not done); ``running`` when a task whose heartbeat is fresh has it in progress; ``pending``
otherwise. ``missing`` is every frame not done (the older document's key). ``claimed``: frames
not done that a run claims (jitrender.claims), read from the claims' names: a run holds them,
or held them and died (until its claim is taken over). ``claims`` says who: each claiming run's
lease (one read each), how long ago its run last rewrote it, and whether that is past its
``ttl`` (a run that stopped without releasing, or cannot reach the bucket: its frames are
taken over by the next run that wants them).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from jitrender.claims import CLAIMS_FOLDER, claims_in
from jitrender.errors import MissingDependencyError
from jitrender.heartbeat import STALE_INTERVALS
from jitrender.job import Job
from jitrender.markers import marker_prefix
from jitrender.outputs import OutputPatterns, frames_in_bucket, list_outputs
from jitrender.storage import ObjectInfo, RetryPolicy, Stores, with_retries


@dataclass(frozen=True)
class Observed:
    """What one look at the bucket found."""

    markers: list[ObjectInfo]
    heartbeats: list[dict[str, Any]]
    outputs: list[ObjectInfo]
    claimed: frozenset[int] = frozenset()  # frames with a claim (jitrender.claims) in the bucket
    leases: tuple[dict[str, Any], ...] = ()  # the claiming runs' leases (jitrender.claims)


def gather(job: Job, stores: Stores | None = None) -> Observed:
    """List the job's outputs prefix once and read every task heartbeat and claim lease of this
    job's hash."""
    stores = stores or Stores()
    root = job.outputs_url + "/"
    prefix = marker_prefix(job)
    tasks = f"{prefix}tasks/"
    store = stores.for_url(root)
    retry = RetryPolicy()
    found = list_outputs(store, job.outputs_url, retry)
    markers = [i for i in found if i.url.startswith(prefix) and not i.url.startswith(tasks)]
    claims = prefix + CLAIMS_FOLDER
    heartbeats: list[dict[str, Any]] = []
    leases: list[dict[str, Any]] = []  # one a claiming run's (released with its claims): a few

    def read(url: str) -> bytes:
        return with_retries(lambda: store.read_bytes(url), url, retry)

    for info in found:
        if not info.url.endswith(".json"):
            continue
        if info.url.startswith(tasks):
            into = heartbeats
        elif info.url.startswith(claims + "run."):
            into = leases
        else:
            continue
        # Gone since the listing (a run's end), or not JSON: the next look sees what is there.
        with contextlib.suppress(OSError, ValueError, MissingDependencyError):
            document = json.loads(read(info.url))
            if isinstance(document, dict):
                into.append(document)
    outputs = [i for i in found if not i.url.startswith(root + "_jitrender/")]
    claimed = frozenset(frame for frame, _, _ in claims_in(found, claims))
    return Observed(markers, heartbeats, outputs, claimed, tuple(leases))


def summarise(
    job: Job, frames: Sequence[int], seen: Observed, now: float | None = None
) -> dict[str, Any]:
    """The status document (see the module docstring) for ``frames`` of ``job``."""
    now = time.time() if now is None else now
    requested = list(frames)
    wanted = set(requested)
    # A marker counts while the outputs it lists are all still in the bucket.
    patterns = OutputPatterns(job.outputs.files)
    listing = [*seen.markers, *seen.outputs]
    done = set(
        frames_in_bucket(listing, job.outputs_url, marker_prefix(job), patterns, wanted).done
    )
    pairs = [(beat, _task_row(beat, now)) for beat in seen.heartbeats]
    tasks = sorted(
        (row for _, row in pairs),
        key=lambda t: (not str(t["task"]).isdigit(), _int_or(t["task"]), str(t["task"])),
    )
    running: set[int] = set()
    failed: set[int] = set()
    failures: list[dict[str, Any]] = []
    timeline: list[dict[str, Any]] = []
    for beat, row in pairs:
        for frame in beat.get("failed", []):
            if frame in wanted and frame not in done:
                failed.add(frame)
        for failure in beat.get("failures", []):
            if failure.get("frame") in wanted and failure.get("frame") not in done:
                failures.append({"task": beat.get("task"), **failure})
        if beat.get("state") == "failed" and beat.get("last_error") and not beat.get("failed"):
            failures.append({"task": beat.get("task"), "frame": None, "why": beat["last_error"]})
        if row["state"] in ("running", "starting") and not row["stalled"]:
            current = beat.get("frame")
            if isinstance(current, int) and current in wanted:
                running.add(current)
        for frame_text, timing in (beat.get("timings") or {}).items():
            frame = _int_or(frame_text)
            if frame in wanted:
                timeline.append({"frame": frame, "task": beat.get("task"), **timing})
    running -= done | failed
    pending = [f for f in requested if f not in done and f not in failed and f not in running]
    timeline.sort(key=lambda t: (t.get("started") or 0, t["frame"]))
    render_s = {str(t["frame"]): t["render_s"] for t in timeline if t.get("render_s") is not None}
    live = [t for t in tasks if t["state"] in ("running", "starting") and not t["stalled"]]
    document = {
        "job": job.display_name,
        "job_hash": job.job_hash(),
        "time": now,
        "complete": done == wanted,
        "frames": {
            "requested": requested,
            "done": sorted(done),
            "running": sorted(running),
            "failed": sorted(failed),
            "pending": pending,
            "missing": [f for f in requested if f not in done],
            "claimed": sorted(f for f in seen.claimed if f in wanted and f not in done),
        },
        "counts": {
            "requested": len(requested),
            "done": len(done),
            "running": len(running),
            "failed": len(failed),
            "pending": len(pending),
        },
        "render_s": render_s,
        "timeline": timeline,
        "eta_s": _eta(timeline, len(pending) + len(running), len(live)),
        "tasks": tasks,
        "claims": sorted((_claim_row(lease, now) for lease in seen.leases), key=_by_run),
        "stalled": [t["task"] for t in tasks if t["stalled"]],
        "failures": failures,
        "outputs": {"count": len(seen.outputs), "bytes": sum(i.size for i in seen.outputs)},
    }
    return document


def _claim_row(lease: Mapping[str, Any], now: float) -> dict[str, Any]:
    """Who holds claims: a run's lease, its age, and whether it has lapsed (its run wrote it
    last more than ``ttl`` seconds ago: another run takes its frames over)."""
    age: float | None = None
    lapsed: bool | None = None
    try:
        refreshed, ttl = float(lease["refreshed"]), float(lease["ttl"])
    except (KeyError, TypeError, ValueError):
        pass  # (a lease this jitrender did not write: shown as it is)
    else:
        age = max(0.0, now - refreshed)
        lapsed = age > ttl
    return {
        "run": lease.get("run"),
        "host": lease.get("host"),
        "pid": lease.get("pid"),
        "frames": lease.get("frames"),
        "age_s": None if age is None else round(age, 1),
        "ttl_s": lease.get("ttl"),
        "lapsed": lapsed,
    }


def _by_run(row: Mapping[str, Any]) -> str:
    return str(row["run"])


def _int_or(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return -1


def _task_row(beat: Mapping[str, Any], now: float) -> dict[str, Any]:
    interval = float(beat.get("interval_s") or 10.0)
    age = max(0.0, now - float(beat.get("updated") or 0.0))
    state = str(beat.get("state", "unknown"))
    # A task that should still be writing but has not for 3 intervals is stalled or lost.
    stalled = state in ("running", "starting") and age > STALE_INTERVALS * interval
    return {
        "task": beat.get("task"),
        "node": beat.get("node"),
        "pid": beat.get("pid"),
        "attempt": beat.get("attempt"),
        "state": state,
        "frame": beat.get("frame"),
        "stage": beat.get("stage"),
        "frames": beat.get("frames", []),
        "done": len(beat.get("done", [])),
        "failed": len(beat.get("failed", [])),
        "bytes_fetched": beat.get("bytes_fetched", 0),
        "last_error": beat.get("last_error"),
        "age_s": round(age, 1),
        "interval_s": interval,
        "stalled": stalled,
    }


def _eta(timeline: list[dict[str, Any]], remaining: int, live_tasks: int) -> float | None:
    """Seconds until ``remaining`` frames are done by ``live_tasks`` tasks at the mean pace."""
    if remaining == 0:
        return 0.0
    spans = [
        sum(t.get(k) or 0.0 for k in ("fetch_s", "render_s", "upload_s"))
        for t in timeline
        if t.get("render_s") is not None
    ]
    if not spans or live_tasks == 0:
        return None
    return round(sum(spans) / len(spans) * remaining / live_tasks, 1)


def job_status(job: Job, frames: Sequence[int], stores: Stores | None = None) -> dict[str, Any]:
    """:func:`gather` then :func:`summarise`, now."""
    return summarise(job, frames, gather(job, stores))


def text_lines(document: Mapping[str, Any]) -> list[str]:
    """The status for a terminal: counts, tasks, stalled tasks, claiming runs and failure
    lines."""
    from jitrender.sequences import format_frames

    frames, counts = document["frames"], document["counts"]
    eta = document["eta_s"]
    lines = [
        f"job {document['job']} ({document['job_hash']}): {counts['done']}/{counts['requested']}"
        f" done, {counts['running']} running, {counts['failed']} failed, "
        f"{counts['pending']} pending" + (f", ETA {eta:.0f} s" if eta else ""),
    ]
    for key in ("done", "running", "failed", "pending"):
        if frames[key]:
            lines.append(f"  {key + ':':<9}{format_frames(frames[key])}")
    for task in document["tasks"]:
        where = f"frame {task['frame']} {task['stage']}" if task["frame"] is not None else ""
        flag = f"  STALLED (no heartbeat for {task['age_s']:.0f} s)" if task["stalled"] else ""
        lines.append(
            f"  task {task['task']:<4} {task['state']:<10} {task['node']} pid {task['pid']} "
            f"attempt {task['attempt']} {where}{flag}".rstrip()
        )
    for claim in document.get("claims", []):
        age = claim["age_s"]
        when = f"lease {age:.0f} s old" if age is not None else "lease unreadable"
        flag = ", LAPSED: its frames go to the next run" if claim["lapsed"] else ""
        lines.append(
            f"  claims:  frames {claim['frames']} by run {claim['run']} on {claim['host']} "
            f"pid {claim['pid']} ({when}{flag})"
        )
    for failure in document["failures"]:
        frame = f"frame {failure['frame']}: " if failure.get("frame") is not None else ""
        lines.append(f"  failed: task {failure['task']}: {frame}{failure['why']}")
    return lines


# -- the status page ----------------------------------------------------------------------


def page() -> bytes:
    """The status page (package data ``jitrender/web/status.html``)."""
    return resources.files("jitrender").joinpath("web/status.html").read_bytes()


class StatusServer:
    """Serves ``GET /`` (the page), ``GET /api/jobs`` and ``GET /api/jobs/<hash>/status`` (the
    status document, read from the bucket at most once per ``min_age_s``) for one job."""

    def __init__(
        self, job: Job, frames: Sequence[int], host: str, port: int, min_age_s: float = 1.0
    ) -> None:
        self.job = job
        self.frames = list(frames)
        self.min_age_s = min_age_s
        self._stores = Stores()
        self._lock = threading.Lock()
        self._cached: tuple[float, bytes] | None = None
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host!s}:{port}/"

    def status_json(self) -> bytes:
        with self._lock:
            if self._cached is not None and time.monotonic() - self._cached[0] < self.min_age_s:
                return self._cached[1]
            body = json.dumps(job_status(self.job, self.frames, self._stores)).encode()
            self._cached = (time.monotonic(), body)
            return body

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self
        job_hash = self.job.job_hash()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", page())
                elif path == "/api/jobs":
                    listing = [{"job": server.job.display_name, "job_hash": job_hash}]
                    self._send(200, "application/json", json.dumps(listing).encode())
                elif path == f"/api/jobs/{job_hash}/status":
                    try:
                        body = server.status_json()
                    except Exception as exc:  # storage trouble: say so, keep serving
                        error = json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode()
                        self._send(503, "application/json", error)
                        return
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "application/json", b'{"error": "not found"}')

            def _send(self, code: int, kind: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return  # requests are not worth a line each on stderr

        return Handler

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
