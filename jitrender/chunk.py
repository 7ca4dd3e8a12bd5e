"""A frame's (or a chunk's) life in a run: wait for its inputs, run its stages with retries,
check its outputs, and close its books, always, in ``finally`` (as OpenCue rqd's frame
attendant does).

:class:`FrameBooks` holds each frame's state for the run: stages done, outputs uploaded (the
uploader reports each one to it), marker written, failure. A frame is marked only when its
stages are done *and* every expected output is uploaded, whichever comes last.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Collection, Mapping, Sequence

from jitrender.engines import StageCall, Workspace, engine_named
from jitrender.errors import JitrenderError, Preempted
from jitrender.inputs import Inputs
from jitrender.job import Job, StageSpec
from jitrender.markers import MarkerWriter
from jitrender.outputs import UPLOADED, OutputPatterns, Uploader, UploadRecord
from jitrender.plan import RunPlan, StageGroup
from jitrender.progress import Progress
from jitrender.report import FrameFailure
from jitrender.stages import StageOutcome, run_invocation

# Markers written at once, at most, when several frames are marked together.
MARKER_WRITERS = 8
# The built-in engines' "the frame's data is wrong" exit (missing image, no camera, scene not
# found: see jitrender.engines.blender_render): another attempt on this node gives the same.
_DATA_ERROR_EXIT = {"blender": 65}


class FrameBooks:
    """Each frame's state in one run. Thread-safe; :meth:`uploaded` is the uploader's
    ``on_uploaded``."""

    def __init__(
        self,
        expected: Mapping[int, Sequence[str]],
        patterns: OutputPatterns,
        markers: MarkerWriter,
        progress: Progress,
    ) -> None:
        self.expected = expected
        self.patterns = patterns
        self.markers = markers
        self.progress = progress
        self._lock = threading.Lock()
        self._stages_done: set[int] = set()
        self._marked: set[int] = set()
        self._claimed: set[int] = set()  # marker written or being written
        self._uploads: dict[str, UploadRecord] = {}
        self.failures: dict[int, FrameFailure] = {}
        # The frame's outputs beyond the frame-token ones (the uploader's attribution).
        self.produced: Callable[[int], Sequence[str]] = lambda frame: ()
        # Writes a stage marker (stage, frame, outputs); None: no stage markers.
        self.stage_marker: Callable[[str, int, list[str]], None] | None = None
        self._stage_pending: dict[tuple[str, int], list[str]] = {}
        # While the job's last stage renders a chunk: (that stage, whether a frame it has
        # finished produced what outputs.files asks for). Such a frame is marked as soon as
        # its outputs are uploaded, not when the chunk's process ends (see Chunk.run).
        self._finishing: tuple[str, Callable[[int], bool]] | None = None
        self._early: set[int] = set()  # such frames, not marked yet

    def uploaded(self, record: UploadRecord) -> None:
        if record.outcome in UPLOADED:
            self.progress.event("uploaded", url=record.url, outcome=record.outcome)
            with self._lock:
                self._uploads[record.relpath] = record
        else:
            why = f": {record.error}" if record.error else ""
            self.progress.event("error", message=f"{record.url}: upload {record.outcome}{why}")
        frame = self.patterns.frame_of(record.relpath)
        if frame is not None:
            self.mark(frame)
        with self._lock:
            early, self._early = self._early, set()
        if early:
            self.mark_all(early)
        self._mark_stages()

    def finishing(self, stage: str | None, complete: Callable[[int], bool] | None = None) -> None:
        """``stage``, the job's last, renders a chunk now (None: it no longer does): a frame
        it finishes and moves on from, for which ``complete`` holds, is done (marked once its
        outputs are uploaded), as a chunk stopped or failed after it would count it."""
        with self._lock:
            self._finishing = None if stage is None or complete is None else (stage, complete)

    def stage_finished(self, stage: str, frame: int, relpaths: list[str]) -> None:
        """A stage finished a frame (the uploader's ``on_stage_frame``): its marker is
        written once ``relpaths`` are all uploaded; a frame the job's last stage finished
        is marked (see :meth:`finishing`)."""
        with self._lock:
            finishing = self._finishing
        if finishing is not None and finishing[0] == stage and finishing[1](frame):
            # Marked by the upload that follows (the next frame's), never here: this is the
            # watcher's thread, which must not wait on storage.
            with self._lock:
                self._stages_done.add(frame)
                self._early.add(frame)
        if self.stage_marker is None:
            return
        with self._lock:
            self._stage_pending[(stage, frame)] = relpaths
        self._mark_stages()

    def _mark_stages(self) -> None:
        with self._lock:
            ready = [
                (key, rels)
                for key, rels in self._stage_pending.items()
                if rels and all(r in self._uploads for r in rels)
            ]
            for key, _ in ready:
                del self._stage_pending[key]
        for (stage, frame), rels in ready:
            assert self.stage_marker is not None
            try:
                self.stage_marker(stage, frame, rels)
            except JitrenderError as exc:
                self.progress.event("warning", message=f"{stage} of frame {frame}: {exc}")

    def stages_done(self, frames: Collection[int]) -> None:
        """``frames``' stages are all done: each is marked once its outputs are uploaded
        (those already uploaded now, see :meth:`mark_all`)."""
        with self._lock:
            self._stages_done.update(frames)
        self.mark_all(frames)

    def failed(self, failure: FrameFailure) -> None:
        with self._lock:
            self.failures[failure.frame] = failure
        self.progress.event("frame", frame=failure.frame, status="failed")

    def mark(self, frame: int) -> None:
        """Write ``frame``'s marker if its stages are done and every output is uploaded."""
        self.mark_all((frame,))

    def mark_all(self, frames: Collection[int]) -> None:
        """:meth:`mark` of each of ``frames``, the markers written concurrently: a chunk's
        frames finish together, and each marker is a request (one after another, a 100-frame
        chunk's would cost 100 round trips to the bucket)."""
        ready = [
            (frame, outputs) for frame in frames if (outputs := self._ready(frame)) is not None
        ]
        if len(ready) <= 1:
            for frame, outputs in ready:
                self._write_marker(frame, outputs)
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(MARKER_WRITERS, len(ready)), "marker") as writers:
            writes = [writers.submit(self._write_marker, f, outputs) for f, outputs in ready]
        for write in writes:
            write.result()  # what is not a storage error is raised here, as when serial

    def _ready(self, frame: int) -> dict[str, str | None] | None:
        """``frame``'s outputs (URL -> crc32c) where its marker is due now, claimed for the
        caller to write; None where it is not due (stages or uploads pending, or claimed)."""
        with self._lock:
            if frame in self._claimed or frame not in self._stages_done:
                return None
            expected = sorted({*self.expected.get(frame, ()), *self.produced(frame)})
            records = [self._uploads.get(rel) for rel in expected]
            if any(r is None for r in records):
                return None
            self._claimed.add(frame)  # no second thread writes it meanwhile
        return {r.url: r.crc32c for r in records if r is not None}

    def _write_marker(self, frame: int, outputs: dict[str, str | None]) -> None:
        try:
            self.markers.write(frame, outputs)
        except JitrenderError as exc:
            with self._lock:
                self._claimed.discard(frame)
            self.progress.event("error", message=f"frame {frame}: marker not written: {exc}")
            return
        with self._lock:  # done only once its marker is in the bucket, not while it is written
            self._marked.add(frame)
        self.progress.event("frame", frame=frame, status="done")

    @property
    def done(self) -> list[int]:
        with self._lock:
            return sorted(self._marked)


