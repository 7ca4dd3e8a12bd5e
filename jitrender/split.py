"""One frame across many tasks: a split stage's parts, their markers, and assembling a frame once.

A job whose render stage has ``split:`` renders each frame as parts (tiles or Cycles sample
subsets); its farm tasks are (frame, part) pairs (:func:`jitrender.farm.task_parts`). A task
renders only its own parts, each as a 32-bit multilayer EXR with denoising and compositing
off, and uploads it create-if-absent to
``<outputs.to>/_jitrender/<job hash>/parts/frame.<n>.part.<k>.exr``, then its part marker
(``….json``, saying what the part holds). A part with a marker is never rendered again, so a
preempted task's rerun renders only the parts it had not finished.

After uploading its parts of a frame, a task lists that frame's part markers; the task that
finds them all (whoever uploaded the last part) assembles the frame: it pastes or averages the
parts (:mod:`jitrender.assemble`), then denoises once and runs the scene's compositor once on
the whole frame (``blender_render --finish``), writing the frame into ``outputs/`` like an
unsplit render. From there the run's uploader and frame books treat it as any frame: uploaded
create-if-absent, then its done marker. Two tasks racing to assemble both write the same frame;
create-if-absent keeps the first object and the other adopts it. A frame whose marker exists
is never assembled again; ``jitrender assemble`` finishes frames whose parts are all there.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jitrender.chunk import FrameBooks, StageRunner
from jitrender.engines import Invocation, StageCall, engine_named
from jitrender.errors import ConfigError, DataError, JitrenderError, Preempted
from jitrender.inputs import Inputs
from jitrender.job import Job, SplitSpec, StageSpec
from jitrender.markers import current_attempt, marker_prefix, marker_url
from jitrender.progress import Progress
from jitrender.report import FrameFailure
from jitrender.stages import StageOutcome, run_invocation
from jitrender.storage import JOB_METADATA_KEY, ObjectInfo, RetryPolicy, Store, with_retries


def parts_prefix(job: Job) -> str:
    """The folder URL (trailing slash) holding ``job``'s parts and part markers."""
    return f"{marker_prefix(job)}parts/"


def part_url(job: Job, frame: int, part: int, suffix: str) -> str:
    """The URL of part ``part`` of ``frame``: ``suffix`` ``.exr`` (pixels) or ``.json``
    (its marker)."""
    return f"{parts_prefix(job)}frame.{frame}.part.{part}{suffix}"


def part_options(split: SplitSpec, part: int) -> list[str]:
    """The ``blender_render`` options that render part ``part`` (tiles: row by row from the
    top left)."""
    if split.tiles is not None:
        columns, rows = split.tiles
        row, column = divmod(part, columns)
        return [f"--part-tile={column},{row},{columns},{rows},{split.overscan or 0}"]
    return [f"--part-samples={part},{split.parts}"]


def parts_with_markers(listing: Sequence[ObjectInfo], prefix: str) -> set[tuple[int, int]]:
    """The (frame, part) pairs whose marker is in a listing of ``prefix``."""
    found: set[tuple[int, int]] = set()
    for info in listing:
        name = info.url[len(prefix) :]
        pieces = name.split(".")
        if (
            len(pieces) == 5
            and pieces[0] == "frame"
            and pieces[2] == "part"
            and pieces[4] == "json"
        ):
            with contextlib.suppress(ValueError):
                found.add((int(pieces[1]), int(pieces[3])))
    return found


def check_split(job: Job) -> None:
    """What a split job needs on this node beyond its job file: OpenImageIO (extra ``split``)
    to assemble frames. :class:`ConfigError` before anything is fetched or rendered."""
    if job.split_stage is None:
        return
    try:
        import OpenImageIO  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"stages.{job.split_stage.name}.split: assembling parts needs OpenImageIO: "
            "pip install 'jitrender[split]'"
        ) from None


@dataclass
class SplitSummary:
    """What a split run did, for the report's ``parts`` section."""

    rendered: list[list[int]] = field(default_factory=list)  # [frame, part]
    skipped: list[list[int]] = field(default_factory=list)  # already had a marker
    assembled: list[int] = field(default_factory=list)
    adopted: list[int] = field(default_factory=list)  # another task had assembled it
    waiting: list[int] = field(default_factory=list)  # parts still missing (other tasks')
    assemble_s: float = 0.0  # downloading and pasting/averaging the parts
    finish_s: float = 0.0  # Blender's denoise, compositor and write of the assembled frame

    def to_json(self) -> dict[str, Any]:
        return {
            "rendered": self.rendered,
            "skipped_already_done": self.skipped,
            "assembled": self.assembled,
            "adopted": self.adopted,
            "waiting_for_other_parts": self.waiting,
            "assemble_s": round(self.assemble_s, 3),
            "finish_s": round(self.finish_s, 3),
        }


