"""Per-task heartbeats: each running task keeps one small JSON object up to date in the bucket,
``<outputs.to>/_jitrender/<job hash>/tasks/<task>.json``, so ``jitrender status`` can tell
running, stalled and lost tasks apart and show where each frame's time went.

The run is not asked for anything: :class:`TaskProgress` sits between the run and its progress
display, forwards every event, and keeps a :class:`TaskState` from them; :class:`Heartbeat` is a
thread that writes that state every ``interval`` seconds and once more at exit. A heartbeat
that cannot be written never fails the run; the next one tries again.

Object fields (all always present): ``task``, ``node``, ``pid``, ``attempt``, ``state``
(``starting`` | ``running`` | ``succeeded`` | ``failed`` | ``preempted``), ``frames`` (this
task's frames), ``frame`` and ``stage`` in progress (or null), ``done``, ``failed``,
``timings`` (``{frame: {fetch_s, render_s, upload_s, bytes, started}}``), ``bytes_fetched``,
``last_error``, ``failures`` (``[{frame, why}]``), ``started``, ``updated`` (Unix seconds),
``interval_s``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from jitrender.progress import Progress
from jitrender.storage import RetryPolicy, Stores, with_retries

DEFAULT_INTERVAL_S = 10.0
STALE_INTERVALS = 3  # a running task whose heartbeat is older than this many intervals is stalled


def attempt_of(env: Mapping[str, str]) -> int:
    """The farm's retry counter for this task (0 on the first attempt)."""
    for name in ("JITRENDER_ATTEMPT", "BATCH_TASK_ATTEMPT", "SLURM_RESTART_COUNT"):
        raw = env.get(name, "").strip()
        if raw.isdigit():
            return int(raw)
    return 0


def task_url(tasks_prefix: str, task: str) -> str:
    return f"{tasks_prefix}{task}.json"