class StageRunner:
    """Runs one stage invocation in the workspace: its command, environment and log; tells
    the uploader when its writer starts and how it ended."""

    def __init__(
        self,
        job: Job,
        workspace: Workspace,
        uploader: Uploader,
        agent_env: Mapping[str, str],
        stop: threading.Event,
        progress: Progress,
    ) -> None:
        self.job = job
        self.workspace = workspace
        self.uploader = uploader
        self.agent_env = dict(agent_env)
        self.stop = stop
        self.progress = progress
        self.render_seconds = 0.0  # time in stage processes (fetching overlaps it)

    def env(self, call: StageCall) -> dict[str, str]:
        ws = self.workspace
        env = dict(os.environ)
        env.update(self.job.env)
        env.update(
            {
                "JITRENDER_WORKSPACE": str(ws.root),
                "JITRENDER_INPUTS": str(ws.inputs),
                "JITRENDER_OUTPUTS": str(ws.outputs),
                "JITRENDER_OUTPUTS_URL": self.job.outputs_url,  # Nuke Writes map below it
                "JITRENDER_SCRATCH": str(ws.scratch),
                "JITRENDER_FRAMES": ",".join(str(f) for f in call.frames),
                "JITRENDER_SCENE": str(ws.scene or ""),
                "JITRENDER_JOB_HASH": self.job.job_hash(),
                "JITRENDER_JOB_DIR": str(ws.job_dir or ""),
            }
        )
        env.update(self.agent_env)
        return env

    def invoke(self, spec: StageSpec, frames: tuple[int, ...], attempt: int) -> StageOutcome:
        call = StageCall(spec.name, frames, self.workspace, spec.args, spec.command, spec.env)
        invocation = engine_named(spec.engine or "command")(call)
        label = f"{frames[0]}" if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
        log = self.workspace.root / "logs" / f"{spec.name}.{label}.{attempt}.log"
        # Earlier stages' outputs of these frames must be the bucket's before this one reads them.
        self.uploader.settle(frames, self.stop)
        self.progress.event("stage", stage=spec.name, frames=label, attempt=attempt)
        self.uploader.stage_started(frames, spec.name)
        outcome = run_invocation(
            invocation,
            log,
            env=self.env(call),
            stop=self.stop,
            timeout=spec.timeout,
        )
        self.progress.event(
            "stage_end",
            stage=spec.name,
            frames=label,
            attempt=attempt,
            ok=outcome.ok,
            seconds=round(outcome.seconds, 3),
        )
        self.render_seconds += outcome.seconds
        if outcome.ok:
            self.uploader.stage_succeeded()
        else:
            self.uploader.stage_failed()
        return outcome


