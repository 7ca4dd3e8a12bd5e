"""What a run of a job still has to do, decided from one listing of its outputs prefix.

:func:`decide` is the resume step of ``jitrender run``: frames marked done whose listed
outputs are all there are skipped (a marker whose output is gone is dropped), frames whose
expected outputs a killed run uploaded but did not mark get their marker now, and
``--rerender`` or a ``jitrender requeue`` request renders frames again. It refuses to start
when another version of the job's outputs is in the way. :func:`restore_stage_outputs`
brings back the outputs of stages an earlier attempt finished (see :mod:`jitrender.stagemarks`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from jitrender.errors import DataError, JitrenderError
from jitrender.markers import MarkerWriter, marker_prefix, marker_url
from jitrender.outputs import (
    OutputPatterns,
    Uploader,
    frames_in_bucket,
    list_outputs,
    outputs_of_other_jobs,
)
from jitrender.progress import Progress
from jitrender.requeue import requeue_url, requeued_frames
from jitrender.stagemarks import stages_done
from jitrender.storage import JOB_METADATA_KEY, ObjectInfo, classify, with_retries

# stage -> frame -> that stage's outputs of the frame already in the bucket
StagesDone = dict[str, dict[int, list[ObjectInfo]]]


@dataclass(frozen=True)
class Resume:
    """The resume step's decision; callers may rely on ``todo`` keeping the requested order."""

    todo: list[int]  # frames still to render
    skipped: list[int]  # done already (sorted)
    redo: set[int] = field(default_factory=set)  # rendered again, replacing their outputs
    requests: set[int] = field(default_factory=set)  # of those, asked for by `jitrender requeue`
    stages_done: StagesDone = field(default_factory=dict)


def decide(
    frames: list[int],
    markers: MarkerWriter,
    patterns: OutputPatterns,
    progress: Progress,
    *,
    rerender: bool = False,
    overwrite: bool = False,
) -> Resume:
    """The frames of ``frames`` still to render (see the module's docstring); deletes the
    markers of frames rendered again and stale markers, writes the markers of frames a killed
    run uploaded; raises :class:`DataError` for another version's outputs unless
    ``overwrite``."""
    job, store, retry = markers.job, markers.store, markers.retry
    outputs_url, prefix = job.outputs_url, marker_prefix(job)
    listing = list_outputs(store, outputs_url, retry)
    listed = {info.url: info for info in listing}
    requests = requeued_frames(listing, prefix) & set(frames)
    redo = set(frames) if rerender else set(requests)
    for url in (marker_url(job, f) for f in sorted(redo)):
        if url in listed:
            delete_object(markers, url)
    if rerender:
        return Resume(list(frames), [], redo, requests)
    rest = [f for f in frames if f not in redo]
    in_bucket = frames_in_bucket(listing, outputs_url, prefix, patterns, rest)
    for frame, stale in in_bucket.stale.items():
        progress.event("warning", message=f"frame {frame}: outputs missing; re-rendering")
        delete_object(markers, stale.url)
        redo.add(frame)  # rendered whole again: its remaining outputs replaced, not kept
    skipped = set(in_bucket.done)
    for frame in rest:  # uploaded by a killed run but not marked: mark them now
        urls = [f"{outputs_url}/{rel}" for rel in patterns.expected_for(frame)]
        if frame in skipped or not urls or not all(u in listed for u in urls):
            continue
        if all(_ours(markers, listed[u]) for u in urls):
            markers.write(frame, {u: listed[u].crc32c for u in urls}, resumed=True)
            skipped.add(frame)
    for frame in sorted(skipped):
        progress.event("frame", frame=frame, status="skipped")
    todo = [f for f in frames if f not in skipped]
    if todo and not overwrite:
        _refuse_other_versions(markers, patterns, listing, todo)
    resumable = [f for f in todo if f not in redo]
    done = stages_done(listing, prefix, outputs_url, resumable)
    return Resume(todo, sorted(skipped), redo, requests, done)


def serve_requests(markers: MarkerWriter, requests: set[int], done: Iterable[int]) -> None:
    """The ``jitrender requeue`` requests of frames now done are served: their request objects
    go (quietly: a request left behind only renders the frame once more)."""
    prefix = marker_prefix(markers.job)
    for frame in sorted(requests & set(done)):
        with contextlib.suppress(JitrenderError):
            delete_object(markers, requeue_url(prefix, frame))


def delete_object(markers: MarkerWriter, url: str) -> None:
    """Delete ``url`` from the outputs store, with retries; one already gone is fine."""

    def delete() -> None:
        try:
            markers.store.delete(url)
        except Exception as exc:  # already gone is what was wanted
            if classify(exc) != "missing":
                raise

    with_retries(delete, url, markers.retry)


def restore_stage_outputs(
    done: StagesDone, markers: MarkerWriter, outputs: Path, uploader: Uploader, progress: Progress
) -> None:
    """Outputs of stages an earlier attempt finished come back from the bucket into
    ``outputs``, adopted by ``uploader`` as uploaded, so the stages after them work from
    exactly what is stored (see :mod:`jitrender.stagemarks`)."""
    outputs_url = markers.job.outputs_url
    for stage, frames in done.items():
        for frame, stored in frames.items():
            for info in stored:
                relpath = info.url[len(outputs_url) + 1 :]
                dest = outputs / relpath
                dest.parent.mkdir(parents=True, exist_ok=True)
                temp = dest.with_name(f".{dest.name}.restored.part")
                _download(markers, info, temp)
                uploader.adopt(relpath, info, stage, frame, temp)  # before the rename
                os.replace(temp, dest)
            progress.event("stage_skipped", stage=stage, frame=frame)


def _download(markers: MarkerWriter, info: ObjectInfo, dest: Path) -> None:
    with open(dest, "wb") as sink:
        with_retries(lambda: markers.store.download(info, sink), info.url, markers.retry)


def _ours(markers: MarkerWriter, info: ObjectInfo) -> bool:
    if info.metadata.get(JOB_METADATA_KEY) == markers.job_hash:
        return True
    full = _full_info(markers, info) if not info.metadata else None  # listings may omit it
    return full is not None and full.metadata.get(JOB_METADATA_KEY) == markers.job_hash


def _full_info(markers: MarkerWriter, info: ObjectInfo) -> ObjectInfo | None:
    found: ObjectInfo | None = with_retries(
        lambda: markers.store.stat(info.url), info.url, markers.retry
    )
    return found


def _refuse_other_versions(
    markers: MarkerWriter, patterns: OutputPatterns, listing: list[ObjectInfo], frames: list[int]
) -> None:
    """Before anything is fetched or rendered: outputs an earlier version of this job
    wrote are in the way, so this run could only end in conflicts."""
    outputs_url = markers.job.outputs_url
    others = outputs_of_other_jobs(
        listing, outputs_url, patterns, frames, markers.job_hash, lambda i: _full_info(markers, i)
    )
    if others:
        raise DataError(
            f"{outputs_url}/: {len(others)} outputs of another version of this job are in "
            f"the way (first: {others[0]}); the job changed in a way that changes its "
            "outputs: rerun with --overwrite to replace them, or give the job a new "
            "outputs.to"
        )
