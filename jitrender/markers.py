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
from collections.abc import Iterable, Mapping
from dataclasses import replace

from jitrender.job import Job
from jitrender.outputs import marker_metadata
from jitrender.stopping import bounded
from jitrender.storage import ObjectInfo, RetryPolicy, Store, with_retries

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