class Chunk:
    """One frame (a per-frame stage group) or a chunk of frames (a chunk stage) through one
    group of stages, with the job's frame retries. :meth:`run` returns the frames that
    failed; it raises :class:`Preempted` when the run is stopping. Either way, when this is
    the last group, the frames it finished are reported to the books."""

    def __init__(
        self,
        frames: Sequence[int],
        group: StageGroup,
        *,
        last: bool,
        runner: StageRunner,
        books: FrameBooks,
        inputs: Inputs,
        attempts: int,
        done_before: Mapping[str, Collection[int]] | None = None,
    ) -> None:
        # Stages that already finished frames (stage markers): not run again for them.
        self.done_before = done_before or {}
        self._stages_finished: set[str] = set()
        self.frames = tuple(frames)
        self.group = group
        self.last = last
        self.runner = runner
        self.books = books
        self.inputs = inputs
        self.attempts = attempts
        # A chunk's frames that were written before it failed or stopped count as finished.
        self.salvage = group.per != "frame"
        self.finished: list[int] = []

    def _failure(self, frame: int, spec: StageSpec, outcome: StageOutcome) -> FrameFailure | None:
        if outcome.ok:
            why = self.runner.uploader.check_frame(frame) if self.last else None
            return None if why is None else FrameFailure(frame, spec.name, why)
        if self.salvage and self.books.patterns.per_frame and self.last and self._written(frame):
            # Its outputs were final before the failure (which removed the rest): its exact
            # names are on disk, a glob pattern's files among those it made final.
            return None
        if (
            self.salvage
            and not self.last
            and self.runner.uploader.stage_was_finished(spec.name, frame)
        ):
            return None  # the renderer had finished this frame and moved on
        return FrameFailure(frame, spec.name, outcome.why(), list(outcome.tail))

    def _checked(self, frame: int) -> bool:
        """A frame no stage of this group has to run for: finished if it is not the last
        group, else only if it has produced what ``outputs.files`` asks for."""
        return not self.last or self.runner.uploader.check_frame(frame) is None

    def _written(self, frame: int) -> bool:
        """A stopped chunk's frame whose outputs were final before the stop."""
        return self.runner.uploader.check_frame(frame) is None

    def _warn(
        self, failures: Mapping[int, FrameFailure], spec: StageSpec, outcome: StageOutcome
    ) -> None:
        progress = self.runner.progress
        if failures and self.salvage:
            progress.event("warning", message=f"{spec.name}: {outcome.why()}")
        elif failures:
            for failure in failures.values():
                progress.event("warning", message=f"frame {failure.frame}: {failure.why}")

    def _run_specs(
        self, frames: tuple[int, ...], attempt: int
    ) -> tuple[StageSpec, StageOutcome | None]:
        """The group's stages in order, up to the first that does not succeed; one attempt
        per stage and frame: a stage that finished (in this run, or in the bucket) is not run
        again. The outcome is None when every stage had finished already."""
        outcome: StageOutcome | None = None
        for spec in self.group.specs:
            if spec.name in self._stages_finished:
                continue
            outcome = self.runner.invoke(spec, frames, attempt)
            if not outcome.ok:
                break
            if len(frames) == 1:
                self._stages_finished.add(spec.name)
        return spec, outcome

    def run(self) -> dict[int, FrameFailure]:
        spec0 = self.group.specs[0]
        if self.group.per == "frame":
            self._stages_finished = {
                s.name
                for s in self.group.specs
                if self.frames[0] in self.done_before.get(s.name, ())
            }
            remaining = self.frames
        else:  # a chunk stage runs only for the frames it has not finished before
            self._stages_finished = set()
            done = self.done_before.get(spec0.name, ())
            remaining = tuple(f for f in self.frames if f not in done)
            self.finished += [f for f in self.frames if f in done and self._checked(f)]
        failures: dict[int, FrameFailure] = {}
        completed = False
        last_spec = self.group.specs[-1]
        if self.last and self.salvage and self.books.patterns.per_frame:
            # Frames the renderer moves on from are final (see _failure): each is marked
            # as it lands, so status, progress and a SIGKILLed run's retry see it done.
            chunk = set(self.frames)
            self.books.finishing(last_spec.name, lambda f: f in chunk and self._written(f))
        try:
            for attempt in range(self.attempts):
                if not remaining:
                    break
                self.inputs.wait(remaining)
                spec, ran = self._run_specs(remaining, attempt)
                if ran is None:  # every stage had finished this frame before
                    self.finished += [f for f in remaining if self._checked(f)]
                    remaining = ()
                    break
                outcome = ran
                if outcome.stopped:
                    if self.salvage:  # the frames whose outputs it finished before the stop
                        self.finished += [f for f in remaining if self._written(f)]
                    where = "" if self.salvage else f" of frame {remaining[0]}"
                    raise Preempted(f"stopped during stage {spec.name}{where}")
                failures = {}
                for frame in remaining:
                    failure = self._failure(frame, spec, outcome)
                    if failure is None:
                        self.finished.append(frame)
                    else:
                        failures[frame] = failure
                remaining = tuple(sorted(failures))
                self._warn(failures, spec, outcome)
                if self.runner.stop.is_set():
                    raise Preempted("stopped by signal")
                if failures and outcome.returncode == _DATA_ERROR_EXIT.get(spec.engine or ""):
                    break  # the engine says the data is wrong: no attempt can mend that
            completed = True
            return failures
        finally:
            if self.last:
                self.books.finishing(None)
                self.books.stages_done(self.finished)
            if completed:
                for failure in failures.values():
                    self.books.failed(failure)


def run_chunks(
    plan: RunPlan,
    runner: StageRunner,
    books: FrameBooks,
    inputs: Inputs,
    *,
    attempts: int,
    done_before: Mapping[str, Collection[int]],
    stop: threading.Event,
) -> None:
    """Every stage group of ``plan`` in order, per frame or per chunk, over the frames no
    earlier group failed; raises :class:`Preempted` when ``stop`` is set between chunks."""
    alive = list(plan.frames)
    for index, group in enumerate(plan.groups):
        chunks = [(f,) for f in alive] if group.per == "frame" else [tuple(alive)]
        for frames in chunks:
            if stop.is_set():
                raise Preempted("stopped by signal")
            chunk = Chunk(frames, group, last=index == len(plan.groups) - 1, runner=runner,
                          books=books, inputs=inputs, attempts=attempts,
                          done_before=done_before)  # fmt: skip
            for frame in chunk.run():
                alive.remove(frame)
