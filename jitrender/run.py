"""One run of a job on this node: resume, resolve, fetch, render, upload, mark, report.

The order of a frame's life, and why it is safe to kill the process at any point:

1. Frames with a done marker (``<outputs>/_jitrender/<job hash>/frame.<n>.json``) are skipped;
   frames whose expected outputs all exist and carry this job's hash get their marker now.
2. Dependencies of the remaining frames are resolved, stat'ed (missing -> exit 65 before
   anything renders) and fetched into the shared cache (rename-after-verify: no partial
   entry), then hardlinked into the workspace.
3. Stages run; each finished output is uploaded create-if-absent as soon as it is whole.
4. A frame's marker is written last, create-if-absent, once all its outputs are uploaded.

A kill between any two steps leaves only whole objects and a marker-less frame, which the
next run either completes from its uploaded outputs or renders again without overwriting.

:class:`JobRun` only orchestrates: :func:`jitrender.resume.decide` says what is left to do,
:class:`~jitrender.inputs.Inputs` owns every input file,
:class:`~jitrender.plan.RunPlan` what will run, :class:`~jitrender.chunk.Chunk` each frame's
(or chunk's) stages, :class:`~jitrender.chunk.FrameBooks` each frame's state and marker, and
:class:`~jitrender.outputs.Uploader` the outputs. None of them calls back into the run.
"""

from __future__ import annotations

import contextlib
import errno
import json
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jitrender import resume
from jitrender.agent import Agent
from jitrender.cache import Cache, parse_size
from jitrender.chunk import FrameBooks, StageRunner, run_chunks
from jitrender.claims import Claims, Holder
from jitrender.deps import Dependencies
from jitrender.engines import Workspace
from jitrender.errors import (
    ConfigError,
    DataError,
    ExitCode,
    JitrenderError,
    Preempted,
    TransientError,
)
from jitrender.headstart import HeadStart
from jitrender.health import record_run
from jitrender.inputs import Inputs
from jitrender.job import Job
from jitrender.joblogs import LogShipper, ship_run_logs
from jitrender.markers import MarkerWriter, marker_prefix, marker_url
from jitrender.outputs import (
    OutputPatterns,
    OutputsWatch,
    Uploader,
    collect_outputs,
    why_not_uploaded,
)
from jitrender.paths import PathMap, workspace_relpath
from jitrender.plan import Resolution, RunPlan, resolve_for_job, resolve_job_scene
from jitrender.preemption import PreemptionWatcher
from jitrender.progress import Progress, QuietProgress
from jitrender.report import FrameFailure, Report
from jitrender.stagemarks import stage_marker_writer
from jitrender.stopping import Stop, check_stop_settings, seconds_from_env
from jitrender.storage import RetryPolicy, Stores, with_retries


@dataclass
class RunOptions:
    frames: list[int] | None = None  # overrides the job's frames (already split by task)
    parts: list[tuple[int, int]] | None = None  # a split job's (frame, part) pairs; None: all
    assemble_only: bool = False  # a split job: render no part, assemble frames whose parts exist
    cache_dir: Path | None = None
    cache_max_bytes: int | None = None
    report_path: Path | None = None
    overwrite: bool = False
    rerender: bool = False  # render the frames again, replacing their outputs and markers
    keep_workspace: bool = False
    fetch_workers: int = 16
    # Bytes of cold downloads in flight at once: keeps the next frame's inputs first in line.
    # About a frame's sequence layers: at 16 MiB every object >= 8 MiB went alone and the
    # link idled between them (the shot, 923 MB: 6.1 -> 4.7 s wall).
    prefetch_bytes: int = 64 << 20
    upload_workers: int = 4
    extra_path_map: PathMap | None = None
    progress: Progress = field(default_factory=QuietProgress)
    task: dict[str, Any] | None = None
    mount: Path | None = None  # a lazy read-only FUSE view of the mapped prefixes
    # The process's stop when the CLI holds the signals for the whole process (see stopping).
    stop: Stop | None = None
    # The scene's stat and connections started while the run's modules imported; its stores
    # are the run's.
    head_start: HeadStart | None = None
    # Frame claims (jitrender.claims), their lease written every this many seconds; 0: none.
    claim_interval_s: float = 0.0
    # Frames whose holder stops without them are rendered by this run (else: exit 75).
    render_lost: bool = True
    # How long a stopping run may spend flushing uploads and markers (GKE Spot gives ~15 s).
    flush_budget_s: float = field(
        default_factory=lambda: seconds_from_env("JITRENDER_FLUSH_BUDGET_S", 8.0)
    )

    def __post_init__(self) -> None:
        check_stop_settings()  # read only when stopping: a bad value is refused now (78)


