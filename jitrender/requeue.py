"""Requeue frames from a workstation: drop their done markers (and, if asked, their outputs)
so that the farm's next run of the job renders them again.

Decisions come from one listing of the job's outputs prefix; the only other calls are the
deletes. Nothing renders here: this is for a wrangler who wants frames redone by the farm
(``jitrender run --rerender`` does it on the node at once).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field

from jitrender.job import Job
from jitrender.outputs import MARKER_OUTPUTS_KEY, OutputPatterns
from jitrender.storage import ObjectInfo, RetryPolicy, Store, Stores, with_retries

MARKER_FOLDER = "_jitrender"


@dataclass
class Requeued:
    """What :func:`requeue_frames` removed (URLs)."""

    frames: list[int]
    markers: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "frames": self.frames,
            "markers_removed": self.markers,
            "outputs_removed": self.outputs,
        }


def requeue_url(marker_prefix: str, frame: int) -> str:
    """The request a requeue leaves for the next run: render ``frame`` again."""
    return f"{marker_prefix}requeue.{frame}.json"


def requeued_frames(listing: list[ObjectInfo], marker_prefix: str) -> set[int]:
    """Frames a requeue asked to render again, from a listing of the outputs prefix."""
    found: set[int] = set()
    for info in listing:
        name = info.url[len(marker_prefix) :] if info.url.startswith(marker_prefix) else ""
        if name.startswith("requeue.") and name.endswith(".json"):
            with contextlib.suppress(ValueError):
                found.add(int(name[len("requeue.") : -len(".json")]))
    return found


def _frame_of_marker(name: str) -> int | None:
    """``frame.12.json`` and ``stage.<stage>.12.json`` -> 12."""
    if not name.endswith(".json"):
        return None
    parts = name[: -len(".json")].split(".")
    if parts[0] not in ("frame", "stage") or len(parts) < 2:
        return None
    try:
        return int(parts[-1])
    except ValueError:
        return None


def requeue_frames(
    job: Job,
    frames: list[int],
    *,
    delete_outputs: bool = False,
    store: Store | None = None,
    retry: RetryPolicy | None = None,
) -> Requeued:
    """Remove the done markers (frame and stage markers) of ``frames`` for this job's hash.
    With ``delete_outputs`` also the outputs those markers list (and the frame-token
    patterns' files of those frames); without it, leave a request (``requeue.<frame>.json``)
    that makes the next run render the frames again and replace their outputs."""
    outputs_url = job.outputs_url
    prefix = f"{outputs_url}/{MARKER_FOLDER}/{job.job_hash()}/"
    store = store or Stores().for_url(outputs_url)
    policy = retry or RetryPolicy()
    listing: list[ObjectInfo] = with_retries(
        lambda: store.list(outputs_url + "/"), outputs_url, policy
    )
    wanted = set(frames)
    patterns = OutputPatterns(job.outputs.files)
    present = {info.url for info in listing}
    result = Requeued(sorted(wanted))
    doomed_outputs: set[str] = set()
    for info in listing:
        if not info.url.startswith(prefix):
            continue
        frame = _frame_of_marker(info.url[len(prefix) :])
        if frame not in wanted:
            continue
        result.markers.append(info.url)
        with contextlib.suppress(KeyError, ValueError, TypeError):
            listed = json.loads(info.metadata[MARKER_OUTPUTS_KEY])
            doomed_outputs.update(f"{outputs_url}/{rel}" for rel in listed)
    for frame in wanted:
        doomed_outputs.update(f"{outputs_url}/{rel}" for rel in patterns.expected_for(frame))
    if delete_outputs:
        result.outputs = sorted(url for url in doomed_outputs if url in present)
    for url in [*result.markers, *result.outputs]:  # markers first: never a marker alone
        _delete(store, url, policy)
    if not delete_outputs:  # the kept outputs are ours: only a request makes a run redo them
        for frame in result.frames:
            body = json.dumps({"frame": frame, "job": job.job_hash()}).encode()
            _put(store, requeue_url(prefix, frame), body, policy)
    return result


def _delete(store: Store, url: str, policy: RetryPolicy) -> None:
    with_retries(lambda: store.delete(url), url, policy)


def _put(store: Store, url: str, body: bytes, policy: RetryPolicy) -> None:
    with_retries(lambda: store.put_bytes_if_absent(body, url), url, policy)
