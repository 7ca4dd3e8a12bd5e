"""Stage markers: resume at stage granularity, one attempt per frame.

When a stage (not the job's last one: the frame's done marker covers that) has finished a
frame and every output it made for that frame is in the bucket, the run writes
``<outputs>/_jitrender/<hash>/stage.<stage>.<frame>.json`` (create-if-absent), listing those
outputs in its metadata. A later run, or a retry in the same run, does not run that stage
for that frame again: its outputs come back from the bucket into ``outputs/``, so later
stages derive theirs from exactly the stored render. A marker whose outputs are not all in
the listing is ignored. Only outputs are restored: a stage that hands a file to a later one
must put it below ``outputs/``, not ``scratch/``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterable

from jitrender.outputs import MARKER_OUTPUTS_KEY, marker_metadata
from jitrender.storage import ObjectInfo, RetryPolicy, Store, with_retries


def stage_marker_url(marker_prefix: str, stage: str, frame: int) -> str:
    return f"{marker_prefix}stage.{stage}.{frame}.json"


def stages_done(
    listing: Iterable[ObjectInfo], marker_prefix: str, outputs_url: str, frames: Iterable[int]
) -> dict[str, dict[int, list[ObjectInfo]]]:
    """``stage -> frame -> the stored outputs`` for each stage marker of ``frames`` in a
    listing of the outputs prefix whose outputs are all still there."""
    wanted = set(frames)
    base = outputs_url.rstrip("/") + "/"
    objects = {info.url: info for info in listing}
    found: dict[str, dict[int, list[ObjectInfo]]] = {}
    for url, info in objects.items():
        name = url[len(marker_prefix) :] if url.startswith(marker_prefix) else ""
        if not (name.startswith("stage.") and name.endswith(".json")):
            continue
        stage, _, number = name[len("stage.") : -len(".json")].rpartition(".")
        try:
            frame = int(number)
            listed = list(json.loads(info.metadata[MARKER_OUTPUTS_KEY]))
        except (KeyError, ValueError, TypeError):
            continue  # a marker whose outputs a listing cannot show is not trusted
        stored = [objects.get(base + str(rel)) for rel in listed]
        if frame in wanted and stage and listed and all(s is not None for s in stored):
            found.setdefault(stage, {})[frame] = [s for s in stored if s is not None]
    return found


def write_stage_marker(
    store: Store,
    retry: RetryPolicy,
    marker_prefix: str,
    job_hash: str,
    stage: str,
    frame: int,
    relpaths: list[str],
) -> None:
    """Record that ``stage`` finished ``frame`` with these outputs (all in the bucket)."""
    url = stage_marker_url(marker_prefix, stage, frame)
    body = json.dumps(
        {
            "job": job_hash,
            "stage": stage,
            "frame": frame,
            "host": socket.gethostname(),
            "time": time.time(),
            "outputs": relpaths,
        },
        sort_keys=True,
    ).encode()
    metadata = marker_metadata(job_hash, relpaths)
    with contextlib.suppress(FileExistsError):
        with_retries(lambda: store.put_bytes_if_absent(body, url, metadata), url, retry)
