"""Done markers: one small object per done frame, ``<outputs>/_jitrender/<hash>/frame.<n>.json``.

A marker is written create-if-absent, last, once every output of its frame is in the bucket;
its presence is what ``jitrender run`` skips on and what ``jitrender status`` counts. The
names are part of the contract between runs of the same job (and between versions of
jitrender), so they are built here and nowhere else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from jitrender.job import Job
from jitrender.outputs import OutputPatterns, marker_metadata
from jitrender.stopping import bounded
from jitrender.storage import JOB_METADATA_KEY, ObjectInfo, RetryPolicy, Store, with_retries

MARKER_FOLDER = "_jitrender"


def marker_prefix(job: Job) -> str:
    """The folder URL (with a trailing slash) holding ``job``'s markers."""
    return f"{job.outputs_url}/{MARKER_FOLDER}/{job.job_hash()}/"


def marker_url(job: Job, frame: int) -> str:
    return f"{marker_prefix(job)}frame.{frame}.json"


def frames_with_markers(markers: Iterable[ObjectInfo], prefix: str) -> set[int]:
    """The frame numbers of the markers in a listing of ``prefix``; other names are ignored."""
    done = set()
    for info in markers:
        name = info.url[len(prefix) :]
        if name.startswith("frame.") and name.endswith(".json"):
            with contextlib.suppress(ValueError):
                done.add(int(name[len("frame.") : -len(".json")]))
    return done


def current_attempt() -> str:
    """The farm's attempt number for this task, recorded in markers (``0`` when unknown)."""
    return os.environ.get("BATCH_TASK_ATTEMPT") or os.environ.get("JITRENDER_ATTEMPT", "0")


class MarkerWriter:
    """Writes ``job``'s markers to ``store`` create-if-absent, with storage retries; raises
    :class:`~jitrender.errors.JitrenderError` when storage fails after them."""

    def __init__(self, job: Job, store: Store, retry: RetryPolicy) -> None:
        self.job = job
        self.job_hash = job.job_hash()
        self.store = store
        self.retry = retry
        self.attempt = current_attempt()
        # Set once the run is stopping (time.monotonic()): every write after it is bounded by
        # it, with no full retry loop, so a hung storage cannot hold the stop past its budget.
        self.deadline: float | None = None

    def write(
        self, frame: int, outputs: Mapping[str, str | None], *, resumed: bool = False
    ) -> None:
        """``outputs`` maps each output URL of ``frame`` to its crc32c (None when unknown)."""
        body = {
            "job": self.job_hash,
            "job_name": self.job.display_name,
            "frame": frame,
            "attempt": self.attempt,
            "host": socket.gethostname(),
            "time": time.time(),
            "resumed_from_outputs": resumed,
            "outputs": dict(outputs),
        }
        url = marker_url(self.job, frame)
        data = json.dumps(body, sort_keys=True).encode()
        # The listed outputs ride in the metadata too: a listing then says whether they remain.
        base = len(self.job.outputs_url) + 1
        metadata = marker_metadata(self.job_hash, (u[base:] for u in outputs))
        deadline = self.deadline
        if deadline is None:
            with_retries(
                lambda: self.store.put_bytes_if_absent(data, url, metadata), url, self.retry
            )
            return
        left = deadline - time.monotonic()
        policy = replace(self.retry, deadline=max(0.0, left))
        bounded(
            lambda: with_retries(lambda: self.store.put_bytes_if_absent(data, url, metadata),
                                 url, policy),
            left,
            f"marker {url}",
        )  # fmt: skip


def frames_already_done(
    frames: Sequence[int], markers: MarkerWriter, patterns: OutputPatterns
) -> list[int]:
    """Which of ``frames`` need no rendering, from one listing of the outputs prefix: those
    with a marker, and those whose expected outputs all exist and carry this job's hash (a
    killed run uploaded them but did not mark them: they get their marker now)."""
    job, store, retry = markers.job, markers.store, markers.retry
    prefix, outputs_url = marker_prefix(job), job.outputs_url
    listed = with_retries(lambda: store.list(f"{outputs_url}/", recursive=True), outputs_url, retry)
    by_url = {i.url: i for i in listed}
    marked = frames_with_markers((i for i in listed if i.url.startswith(prefix)), prefix)
    marked &= set(frames)

    def ours(info: ObjectInfo) -> bool:
        if info.metadata.get(JOB_METADATA_KEY) == markers.job_hash:
            return True
        if info.metadata:
            return False
        full = with_retries(lambda: store.stat(info.url), info.url, retry)  # listings may omit it
        return full is not None and full.metadata.get(JOB_METADATA_KEY) == markers.job_hash

    completed, urls_of = [], {}
    for frame in frames:
        if frame in marked:
            continue
        urls = urls_of[frame] = [f"{outputs_url}/{rel}" for rel in patterns.expected_for(frame)]
        if urls and all(u in by_url for u in urls) and all(ours(by_url[u]) for u in urls):
            completed.append(frame)
    for frame in completed:
        markers.write(frame, {u: by_url[u].crc32c for u in urls_of[frame]}, resumed=True)
    return sorted(marked | set(completed))