def job_cache(job: Job, options: RunOptions) -> Cache:
    max_bytes = options.cache_max_bytes
    folder = job.cache_folder(options.cache_dir)
    cap = parse_size(job.cache.max_size, cache_dir=folder) if max_bytes is None else max_bytes
    return Cache(folder, cap)


def job_path_map(job: Job, options: RunOptions) -> PathMap:
    """The job's rules with ``--path-map``'s; the job's scene and outputs URLs use them too."""
    if options.extra_path_map is not None:
        job.use_path_map(options.extra_path_map)
    return job.path_mapping()


class JobRun:
    """Executes one job on this node. Use :func:`run_job`."""

    def __init__(self, job: Job, options: RunOptions) -> None:
        self.job = job
        self.options = options
        self.progress = options.progress
        self.stopping = options.stop or Stop()
        self.stopping.attach(self.progress)
        self.stopping.last_words = self._last_words
        self.stop = self.stopping.event
        self._settled = False  # the report's status is final (the backstop keeps it)
        self._watcher = PreemptionWatcher(self.stop, self.stopping.notice)
        self.stores = options.head_start.stores if options.head_start else Stores()
        self.retry = RetryPolicy(job.retries.storage, job.retries.storage_deadline)
        self.path_map = job_path_map(job, options)  # first: the job's URLs go through it
        self.job_hash = job.job_hash()
        self.report = Report(job=job.display_name, job_hash=self.job_hash, task=options.task)
        self.patterns = OutputPatterns(job.outputs.files)
        self.cache = job_cache(job, options)
        self.outputs_store = self.stores.for_url(job.outputs_url)
        self.markers = MarkerWriter(job, self.outputs_store, self.retry)
        self.inputs: Inputs | None = None
        self.workspace: Workspace | None = None
        self.run_dir: Path | None = None
        self.uploader: Uploader | None = None
        self.books: FrameBooks | None = None
        self.agent: Agent | None = None
        self._mount: Any = None
        self._logs: LogShipper | None = None
        self._outputs_watch: OutputsWatch | None = None  # started ahead of the uploader
        self._agent_ahead: Future[Agent] | None = None  # started ahead of _start_services
        self.resumed = resume.Resume([], [])  # what the resume step left to do
        self._claims: Claims | None = None
        self._held: dict[int, Holder] = {}  # frames another live run renders
        self._inner: Report | None = None  # the run of frames whose holder stopped

    def execute(self) -> Report:
        started = time.monotonic()
        report = self.report
        try:
            with self.stopping.signals():
                self._execute()
        except Preempted as exc:
            reason = f" ({self.stopping.reason})" if self.stopping.reason else ""
            report.status, report.exit_code, report.error = "preempted", 75, exc.message + reason
        except TransientError as exc:  # storage outlasted its retries: not a preemption
            report.status, report.exit_code, report.error = "transient_failure", 75, exc.message
        except JitrenderError as exc:
            report.status, report.exit_code = "failed", int(exc.exit_code)
            report.error = exc.message
        except Exception as exc:
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # the node's state: retry
                report.status, report.exit_code = "transient_failure", int(ExitCode.TEMPFAIL)
                report.error = (
                    f"{exc.filename or self.run_dir or 'the cache'}: no space left on device; "
                    "free space there, cap the cache (--cache-max-size) or use a bigger --cache-dir"
                )
            else:  # a bug, not the user's mistake: keep the traceback, still report
                traceback.print_exc()
                report.status, report.exit_code = "failed", int(ExitCode.SOFTWARE)
                report.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            report.timings["wall_s"] = time.monotonic() - started
            self._settled = True
            self._finish()
        return report

    def _last_words(self) -> int:
        """For the stop's backstop (storage still hung at its deadline) and a second signal:
        the report as far as it is true now, written locally; the exit code to end with."""
        report = self.report
        if not self._settled:
            report.status, report.exit_code = "preempted", int(ExitCode.TEMPFAIL)
            report.error = "stopped; exited before the flush finished (storage not answering)"
            if self.books is not None:
                report.done = [f for f in self.books.done if f in set(report.requested)]
        if self.options.report_path is not None:
            report.write(self.options.report_path)
        return report.exit_code

    def _execute(self) -> None:
        job, report = self.job, self.report
        frames = self.options.frames if self.options.frames is not None else job.frame_list()
        report.requested = list(frames)
        if self.stop.is_set():  # a signal during start-up: nothing was started, nothing to flush
            raise Preempted("stopped before the run started")
        self._watcher.start()
        if not frames:
            self.progress.event("phase", message="no frames for this task: nothing to do")
            return
        if job.scene_url is None and not job.deps and job.resolver != "auto":
            raise ConfigError(f"{job.source}: resolver {job.resolver!r} needs a 'scene'")
        self.resumed = resumed = resume.decide(frames, self.markers, self.patterns, self.progress,
                                              rerender=self.options.rerender,
                                              overwrite=self.options.overwrite)  # fmt: skip
        report.skipped_already_done, todo = resumed.skipped, resumed.todo
        if todo and self.options.claim_interval_s > 0 and job.split_stage is None:
            todo = self._claim(todo)
        if not todo and not self._held:
            self.progress.event("phase", message="every requested frame is already done")
            self.cache.start_cleaning_leftovers()  # as _start_ahead's, also with nothing to do
            return
        if todo:
            self._render_frames(todo)
        self._wait_for_others()

    def _render_frames(self, todo: list[int]) -> None:
        job, report = self.job, self.report
        run_dir, _lock_fd = self.cache.new_run_dir(f"{job.display_name}-{self.job_hash[:8]}")
        self.run_dir = run_dir  # removed at the end however the run ends (--keep-workspace)
        scene = run_dir / "inputs" / workspace_relpath(job.scene_url) if job.scene_url else None
        from jitrender.preflight import check_job  # what `validate` checks, before any fetch

        check_job(job, todo, Workspace(run_dir, scene, _job_dir(job)))  # 78 costs no transfer
        self.inputs = inputs = self._inputs(run_dir / "inputs")
        t0 = time.monotonic()
        self._start_ahead(run_dir)  # meanwhile: the resolve mostly waits on storage
        if self.options.head_start is not None:
            inputs.remember(self.options.head_start.infos(self.stop))
            head_start, stop = self.options.head_start, self.stop
            inputs.hold(lambda info: head_start.body(info, stop))
            listed, stats = head_start.listings(stop)  # a manifest scene's, made ahead
            inputs.remember_listings(listed)
            inputs.remember(stats)
        resolution = self._resolve(inputs, todo)
        report.timings["resolve_s"] = time.monotonic() - t0
        plan = RunPlan.make(todo, resolution.deps, self.patterns, job.stages,
                            in_fetch_order=resolution.in_fetch_order)  # fmt: skip
        self.workspace = Workspace(run_dir, resolution.scene_local, _job_dir(job))
        self.workspace.create()
        self._logs = ship_run_logs(self.workspace.root / "logs", marker_prefix(job),
                                   self.options.task, todo, self.markers.store, self.retry,
                                   self.progress)  # fmt: skip
        phase_started = time.monotonic()  # (the prefetch began in the resolve: see _resolve)
        self._start_services(plan)
        self.progress.totals(report.deps_count, report.bytes_needed, len(todo))
        try:
            plan = self._render(plan)  # narrowed to the frames this task finishes
        except Preempted:
            self._settle(plan, interrupted=True)  # flush what finished (bounded), mark it
            raise
        # From the first fetch to the last stage's end: what overlapping fetch and render saves.
        report.timings["fetch_render_s"] = time.monotonic() - phase_started
        self._settle(plan)

    # -- claims: the frames another run renders at the same time (see jitrender.claims) ---

    def _claim(self, todo: list[int]) -> list[int]:
        """Claim ``todo``; the frames this run renders (those no other live run holds)."""
        progress = self.progress
        self._claims = claims = Claims(
            marker_prefix(self.job), self.outputs_store, self.retry,
            self.options.claim_interval_s, self.stop,
            warn=lambda message: progress.event("warning", message=message),
        )  # fmt: skip
        self._held = held = claims.take(todo)
        for holder, frames in _by_holder(held).values():
            self.progress.event(
                "warning",
                message=f"{_frames_text(frames)}: {holder.describe()} is rendering "
                f"{_them(frames)}; this run renders its other frames, then waits",
            )
        return [f for f in todo if f not in held]

    def _wait_for_others(self) -> None:
        """Wait for the frames another run holds (see :meth:`Claims.wait_for`)."""
        if not self._held or self._claims is None:
            return
        store, retry, job = self.outputs_store, self.retry, self.job

        def is_done(frame: int) -> bool:
            url = marker_url(job, frame)
            return with_retries(lambda: store.stat(url), url, retry) is not None

        self.progress.event("phase", message=f"waiting for {_frames_text(sorted(self._held))}")
        said = [time.monotonic()]

        def still_waiting(pending: dict[int, Holder]) -> None:  # a line a minute in the log
            if time.monotonic() - said[0] >= WAITING_NOTE_S:
                said[0] = time.monotonic()
                for holder, frames in _by_holder(pending).values():
                    self.progress.event("phase", message=f"still waiting for "
                                        f"{_frames_text(frames)}: {holder.describe()}")  # fmt: skip

        done, left = self._claims.wait_for(self._held, is_done, still_waiting)
        for frame in sorted(done):
            self.progress.event("frame", frame=frame, status="skipped")
        self.report.skipped_already_done = sorted({*self.report.skipped_already_done, *done})
        if left and self.stop.is_set():
            raise Preempted(f"stopped while another run rendered {_frames_text(sorted(left))}")
        if not left:
            return
        first, them = sorted(left)[0], _them(list(left))
        gone = f"{_frames_text(sorted(left))}: {left[first].describe()} stopped without finishing"
        if not self.options.render_lost:  # a run for such frames already: the retry's turn
            raise TransientError(f"{gone} {them}; run again to render {them}")
        self.progress.event("warning", message=f"{gone} {them}; this run renders {them}")
        self._render_lost(sorted(left))

    def _render_lost(self, frames: list[int]) -> None:
        """Render ``frames`` (whose holder stopped without them) in a run of their own, in
        this process: it claims them as any run does (another run may be taking them over
        too), and its report joins this one's. Its own lost frames are left to the retry."""
        options = replace(self.options, frames=frames, report_path=None, head_start=None,
                          rerender=False, render_lost=False)  # fmt: skip
        lost = JobRun(self.job, options)  # (it reports through this run's progress)
        self.stopping.last_words = self._last_words  # a second signal: this run's report
        self._inner = inner = lost.execute()
        if inner.exit_code == int(ExitCode.TEMPFAIL):
            raise (Preempted if inner.status == "preempted" else TransientError)(
                inner.error or "stopped"
            )
        if inner.exit_code != int(ExitCode.OK):
            failed = JitrenderError(inner.error or f"exit {inner.exit_code}")
            failed.exit_code = ExitCode(inner.exit_code)
            raise failed

    def _inputs(self, root: Path) -> Inputs:
        return Inputs(
            self.cache,
            root,
            stores=self.stores,
            retry=self.retry,
            stop=self.stop,
            progress=self.progress,
            workers=self.options.fetch_workers,
            prefetch_bytes=self.options.prefetch_bytes,
        )

    def _start_ahead(self, run_dir: Path) -> None:
        """Start the uploader's watcher (its imports, its threads), the stage start's probe and
        the agent in a thread, for :meth:`_start_services` to take over (a thread started while
        another one links the inputs waits for the GIL: up to 5 ms a thread, ~15 ms a warm
        run); and the leftovers' sweep."""
        assert self.inputs is not None
        inputs, path_map = self.inputs, self.path_map
        self._outputs_watch = watch = OutputsWatch(run_dir / "outputs")
        agent: Future[Agent] = Future()
        self._agent_ahead = agent

        def start() -> None:
            watch.start_now()
            log = run_dir / "logs" / "agent.log"
            try:
                agent.set_result(Agent(inputs, path_map, workspace=run_dir, log_path=log).start())
            except BaseException as exc:  # raised where the run takes it over
                agent.set_exception(exc)
            from jitrender.stages import start_probe

            start_probe()  # whether setpriv can start the stages here (~3 ms), ahead of them

        threading.Thread(target=start, name="start-ahead", daemon=True).start()
        # A killed run's partial downloads, workspace (whose links pin cache entries) and agent
        # folder go too: in the background, over by the run's end (not earlier in the start,
        # whose serial work it would slow: 2 ms here, 16-24 with a crowded $TMPDIR).
        self.cache.start_cleaning_leftovers()

    # -- 2. resolve ----------------------------------------------------------------------

    def _resolve(self, inputs: Inputs, frames: list[int]) -> Resolution:
        job, report = self.job, self.report
        # Prefetched as the plan's inputs become known (each as its stat answers), in the plan's
        # fetch order: nothing renders before the missing check below, and none is fetched twice.
        resolution = resolve_for_job(
            job, inputs, frames, self.path_map, self.progress, prefetch=True
        )
        report.unresolved = [u.to_json() for u in resolution.unresolved]
        report.missing = [d.to_json() for d in resolution.missing]
        report.deps_count, report.bytes_needed = resolution.count, resolution.bytes_needed
        resolution.check_missing()
        return resolution

    # -- 3. services, stages ----------------------------------------------------------------

    def _start_services(self, plan: RunPlan) -> None:
        """The agent hooks ask for files on (and, with ``--mount``, the lazy FUSE view), and
        the uploader, which reports each settled output to the frames' books."""
        assert self.workspace is not None and self.inputs is not None
        ws, inputs = self.workspace, self.inputs
        if self._agent_ahead is not None:
            self.agent, self._agent_ahead = self._agent_ahead.result(), None
            self.agent.use_deps(plan.deps)
        else:
            self.agent = Agent(inputs, self.path_map, deps=plan.deps, workspace=ws.root,
                               log_path=ws.root / "logs" / "agent.log").start()  # fmt: skip
        if self.options.mount is not None:
            from jitrender.mount import mount_or_warn

            self._mount = mount_or_warn(self.options.mount, self.path_map, inputs, self.progress)
        self.books = books = FrameBooks(plan.expected, self.patterns, self.markers, self.progress)
        self.uploader = Uploader(
            ws.outputs,
            self.job.outputs_url,
            self.outputs_store,
            self.patterns,
            self.job_hash,
            overwrite=self.options.overwrite or self.options.rerender,
            overwrite_frames=self.resumed.redo,
            retry=self.retry,
            on_uploaded=books.uploaded,
            workers=self.options.upload_workers,
            checkpoints_url=self.job.checkpoints_url,
        )
        self.uploader.run_frames = set(plan.frames)
        books.produced = self.uploader.frame_relpaths
        books.stage_marker = stage_marker_writer(self.outputs_store, self.retry,
                                                 marker_prefix(self.job), self.job_hash,
                                                 self.job.stages[-1].name)  # fmt: skip
        self.uploader.on_stage_frame = books.stage_finished
        self.uploader.start(self._outputs_watch)
        resume.restore_stage_outputs(self.resumed.stages_done, self.markers, ws.outputs,
                                     self.uploader, self.progress)  # fmt: skip

    def _render(self, plan: RunPlan) -> RunPlan:
        """The plan's stage groups, or a split job's parts and assemblies (see
        :mod:`jitrender.split`); returns the plan narrowed to the frames this task finishes."""
        assert self.workspace and self.uploader and self.books and self.inputs and self.agent
        runner = StageRunner(self.job, self.workspace, self.uploader, self.agent.env(),
                             self.stop, self.progress)  # fmt: skip
        try:
            if self.job.split_stage is None:
                run_chunks(plan, runner, self.books, self.inputs,
                           attempts=self.job.retries.frame + 1,
                           done_before=self.resumed.stages_done, stop=self.stop)  # fmt: skip
                return plan
            from jitrender.split import SplitRender

            split = SplitRender(self.job, plan.frames, self.options.parts, runner=runner,
                                books=self.books, inputs=self.inputs, store=self.outputs_store,
                                retry=self.retry, stop=self.stop, progress=self.progress,
                                assemble_only=self.options.assemble_only)  # fmt: skip
            try:
                settled = split.run()
            finally:
                self.report.parts = split.summary.to_json()
            self.report.skipped_already_done += split.summary.adopted
            return replace(plan, frames=tuple(f for f in plan.frames if f in settled))
        finally:
            self.report.timings["render_s"] += runner.render_seconds

    # -- 4. settle: flush uploads, markers, the report -----------------------------------

    def _settle(self, plan: RunPlan, *, interrupted: bool = False) -> None:
        """Flush uploads (within the flush budget when stopping), mark what is whole, fill in
        the report; raise for a stop, transient upload errors or failed frames. Frames of an
        ``interrupted`` run are left for the retry, never failed."""
        assert self.uploader is not None and self.books is not None
        uploader, books, report = self.uploader, self.books, self.report
        t0 = time.monotonic()
        uploader.sweep()
        flushed = False
        while not flushed and not self.stop.is_set():  # a stop during the wait bounds it too
            flushed = uploader.wait(0.25)
        if not flushed or self.stop.is_set():
            # The flush budget counts from the stop; marker writes get what is left of it.
            budget = self.stopping.remaining(self.options.flush_budget_s)
            self.markers.deadline = time.monotonic() + budget
            flushed = flushed or uploader.wait(budget)
        books.mark_all(plan.frames)
        report.timings["upload_s"] = uploader.upload_seconds
        report.timings["upload_tail_s"] = time.monotonic() - t0
        collect_outputs(uploader, report, self.progress)
        report.done = [f for f in books.done if f in set(plan.frames)]
        resume.serve_requests(self.markers, self.resumed.requests, report.done)
        failures = {} if interrupted else dict(books.failures)
        report.failures = sorted(failures.values(), key=lambda f: f.frame)
        if self.stop.is_set() and set(report.done) != set(plan.frames):
            # Frames not done are left for the retry, not failed. (A stop that comes when every
            # frame is done and marked changes nothing: the exit code says what is in the bucket.)
            flush = "finished frames flushed" if flushed else "not every upload finished"
            raise Preempted(f"stopped ({flush})")
        for frame in plan.frames:
            if frame in report.done or frame in failures:  # stage failures come first
                continue
            why = why_not_uploaded(
                frame, uploader.records.values(), self.patterns, report.conflicts
            )
            report.failures.append(FrameFailure(frame, "upload", why))
        transient = [r for r in uploader.records.values() if r.outcome == "error" and r.transient]
        if transient:
            raise TransientError(transient[0].error or "uploads failed")
        if report.failures:
            first = report.failures[0]
            raise DataError(
                f"{len(report.failures)} frame(s) failed; first: frame {first.frame} "
                f"({first.stage}): {first.why}"
            )

    # -- the end -----------------------------------------------------------------------------

    def _finish(self) -> None:
        report = self.report
        if self.inputs is not None:  # transfers stop first: nothing may outlive the deadline
            self.inputs.close()
            report.hits, report.misses = len(self.inputs.hits), len(self.inputs.fetched)
            report.bytes_fetched = sum(i.size for i in self.inputs.fetched)
            report.bytes_from_cache = sum(i.size for i in self.inputs.hits)
            report.timings["fetch_s"] = self.inputs.fetch_seconds
        if self._inner is not None:
            _merge(report, self._inner)
        self._watcher.close()
        if self._mount is not None:
            self._mount.stop()
        if self._agent_ahead is not None:  # a run that ended before its services started
            with contextlib.suppress(Exception):
                self.agent = self._agent_ahead.result(timeout=5)
        if self.agent is not None:
            self.agent.stop()
        if self.run_dir is not None and not self.options.keep_workspace:
            # Nothing links or reads inputs any more: they go while the rest is flushed.
            self.cache.clear_run_inputs(self.run_dir)
        if self.uploader is not None:
            self.uploader.close(wait=not self.stop.is_set())
        if self._outputs_watch is not None:  # a run that ended before its uploader started
            self._outputs_watch.stop()
        if self._claims is not None:  # after the markers and the last upload: a waiting run
            self._claims.release()  # looks for the markers first; meanwhile the rest is put away
        record_run(self.cache.root, self.job.display_name, report)
        if self._logs is not None:  # bounded when stopping: what is left of the flush budget
            left = self.stopping.remaining(self.options.flush_budget_s) - 1.0  # 1 s: the report
            if self.stop.is_set():
                self._logs.close(timeout=max(1.0, left))
            else:  # the report goes with the logs' last copy
                shipped = {"report.json": json.dumps(report.to_json()).encode()}
                self._logs.close(timeout=30.0, extra=shipped)
        # The leftovers' sweep is over before the run ends (a stopping run waits within its
        # flush budget).
        stopping = self.stop.is_set()
        self.cache.leftovers_cleaned(
            self.stopping.remaining(self.options.flush_budget_s) if stopping else None
        )
        if self.run_dir is not None:
            report.workspace = str(self.run_dir)
            self.cache.end_run_dir(self.run_dir, keep=self.options.keep_workspace)
        if self._claims is not None:
            self._claims.released(
                self.stopping.remaining(self.options.flush_budget_s) if stopping else 10.0
            )
        if self.options.report_path is not None:
            report.write(self.options.report_path)