class SplitRender:
    """Renders this task's parts of ``frames`` and assembles each frame whose last part is in
    the bucket. :meth:`run` returns the frames this task finished (assembled or failed): the
    run settles those. Frames still waiting for other tasks' parts, and frames another task
    assembled (``summary.adopted``), are not this task's to finish. Raises
    :class:`Preempted` when the run is stopping."""

    def __init__(
        self,
        job: Job,
        frames: Sequence[int],
        parts: Sequence[tuple[int, int]] | None,
        *,
        runner: StageRunner,
        books: FrameBooks,
        inputs: Inputs,
        store: Store,
        retry: RetryPolicy,
        stop: threading.Event,
        progress: Progress,
        assemble_only: bool = False,
    ) -> None:
        stage = job.split_stage
        if stage is None or stage.split is None:
            raise ConfigError(f"{job.source}: no stage has 'split'")
        self.job, self.stage, self.split = job, stage, stage.split
        self.frames = tuple(frames)
        every = [(f, p) for f in self.frames for p in range(self.split.parts)]
        self.parts = [pair for pair in (every if parts is None else parts) if pair[0] in frames]
        self.runner, self.books, self.inputs = runner, books, inputs
        self.store, self.retry, self.stop, self.progress = store, retry, stop, progress
        self.assemble_only = assemble_only
        self.job_hash = job.job_hash()
        self.prefix = parts_prefix(job)
        self.summary = SplitSummary()
        self.scratch = runner.workspace.scratch / "parts"

    # -- storage ---------------------------------------------------------------------------

    def _list(self, prefix: str) -> list[ObjectInfo]:
        return with_retries(lambda: self.store.list(prefix, recursive=False), prefix, self.retry)

    def _marked(self, frame: int) -> set[int]:
        listing = self._list(f"{self.prefix}frame.{frame}.part.")
        return {p for f, p in parts_with_markers(listing, self.prefix) if f == frame}

    def _frame_marked(self, frame: int) -> bool:
        url = marker_url(self.job, frame)
        return with_retries(lambda: self.store.stat(url), url, self.retry) is not None

    def _put(self, source: Path, url: str) -> str | None:
        """Upload create-if-absent; the object's crc32c. An object an earlier attempt of this
        job left (a kill between part and marker) is kept: parts are not bit-exact."""
        metadata = {JOB_METADATA_KEY: self.job_hash}
        result = with_retries(
            lambda: self.store.put_if_absent(source, url, metadata), url, self.retry
        )
        if result.outcome == "conflict":
            existing = with_retries(lambda: self.store.stat(url), url, self.retry)
            if existing is None or existing.metadata.get(JOB_METADATA_KEY) != self.job_hash:
                raise DataError(f"{url} exists and was not written by this job")
            return existing.crc32c
        return result.info.crc32c if result.info is not None else None

    def _fetch(self, url: str, path: Path) -> None:
        info = with_retries(lambda: self.store.stat(url), url, self.retry)
        if info is None:
            raise DataError(f"{url}: its marker exists but the part does not")

        def download() -> None:
            with open(path, "wb") as sink:
                self.store.download(info, sink)

        with_retries(download, url, self.retry)

    # -- parts -----------------------------------------------------------------------------

    def _invoke(self, frame: int, extra: list[str], label: str, attempt: int) -> StageOutcome:
        spec: StageSpec = self.stage
        ws = self.runner.workspace
        call = StageCall(spec.name, (frame,), ws, spec.args, spec.command, spec.env)
        base = engine_named("blender")(call)
        invocation = Invocation([*base.argv, *extra], base.env, base.cwd)
        log = ws.root / "logs" / f"{spec.name}.{frame}.{label}.{attempt}.log"
        self.progress.event("stage", stage=spec.name, frames=f"{frame} {label}", attempt=attempt)
        outcome = run_invocation(
            invocation, log, env=self.runner.env(call), stop=self.stop, timeout=spec.timeout
        )
        self.progress.event("stage_end", stage=spec.name, frames=f"{frame} {label}",
                            attempt=attempt, ok=outcome.ok,
                            seconds=round(outcome.seconds, 3))  # fmt: skip
        self.runner.render_seconds += outcome.seconds
        if outcome.stopped or self.stop.is_set():
            raise Preempted(f"stopped during stage {spec.name} of frame {frame} ({label})")
        return outcome

    def _attempts(self, frame: int, extra: list[str], label: str) -> StageOutcome:
        """Run a part or finish invocation with the job's frame retries."""
        outcome = None
        for attempt in range(self.job.retries.frame + 1):
            outcome = self._invoke(frame, extra, label, attempt)
            if outcome.ok:
                break
            self.progress.event("warning", message=f"frame {frame} {label}: {outcome.why()}")
        assert outcome is not None
        return outcome

    def _render_part(self, frame: int, part: int) -> FrameFailure | None:
        from jitrender.assemble import describe_part

        local = self.scratch / f"frame.{frame}.part.{part}.exr"
        local.parent.mkdir(parents=True, exist_ok=True)
        options = [*part_options(self.split, part), f"--part-output={local}"]
        outcome = self._attempts(frame, options, f"part {part}")
        sidecar = local.with_name(local.name + ".json")
        if not outcome.ok or not local.is_file() or not sidecar.is_file():
            why = outcome.why() if not outcome.ok else "wrote no part file"
            return FrameFailure(frame, self.stage.name, f"part {part}: {why}", list(outcome.tail))
        description = json.loads(sidecar.read_text())
        describe_part(local, description)
        crc = self._put(local, part_url(self.job, frame, part, ".exr"))
        body = {
            "job": self.job_hash,
            "frame": frame,
            "part": part,
            "of": self.split.parts,
            "crc32c": crc,
            "attempt": current_attempt(),
            "host": socket.gethostname(),
            "time": time.time(),
            **{k: v for k, v in description.items() if k != "frame"},
        }
        url = part_url(self.job, frame, part, ".json")
        data = json.dumps(body, sort_keys=True).encode()
        metadata = {JOB_METADATA_KEY: self.job_hash}
        with_retries(lambda: self.store.put_bytes_if_absent(data, url, metadata), url, self.retry)
        self.summary.rendered.append([frame, part])
        self.progress.event("part", frame=frame, part=part, status="uploaded")
        return None

    # -- assembly --------------------------------------------------------------------------

    def _assemble(self, frame: int) -> FrameFailure | None:
        """Download the frame's parts, assemble them, and finish the frame into outputs/."""
        from jitrender.assemble import assemble_frame, carry_render_metadata

        started = time.monotonic()
        folder = self.scratch / f"frame.{frame}"
        folder.mkdir(parents=True, exist_ok=True)
        local: list[Path] = []
        for part in range(self.split.parts):
            path = folder / f"part.{part}.exr"
            self._fetch(part_url(self.job, frame, part, ".exr"), path)
            local.append(path)
        assembled = folder / "assembled.exr"
        assemble_frame(local, assembled)
        self.summary.assemble_s += time.monotonic() - started
        # Blender writes the frame beside the parts; it moves into outputs/ (and so to the
        # uploader) whole, its metadata added.
        finished = folder / "finished"
        extra = [f"--finish={assembled}", f"--outputs={finished}"]  # the last --outputs wins
        outcome = self._attempts(frame, extra, "assembly")
        self.summary.finish_s += outcome.seconds
        if not outcome.ok:
            return FrameFailure(frame, self.stage.name, f"assembly: {outcome.why()}",
                                list(outcome.tail))  # fmt: skip
        written = [p for p in finished.rglob("*") if p.is_file() and not p.name.startswith(".")]
        if len(written) != 1:
            return FrameFailure(frame, self.stage.name, "assembly wrote no frame")
        relative = written[0].relative_to(finished)
        carry_render_metadata(assembled, written[0])
        target = self.runner.workspace.outputs / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        written[0].replace(target)
        self.runner.uploader.submit(target)  # a move into outputs/ is no rename event there
        self.summary.assembled.append(frame)
        return None

    def run(self) -> list[int]:
        settled: list[int] = []
        mine: dict[int, list[int]] = {}
        for frame, part in self.parts:
            mine.setdefault(frame, []).append(part)
        listing = self._list(self.prefix) if self.parts else []
        done = parts_with_markers(listing, self.prefix)
        for frame in self.frames:
            failure: FrameFailure | None = None
            for part in mine.get(frame, []):
                if (frame, part) in done:
                    self.summary.skipped.append([frame, part])
                    continue
                self.inputs.wait((frame,))
                try:
                    failure = self._render_part(frame, part)
                except JitrenderError as exc:
                    if isinstance(exc, Preempted):
                        raise
                    failure = FrameFailure(frame, self.stage.name, f"part {part}: {exc.message}")
                if failure is not None:
                    break
            if failure is None:
                failure = self._finish(frame, settled)
            if failure is not None:
                self.books.failed(failure)
                settled.append(frame)
        return settled

    def _finish(self, frame: int, settled: list[int]) -> FrameFailure | None:
        """Assemble ``frame`` if every part is in the bucket and nobody marked it yet."""
        present = self._marked(frame)
        missing = sorted(set(range(self.split.parts)) - present)
        if missing:
            if self.assemble_only:
                listed = ", ".join(str(p) for p in missing)
                what = f"part {listed} is" if len(missing) == 1 else f"parts {listed} are"
                why = f"{what} not in the bucket yet (of {self.split.parts}): run its tasks"
                return FrameFailure(frame, "assemble", why)
            self.summary.waiting.append(frame)
            return None
        if self._frame_marked(frame):  # another task assembled it: adopt, not this run's frame
            self.summary.adopted.append(frame)
            return None
        settled.append(frame)
        self.inputs.wait((frame,))
        try:
            failure = self._assemble(frame)
        except DataError as exc:
            return FrameFailure(frame, "assemble", exc.message)
        if failure is None:
            self.books.stages_done((frame,))
        return failure