class TaskState:
    """What one task is doing, built from the run's progress events. Thread-safe."""

    def __init__(
        self,
        task: str,
        frames: list[int],
        interval_s: float,
        attempt: int,
        frame_of_url: Callable[[str], int | None] = lambda url: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``frame_of_url`` names the frame an uploaded output URL belongs to (None: no frame);
        ``clock`` gives Unix seconds."""
        self._lock = threading.Lock()
        self._clock = clock
        self._frame_of_url = frame_of_url
        now = clock()
        self.task = task
        self.frames = list(frames)
        self.interval_s = interval_s
        self.attempt = attempt
        self.state = "starting"
        self.frame: int | None = None
        self.stage: str | None = None
        self.done: list[int] = []
        self.failed: list[int] = []
        self.failures: list[dict[str, Any]] = []
        self.last_error: str | None = None
        self.bytes_fetched = 0
        self.started = now
        self._mark = now  # when the run was last free to go on to its next frame
        self._pending_bytes = 0  # fetched since the mark: charged to the next frame to start
        self._frame_start: dict[int, float] = {}
        self._render_end: dict[int, float] = {}
        self.timings: dict[int, dict[str, Any]] = {}

    # -- events ---------------------------------------------------------------------------

    def on_event(self, kind: str, fields: Mapping[str, Any]) -> None:
        now = self._clock()
        with self._lock:
            if kind == "stage":
                self._on_stage(now, str(fields.get("stage")), str(fields.get("frames", "")))
            elif kind == "stage_end":
                for frame in self._label_frames(str(fields.get("frames", ""))):
                    if frame in self._frame_start and frame not in self._render_end:
                        self._end_render(frame, now)
            elif kind == "fetched":
                if not fields.get("cached"):
                    size = int(fields.get("size") or 0)
                    self.bytes_fetched += size
                    self._pending_bytes += size
            elif kind == "uploaded":
                # A frame's first output in the bucket: its stages have finished writing it.
                owner = self._frame_of_url(str(fields.get("url", "")))
                if owner in self._frame_start and owner not in self._render_end:
                    self._end_render(owner, now)
            elif kind == "frame":
                self._on_frame(now, fields)
            elif kind == "error" or (
                kind == "warning" and str(fields.get("message", "")).startswith("frame ")
            ):
                self.last_error = str(fields.get("message"))

    def on_totals(self) -> None:
        with self._lock:
            self.state = "running"
            self._mark = self._clock()

    def _started_frames(self) -> list[int]:
        return [f for f in self._frame_start if f not in self.done and f not in self.failed]

    def _label_frames(self, label: str) -> list[int]:
        """The frames of a stage label (``7`` or ``6-10``: this task's frames in that span)."""
        first, _, last = label.partition("-")
        try:
            low = int(first)
            high = int(last) if last else low
        except ValueError:
            return []
        return [f for f in self.frames if low <= f <= high] or [low]

    def _on_stage(self, now: float, stage: str, label: str) -> None:
        frames = self._label_frames(label)
        if not frames:
            return
        for frame in frames:
            # The frame's next stage (prep, then render, then post): it is not finished yet.
            if frame in self._render_end and frame in self._frame_start:
                del self._render_end[frame]
        # A frame still rendering when the next one starts was done with its stages then.
        for frame in self._started_frames():
            if frame not in frames and frame not in self._render_end:
                self._end_render(frame, now)
        fresh = [f for f in frames if f not in self._frame_start]
        for frame in fresh:
            self._frame_start[frame] = now
            self.timings[frame] = {
                "started": now,
                "fetch_s": round(now - self._mark, 3),
                "render_s": None,
                "upload_s": None,
                "bytes": self._pending_bytes if frame == fresh[0] else 0,
            }
        if fresh:
            self._pending_bytes = 0
        self.state = "running"
        self.frame, self.stage = frames[0], stage

    def _end_render(self, frame: int, now: float) -> None:
        self._render_end[frame] = now
        self.timings[frame]["render_s"] = round(now - self._frame_start[frame], 3)
        self._mark = max(self._mark, now)

    def _on_frame(self, now: float, fields: Mapping[str, Any]) -> None:
        frame = fields.get("frame")
        status = fields.get("status")
        if not isinstance(frame, int):
            return
        if status in ("done", "skipped") and frame not in self.done:
            self.done.append(frame)
        if status == "failed" and frame not in self.failed:
            self.failed.append(frame)
            self.failures.append({"frame": frame, "why": self.last_error or "failed"})
        if frame in self._frame_start:
            if frame not in self._render_end:
                self._end_render(frame, now)
            if status == "done":
                self.timings[frame]["upload_s"] = round(now - self._render_end[frame], 3)
        if self.frame == frame:
            self.frame, self.stage = None, None

    def finish(self, state: str, error: str | None) -> None:
        with self._lock:
            self.state = state
            self.frame, self.stage = None, None
            if error:
                self.last_error = error

    # -- the object -------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        with self._lock:
            return {
                "task": self.task,
                "node": socket.gethostname(),
                "pid": os.getpid(),
                "attempt": self.attempt,
                "state": self.state,
                "frames": list(self.frames),
                "frame": self.frame,
                "stage": self.stage,
                "done": sorted(self.done),
                "failed": sorted(self.failed),
                "failures": list(self.failures),
                "timings": {str(f): dict(t) for f, t in sorted(self.timings.items())},
                "bytes_fetched": self.bytes_fetched,
                "last_error": self.last_error,
                "started": self.started,
                "updated": self._clock(),
                "interval_s": self.interval_s,
            }


class TaskProgress:
    """A :class:`~jitrender.progress.Progress` that forwards to ``inner`` and keeps ``state``."""

    def __init__(self, inner: Progress, state: TaskState) -> None:
        self.inner = inner
        self.state = state

    def event(self, kind: str, **fields: Any) -> None:
        self.state.on_event(kind, fields)
        self.inner.event(kind, **fields)

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        self.state.on_totals()
        self.inner.totals(files, bytes_, frames)

    def close(self) -> None:
        self.inner.close()


class Heartbeat:
    """Writes ``state`` to ``url`` every ``state.interval_s`` seconds from a daemon thread, and
    once more from :meth:`stop`. Only this task's own object is ever written (overwritten)."""

    def __init__(self, url: str, state: TaskState) -> None:
        self.url = url
        self.state = state
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)
        self._stores = Stores()
        self._write_lock = threading.Lock()
        self.writes = 0

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while True:
            last = self._stop.is_set()  # set after the state's finish: this write has it
            self.write()
            if last:
                return
            self._stop.wait(self.state.interval_s)

    def write(self) -> bool:
        """One write of the current state; False (and the run goes on) when it failed."""
        data = json.dumps(self.state.to_json(), sort_keys=True).encode()
        with self._write_lock:
            try:
                store = self._stores.for_url(self.url)
                with_retries(
                    lambda: store.replace_bytes(data, self.url), self.url, RetryPolicy(attempts=2)
                )
            except Exception:  # a lost heartbeat must never stop the render; the next retries
                return False
        self.writes += 1
        return True

    def stop(self, state: str, error: str | None, timeout: float = 2.0) -> None:
        """Record the task's final state and write it. Bounded (about ``timeout`` + 1 s) so a
        stopping task still exits well inside a farm's SIGTERM grace period."""
        self.state.finish(state, error)  # first: the thread's last write takes it
        self._stop.set()
        if self._thread.is_alive():  # it writes once more and ends (no thread to start)
            self._thread.join(timeout=timeout + 1.0)
            return
        writer = threading.Thread(target=self.write, name="heartbeat-final", daemon=True)
        writer.start()
        writer.join(timeout=timeout)


def task_name(slot_index: int | None, frames: list[int]) -> str:
    """The heartbeat's name: the farm task index, or ``frames-<first>-<last>`` for a run that is
    not one task of a split job."""
    if slot_index is not None:
        return str(slot_index)
    return f"frames-{frames[0]}-{frames[-1]}" if frames else "frames-none"


def for_run(
    tasks_prefix: str,
    outputs_url: str,
    frame_of_relpath: Callable[[str], int | None],
    slot_index: int | None,
    frames: list[int],
    interval_s: float,
    env: Mapping[str, str],
) -> Heartbeat:
    """The heartbeat of one ``jitrender run`` (not started)."""
    base = outputs_url.rstrip("/") + "/"

    def frame_of_url(url: str) -> int | None:
        return frame_of_relpath(url[len(base) :]) if url.startswith(base) else None

    name = task_name(slot_index, frames)
    state = TaskState(name, frames, interval_s, attempt_of(env), frame_of_url)
    return Heartbeat(task_url(tasks_prefix, name), state)