WAITING_NOTE_S = 60.0  # how often a run waiting for another's frames says so


def _merge(report: Report, inner: Report) -> None:
    """``inner`` (a run of this one's, for frames another run stopped holding) into ``report``."""
    report.done = sorted({*report.done, *inner.done})
    report.skipped_already_done = sorted({*report.skipped_already_done,
                                          *inner.skipped_already_done})  # fmt: skip
    report.failures += inner.failures
    report.missing += inner.missing
    report.unresolved += inner.unresolved
    report.output_urls += inner.output_urls
    report.conflicts += inner.conflicts
    for name in ("deps_count", "bytes_needed", "hits", "misses", "bytes_fetched",
                 "bytes_from_cache", "output_bytes"):  # fmt: skip
        setattr(report, name, getattr(report, name) + getattr(inner, name))
    for name, seconds in inner.timings.items():
        if name != "wall_s":
            report.timings[name] = report.timings.get(name, 0.0) + seconds


def _by_holder(held: dict[int, Holder]) -> dict[str, tuple[Holder, list[int]]]:
    grouped: dict[str, tuple[Holder, list[int]]] = {}
    for frame in sorted(held):
        grouped.setdefault(held[frame].run, (held[frame], []))[1].append(frame)
    return grouped


def _them(frames: list[int]) -> str:
    return "them" if len(frames) > 1 else "it"


def _frames_text(frames: list[int]) -> str:
    """``frame 3`` or ``frames 3-4``."""
    from jitrender.sequences import format_frames

    return f"frame{'s' if len(frames) > 1 else ''} {format_frames(frames)}"


def _job_dir(job: Job) -> Path | None:
    return job.source.parent if job.source is not None else None


def resolve_job(job: Job, frames: list[int], options: RunOptions) -> Dependencies:
    """:func:`~jitrender.plan.resolve_scene` for ``job``'s scene, ``deps:``, path mapping
    and cache."""
    path_map = job_path_map(job, options)  # first: the scene's URL goes through it
    return resolve_job_scene(job, frames, job_cache(job, options), path_map, options.progress)


def run_job(job: Job, options: RunOptions) -> Report:
    """Run ``job`` on this node; never raises for the job's own problems: the report's
    ``status`` and ``exit_code`` say what happened."""
    return JobRun(job, options).execute()
