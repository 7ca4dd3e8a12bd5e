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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from jitrender.agent import Agent
from jitrender.aio import AsyncFetcher
from jitrender.cache import KEPT_FILE, Cache, CacheResult, default_cache_dir, parse_size
from jitrender.deps import Dependencies, Dependency
from jitrender.engines import StageCall, Workspace, engine_named
from jitrender.errors import (
    ConfigError,
    DataError,
    ExitCode,
    JitrenderError,
    MissingDependencyError,
    Preempted,
    TransientError,
)
from jitrender.health import FrameOutcome, NodeHealth
from jitrender.job import Job, StageSpec
from jitrender.joblogs import LogShipper, logs_prefix, run_folder
from jitrender.markers import MarkerWriter, marker_prefix, marker_url
from jitrender.outputs import (
    OutputPatterns,
    Uploader,
    UploadRecord,
    frames_in_bucket,
    outputs_of_other_jobs,
)
from jitrender.paths import PathMap, workspace_relpath
from jitrender.preemption import PreemptionWatcher
from jitrender.progress import Progress, QuietProgress
from jitrender.report import FrameFailure, Report
from jitrender.requeue import requeue_url, requeued_frames
from jitrender.resolve import resolver_for
from jitrender.resolve.base import ResolveContext
from jitrender.resolve.manifest import entry_dependencies
from jitrender.stagemarks import stages_done, write_stage_marker
from jitrender.stages import StageOutcome, run_invocation
from jitrender.storage import (
    JOB_METADATA_KEY,
    ObjectInfo,
    RetryPolicy,
    Store,
    Stores,
    classify,
    with_retries,
)
from jitrender.transfer import InflightBudget, listing_ranges

# How long a stopping run may spend flushing uploads and markers (GKE Spot gives ~15 s).
FLUSH_BUDGET_S = 8.0


@dataclass
class RunOptions:
    frames: list[int] | None = None  # overrides the job's frames (already split by task)
    cache_dir: Path | None = None
    cache_max_bytes: int | None = None
    report_path: Path | None = None
    overwrite: bool = False
    rerender: bool = False  # render the frames again, replacing their outputs and markers
    keep_workspace: bool = False
    fetch_workers: int = 16
    # Bytes of cold downloads in flight at once: keeps the next frame's inputs first in line.
    prefetch_bytes: int = 16 << 20
    upload_workers: int = 4
    extra_path_map: PathMap | None = None
    progress: Progress = field(default_factory=QuietProgress)
    task: dict[str, Any] | None = None
    mount: Path | None = None  # a lazy read-only FUSE view of the mapped prefixes


def nuke_render_nodes(job: Job) -> tuple[str, ...]:
    """The Write nodes the job's ``nuke`` stages execute (``args.write``), so the resolver lists
    only what those render; empty when a rendering stage names none (Nuke then renders every
    enabled Write)."""
    names: list[str] = []
    for stage in job.stages:
        if stage.engine != "nuke" or stage.args.get("mode", "render") != "render":
            continue
        wanted = stage.args.get("write")
        if not wanted:
            return ()
        names.extend([wanted] if isinstance(wanted, str) else [str(w) for w in wanted])
    return tuple(dict.fromkeys(names))


class _StopSignal:
    """SIGTERM/SIGINT -> a stop event; a second signal exits at once with 75."""

    def __init__(self, stop: threading.Event, progress: Progress) -> None:
        self.stop = stop
        self.progress = progress
        self.previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            os._exit(int(ExitCode.TEMPFAIL))
        self.progress.event("warning", message=f"got {signal.Signals(signum).name}: stopping")
        self.stop.set()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
            self.previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)


class JobRun:
    """Executes one job on this node. Use :func:`run_job`."""

    def __init__(self, job: Job, options: RunOptions) -> None:
        self.job = job
        self.options = options
        self.progress = options.progress
        self.stop = threading.Event()
        self.stop_reason: str | None = None  # why ``stop`` was set, when not by a signal
        self._watcher = PreemptionWatcher(self.stop, self._on_preemption_notice)
        self.stores = Stores()
        self.retry = RetryPolicy(attempts=job.retries.storage)
        self.job_hash = job.job_hash()
        self.report = Report(job=job.display_name, job_hash=self.job_hash, task=options.task)
        self.patterns = OutputPatterns(job.outputs.files)
        if options.extra_path_map is not None:  # the scene and outputs URLs go through it too
            job.use_path_map(options.extra_path_map)
        self.path_map = job.path_mapping()
        cache_dir = options.cache_dir or (
            Path(job.cache.dir).expanduser() if job.cache.dir else default_cache_dir()
        )
        max_bytes = options.cache_max_bytes
        if max_bytes is None:
            max_bytes = parse_size(job.cache.max_size)
        self.cache = Cache(cache_dir, max_bytes)
        self._lock = threading.Lock()
        self._stages_done: set[int] = set()
        self._marked: set[int] = set()
        self._redo: set[int] = set()  # frames rendered again, replacing their outputs
        self._requests: set[int] = set()  # of those, frames `jitrender requeue` asked for
        self._stage_skip: dict[str, dict[int, list[ObjectInfo]]] = {}  # done in the bucket
        self._stage_pending: set[tuple[str, int]] = set()  # finished, marker not yet written
        self._known: dict[str, ObjectInfo] = {}
        self._dep_futures: dict[str, Future[Path]] = {}
        self._deps: list[Dependency] = []
        self._hits: list[ObjectInfo] = []
        self._fetched: list[ObjectInfo] = []
        self._fetch_pool = ThreadPoolExecutor(options.fetch_workers, thread_name_prefix="fetch")
        self._aio = AsyncFetcher(self.cache, self.retry, self._fetch_pool, self.stop.is_set)
        self._fetch_started = time.monotonic()
        self._fetch_pending = 0
        self._budget = InflightBudget(options.prefetch_bytes)
        self.workspace: Workspace | None = None
        self.uploader: Uploader | None = None
        self._logs: LogShipper | None = None
        self.agent: Agent | None = None
        self._mount: Any = None
        self._resolve_root: Path | None = None  # where resolvers see files (see _fetch_local)
        self._markers = MarkerWriter(job, self._store(job.outputs_url), self.retry)

    @property
    def _job_dir(self) -> Path | None:
        return self.job.source.parent if self.job.source is not None else None

    # -- storage helpers -----------------------------------------------------------------

    def _store(self, url: str) -> Store:
        return self.stores.for_url(url)

    def _call(self, url: str, call: Callable[[Store], Any]) -> Any:
        store = self._store(url)
        return with_retries(lambda: call(store), url, self.retry)

    def _stat(self, url: str) -> ObjectInfo | None:
        known = self._known.get(url)
        if known is not None:
            return known
        info: ObjectInfo | None = self._call(url, lambda s: s.stat(url))
        if info is not None:
            self._known[url] = info
        return info

    def _list_range(self, prefix: str, first: str, last: str) -> list[ObjectInfo]:
        infos: list[ObjectInfo] = self._call(prefix, lambda s: s.list_range(prefix, first, last))
        for info in infos:
            self._known[info.url] = info
        return infos

    def _delete(self, url: str) -> None:
        def delete(store: Store) -> None:
            try:
                store.delete(url)
            except Exception as exc:  # already gone is what was wanted
                if classify(exc) != "missing":
                    raise

        self._call(url, delete)

    def _list(self, prefix: str, recursive: bool = True) -> list[ObjectInfo]:
        infos: list[ObjectInfo] = self._call(prefix, lambda s: s.list(prefix, recursive=recursive))
        for info in infos:
            self._known[info.url] = info
        return infos

    # -- the run -------------------------------------------------------------------------

    def execute(self) -> Report:
        started = time.monotonic()
        report = self.report
        try:
            with _StopSignal(self.stop, self.progress).installed():
                self._execute()
        except Preempted as exc:
            reason = f" ({self.stop_reason})" if self.stop_reason else ""
            report.status, report.exit_code, report.error = "preempted", 75, exc.message + reason
        except TransientError as exc:
            report.status, report.exit_code, report.error = "preempted", 75, exc.message
        except JitrenderError as exc:
            report.status, report.exit_code, report.error = (
                "failed",
                int(exc.exit_code),
                exc.message,
            )
        except Exception as exc:  # a bug, not the user's mistake: keep the traceback, still report
            traceback.print_exc()
            report.status, report.exit_code = "failed", int(ExitCode.SOFTWARE)
            report.error = f"internal error: {type(exc).__name__}: {exc}"
        finally:
            self._aio.close()  # before the pool it hands work to
            self._fetch_pool.shutdown(wait=False, cancel_futures=True)
            report.timings["wall_s"] = time.monotonic() - started
            self._finish()
        return report

    def _record_health(self) -> None:
        """Frames rendered or failed by their stages count towards the node's health; upload
        conflicts and missing inputs are the job's fault, not the node's."""
        name, job_hash = self.job.display_name, self.job_hash
        outcomes = [FrameOutcome(job_hash, name, f, True) for f in self.report.done]
        outcomes += [
            FrameOutcome(job_hash, name, f.frame, False, f"{f.stage}: {f.why}")
            for f in self.report.failures
            if f.stage != "upload"
        ]
        with contextlib.suppress(OSError):
            NodeHealth(self.cache.root).record(outcomes)

    def _on_preemption_notice(self, reason: str) -> None:
        self.stop_reason = reason
        self.progress.event("warning", message=f"{reason}: stopping")

    def _finish(self) -> None:
        report = self.report
        self._watcher.close()
        self._stop_agent()
        if self.uploader is not None:
            self.uploader.close(wait=not self.stop.is_set())
        with contextlib.suppress(JitrenderError, OSError):
            self.cache.record_run(self._hits, self._fetched)
        report.hits, report.misses = len(self._hits), len(self._fetched)
        report.bytes_fetched = sum(i.size for i in self._fetched)
        report.bytes_from_cache = sum(i.size for i in self._hits)
        self._record_health()
        if self._logs is not None:  # bounded when stopping: the deadline comes first
            self._logs.close(timeout=1.0 if self.stop.is_set() else 30.0)
            if not self.stop.is_set():
                self._logs.ship_bytes("report.json", json.dumps(report.to_json()).encode())
        if self.workspace is not None:
            report.workspace = str(self.workspace.root)
            if not self.options.keep_workspace:
                shutil.rmtree(self.workspace.root, ignore_errors=True)
            else:  # later runs on the node leave it alone; `cache prune` removes it
                with contextlib.suppress(OSError):
                    (self.workspace.root / KEPT_FILE).touch()
        if self.options.report_path is not None:
            report.write(self.options.report_path)

    def _execute(self) -> None:
        job, report = self.job, self.report
        frames = self.options.frames if self.options.frames is not None else job.frame_list()
        report.requested = list(frames)
        self._watcher.start()
        if not frames:
            self.progress.event("phase", message="no frames for this task: nothing to do")
            return
        if job.scene_url is None and not job.deps and job.resolver != "auto":
            raise ConfigError(f"{job.source}: resolver {job.resolver!r} needs a 'scene'")

        todo = self._resume(frames)
        if not todo:
            self.progress.event("phase", message="every requested frame is already done")
            return

        # A killed run's partial downloads and workspace (whose links pin cache entries) go now.
        with contextlib.suppress(OSError):
            self.cache.clean_leftovers()
        run_dir, _lock_fd = self.cache.new_run_dir(f"{job.display_name}-{self.job_hash[:8]}")
        scene_url = job.scene_url
        planned_scene = run_dir / "inputs" / workspace_relpath(scene_url) if scene_url else None
        self._preflight_stages(Workspace(run_dir, planned_scene, self._job_dir), todo)
        t0 = time.monotonic()
        resolved, scene_local = self.resolve(todo, run_dir)
        deps = resolved.deps
        missing = resolved.missing
        if missing:
            names = ", ".join(f"{d.url} ({d.source})" for d in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"{len(missing)} dependencies missing from storage: {names}{more}")
        report.timings["resolve_s"] = time.monotonic() - t0
        self.workspace = Workspace(run_dir, scene_local, self._job_dir)
        self.workspace.create()
        self._start_log_shipper(todo)
        phase_started = time.monotonic()
        self._start_fetches(deps)
        self._start_agent(deps)
        self._start_uploader()
        self._restore_stage_outputs()
        self.progress.totals(report.deps_count, report.bytes_needed, len(todo))
        try:
            self._run_stages(todo)
        except Preempted:
            self._settle(todo)  # flush what finished (bounded), mark it, then re-raise
            raise
        # From the first fetch to the last stage's end: what overlapping fetch and render saves.
        report.timings["fetch_render_s"] = time.monotonic() - phase_started
        self._settle(todo)

    # -- 1. resume -----------------------------------------------------------------------

    def _resume(self, frames: list[int]) -> list[int]:
        """Frames still to render. One listing of the outputs prefix finds markers and outputs."""
        prefix = marker_prefix(self.job)
        existing = self._list(self.job.outputs_url + "/")
        # Frames to render again whatever the bucket says (--rerender, `jitrender requeue`):
        # their done markers go first, their outputs are replaced generation-matched.
        listed = {i.url for i in existing}
        self._requests = requeued_frames(existing, prefix) & set(frames)
        self._redo = set(frames) if self.options.rerender else set(self._requests)
        for url in (marker_url(self.job, f) for f in sorted(self._redo)):
            if url in listed:
                self._delete(url)
        if self.options.rerender:
            return list(frames)
        rest = [f for f in frames if f not in self._redo]
        in_bucket = frames_in_bucket(existing, self.job.outputs_url, prefix, self.patterns, rest)
        marked = set(in_bucket.done)
        for frame, stale in in_bucket.stale.items():  # an output is gone: render it again
            self.progress.event("warning", message=f"frame {frame}: outputs missing; re-rendering")
            self._delete(stale.url)
        by_url = {i.url: i for i in existing}
        completed_unmarked = []
        for frame in rest:
            if frame in marked or not self.patterns.per_frame:
                continue
            urls = [f"{self.job.outputs_url}/{rel}" for rel in self.patterns.expected_for(frame)]
            if all(u in by_url for u in urls) and all(self._ours(by_url[u]) for u in urls):
                completed_unmarked.append(frame)
        for frame in completed_unmarked:
            outputs = {u: by_url[u].crc32c for u in self._expected_urls(frame)}
            self._write_marker(frame, outputs, resumed=True)
        skipped = sorted(marked | set(completed_unmarked))
        self.report.skipped_already_done = skipped
        for frame in skipped:
            self.progress.event("frame", frame=frame, status="skipped")
        todo = [f for f in frames if f not in set(skipped)]
        if todo and not self.options.overwrite:
            self._refuse_other_versions(existing, todo)
        resumable = [f for f in todo if f not in self._redo]
        self._stage_skip = stages_done(existing, prefix, self.job.outputs_url, resumable)
        return todo

    def _refuse_other_versions(self, existing: list[ObjectInfo], frames: list[int]) -> None:
        """Before anything is fetched or rendered: outputs an earlier version of this job
        wrote are in the way, so this run could only end in conflicts."""
        outputs_url = self.job.outputs_url

        def full(info: ObjectInfo) -> ObjectInfo | None:
            found: ObjectInfo | None = self._call(info.url, lambda s: s.stat(info.url))
            return found

        others = outputs_of_other_jobs(
            existing, outputs_url, self.patterns, frames, self.job_hash, full
        )
        if others:
            raise DataError(
                f"{outputs_url}/: {len(others)} outputs of another version of this job are in "
                f"the way (first: {others[0]}); the job changed in a way that changes its "
                "outputs: rerun with --overwrite to replace them, or give the job a new "
                "outputs.to"
            )

    def _ours(self, info: ObjectInfo) -> bool:
        if info.metadata.get(JOB_METADATA_KEY) == self.job_hash:
            return True
        if info.metadata:
            return False
        full = self._call(info.url, lambda s: s.stat(info.url))  # listings may omit metadata
        return full is not None and full.metadata.get(JOB_METADATA_KEY) == self.job_hash

    def _expected_urls(self, frame: int) -> list[str]:
        return [f"{self.job.outputs_url}/{rel}" for rel in self.patterns.expected_for(frame)]

    def _write_marker(
        self, frame: int, outputs: dict[str, str | None], *, resumed: bool = False
    ) -> None:
        self._markers.write(frame, outputs, resumed=resumed)
        if frame in self._requests:  # done again: the requeue request is served
            self._delete(requeue_url(marker_prefix(self.job), frame))
        with self._lock:
            self._marked.add(frame)

    # -- 2. resolve and fetch ------------------------------------------------------------

    def _fetch_local(self, url: str) -> Path:
        """A local copy of ``url`` for a resolver (linked libraries, precomps, sublayers),
        under its own name at its bucket-relative place below the resolve folder: formats
        are told by extension (Sdf) and derived paths come from the file's name (Blender's
        ``//blendcache_<name>/``), so a cache object's hash name would not do."""
        assert self._resolve_root is not None, "resolve() sets the resolve folder"
        info = self._stat(url)
        if info is None:
            raise MissingDependencyError(url)
        result = with_retries(
            lambda: self.cache.fetch(info, self._store(url), record=False), url, self.retry
        )
        (self._fetched if result.fetched else self._hits).append(info)
        dest = self._resolve_root / workspace_relpath(url)
        if not dest.exists():
            try:
                self.cache.link_into(result.path, dest)
            except FileNotFoundError:  # evicted between fetch and link: fetch again
                again = self.cache.fetch(info, self._store(url), record=False)
                self.cache.link_into(again.path, dest)
        return dest

    def resolve(
        self, frames: list[int], run_dir: Path | None = None
    ) -> tuple[Dependencies, Path | None]:
        """The job's dependencies for ``frames``, each stat'ed (size, exists). With ``run_dir``
        the scene is also linked into that workspace."""
        job = self.job
        scene_url = job.scene_url
        found = Dependencies()
        scene_local: Path | None = None
        base_url = scene_url if scene_url is not None else job.base_url + "/job"
        scene_file = Path(os.devnull)
        if run_dir is not None:
            self._resolve_root = run_dir / "inputs"
        if scene_url is not None:
            info = self._stat(scene_url)
            if info is None:
                raise ConfigError(f"{job.source}: scene: {scene_url} does not exist")
            scene_file = self._fetch_local(scene_url)
            self.progress.event("fetched", url=scene_url, size=info.size)  # counted as a file
            if run_dir is not None:
                scene_local = scene_file
        ctx = ResolveContext(
            scene_url=base_url,
            scene_file=scene_file,
            frames=tuple(frames),
            path_map=self.path_map,
            list_prefix=self._list,
            fetch=self._fetch_local,
            env=dict(job.env),
            render_nodes=nuke_render_nodes(job),
        )
        if scene_url is not None:
            name, resolver = resolver_for(job.resolver, scene_url)
            self.progress.event("phase", message=f"resolving {scene_url} with '{name}'")
            found.extend(resolver(ctx))
        for index, entry in enumerate(job.deps):
            source = f"job deps[{index}]"
            if isinstance(entry, str):
                found.extend(entry_dependencies(ctx, entry, source))
            else:
                written = entry.path if entry.path is not None else (entry.prefix or "")
                if entry.prefix is not None and not written.endswith("/"):
                    written += "/"
                found.extend(entry_dependencies(ctx, written, source, entry.frames))
        merged = found.merged()
        deps = [d for d in merged.deps if d.url != scene_url]
        deps = self._stat_all(deps)
        self.report.unresolved = [u.to_json() for u in merged.unresolved]
        for item in merged.unresolved:
            self.progress.event("warning", message=f"unresolved {item.source}: {item.why}")
        self.report.missing = [d.to_json() for d in deps if d.exists is False]
        scene_bytes = self._known[scene_url].size if scene_url is not None else 0
        self.report.deps_count = len(deps) + (1 if scene_url is not None else 0)
        self.report.bytes_needed = sum(d.size or 0 for d in deps) + scene_bytes
        self._deps = deps
        return Dependencies(deps, merged.unresolved), scene_local

    def _stat_all(self, deps: list[Dependency]) -> list[Dependency]:
        unknown = [d.url for d in deps if d.url not in self._known]
        if unknown:
            with ThreadPoolExecutor(self.options.fetch_workers) as pool:
                # One listing per busy folder gives size/generation/crc32c of many deps at once.
                list(pool.map(lambda r: self._list_range(*r), listing_ranges(unknown)))
                unknown = [url for url in unknown if url not in self._known]
                list(pool.map(self._stat, unknown))
        out = []
        for dep in deps:
            info = self._known.get(dep.url)
            out.append(
                Dependency(
                    dep.path,
                    dep.url,
                    dep.frames,
                    dep.source,
                    info.size if info else None,
                    info is not None,
                )
            )
        return out

    def _start_fetches(self, deps: list[Dependency]) -> None:
        """Fetch in the order frames need them; stages wait only for their own frame's deps.
        Small objects go to the asyncio fetcher, large ones (and stores without a plain HTTP
        GET) to the thread pool."""
        order = sorted(deps, key=lambda d: (min(d.frames) if d.frames else -(2**31), d.url))
        self._fetch_started = time.monotonic()
        self._fetch_pending = len(order)
        for dep in order:
            info = self._known[dep.url]
            store = self._store(dep.url)
            if AsyncFetcher.eligible(info, store):
                self._dep_futures[dep.url] = self._fetch_small(dep, info, store)
            else:
                self._dep_futures[dep.url] = self._fetch_pool.submit(self._fetch_dep, dep)

    def _fetch_dep(self, dep: Dependency) -> Path:
        """The thread path: in-frame-order byte budget, retries, cache, link."""
        info = self._known[dep.url]
        store = self._store(dep.url)
        cold = info.size if self.cache.lookup(info) is None else 0
        if cold and not self._budget.acquire(cold, self.stop.is_set):
            raise Preempted("stopped while waiting to fetch")
        try:
            result = with_retries(
                lambda: self.cache.fetch(info, store, record=False), dep.url, self.retry
            )
        finally:
            if cold:
                self._budget.release(cold)
        try:
            return self._link_dep(dep, info, result)
        except FileNotFoundError:  # evicted between fetch and link: fetch again
            result = self.cache.fetch(info, store, record=False)
            return self._link_dep(dep, info, result)

    def _fetch_small(self, dep: Dependency, info: ObjectInfo, store: Store) -> Future[Path]:
        """The asyncio path; linking runs on the loop's thread, anything slow on the pool."""
        linked: Future[Path] = Future()

        def done(fetched: Future[CacheResult]) -> None:
            try:
                linked.set_result(self._link_dep(dep, info, fetched.result()))
            except FileNotFoundError:  # evicted before it was linked: the thread path again
                again = self._fetch_pool.submit(self._fetch_dep, dep)
                again.add_done_callback(lambda f: _copy_future(f, linked))
            except BaseException as exc:
                linked.set_exception(exc)

        self._aio.fetch(info, store).add_done_callback(done)
        return linked

    def _link_dep(self, dep: Dependency, info: ObjectInfo, result: CacheResult) -> Path:
        assert self.workspace is not None
        dest = self.workspace.inputs / workspace_relpath(dep.url)
        self.cache.link_into(result.path, dest)
        with self._lock:
            (self._fetched if result.fetched else self._hits).append(info)
            self._fetch_pending -= 1
            if self._fetch_pending == 0:
                self.report.timings["fetch_s"] = time.monotonic() - self._fetch_started
        self.progress.event("fetched", url=dep.url, size=info.size, cached=not result.fetched)
        return dest

    def _wait_for_deps(self, frames: tuple[int, ...]) -> None:
        wanted = set(frames)
        for dep in self._deps:
            if dep.frames is not None and not wanted.intersection(dep.frames):
                continue
            future = self._dep_futures[dep.url]
            while True:
                if self.stop.is_set():
                    raise Preempted("stopped while waiting for dependencies")
                try:
                    future.result(timeout=0.2)
                    break
                except TimeoutError:
                    continue

    def _start_agent(self, deps: list[Dependency]) -> None:
        """The socket hooks ask for files on (and, with ``--mount``, the lazy FUSE view)."""
        assert self.workspace is not None
        ws = self.workspace
        self.agent = Agent(
            ws.inputs,
            self.path_map,
            self._agent_fetch,
            deps=deps,
            list_prefix=self._list,
            workspace=ws.root,
            log_path=ws.root / "logs" / "agent.log",
        ).start()
        if self.options.mount is not None:
            from jitrender.mount import MountUnavailable, start_mount

            try:
                self._mount = start_mount(self.options.mount, self.path_map, self.agent)
                self.progress.event("phase", message=f"lazy mount at {self.options.mount}")
            except MountUnavailable as exc:
                self.progress.event(
                    "warning",
                    message=f"--mount {self.options.mount}: {exc}; falling back to prefetching "
                    "the resolved dependencies",
                )

    def _agent_fetch(self, url: str) -> Path:
        """A hook's request: the resolved dependency's own fetch, else stat, fetch and link."""
        assert self.workspace is not None
        future = self._dep_futures.get(url)
        if future is not None:
            return future.result()
        info = self._stat(url)
        if info is None:
            raise MissingDependencyError(url, "a hook")
        store = self._store(url)
        result = with_retries(lambda: self.cache.fetch(info, store, record=False), url, self.retry)
        dest = self.workspace.inputs / workspace_relpath(url)
        self.cache.link_into(result.path, dest)
        with self._lock:
            (self._fetched if result.fetched else self._hits).append(info)
        return dest

    def _stop_agent(self) -> None:
        if self._mount is not None:
            self._mount.stop()
            self._mount = None
        if self.agent is not None:
            self.agent.stop()
            self.agent = None

    # -- 3. stages and uploads ---------------------------------------------------------------

    def _start_log_shipper(self, frames: list[int]) -> None:
        """Stage logs go to the bucket while they are written (see :mod:`jitrender.joblogs`)."""
        assert self.workspace is not None
        url = logs_prefix(marker_prefix(self.job)) + run_folder(self.options.task, frames)
        self._logs = LogShipper(
            self.workspace.root / "logs",
            url,
            self._store(url),
            self.retry,
            warn=lambda message: self.progress.event("warning", message=message),
        ).start()
        self.progress.event("phase", message=f"logs at {url}")

    def _start_uploader(self) -> None:
        assert self.workspace is not None
        url = self.job.outputs_url
        self.uploader = Uploader(
            self.workspace.outputs,
            url,
            self._store(url),
            self.patterns,
            self.job_hash,
            overwrite=self.options.overwrite or self.options.rerender,
            overwrite_frames=self._redo,
            retry=self.retry,
            on_uploaded=self._on_uploaded,
            workers=self.options.upload_workers,
        )
        self.uploader.on_stage_frame = self._on_stage_frame
        self.uploader.start()

    def _restore_stage_outputs(self) -> None:
        """Outputs of stages an earlier attempt finished come back from the bucket, so the
        stages after them work from exactly what is stored (see :mod:`jitrender.stagemarks`)."""
        assert self.uploader is not None and self.workspace is not None
        for stage, frames in self._stage_skip.items():
            for frame, stored in frames.items():
                for info in stored:
                    self._restore_output(info, stage, frame)
                self.progress.event(
                    "stage_skipped", stage=stage, frame=frame, reason="done in the bucket"
                )

    def _restore_output(self, info: ObjectInfo, stage: str, frame: int) -> None:
        assert self.uploader is not None and self.workspace is not None
        relpath = info.url[len(self.job.outputs_url) + 1 :]
        dest = self.workspace.outputs / relpath
        dest.parent.mkdir(parents=True, exist_ok=True)
        temp = dest.with_name(f".{dest.name}.restored.part")
        store = self._store(info.url)
        with open(temp, "wb") as sink:
            with_retries(lambda: store.download(info, sink), info.url, self.retry)
        self.uploader.adopt(relpath, info, stage, frame, temp)  # before its rename is seen
        os.replace(temp, dest)

    def _on_stage_frame(self, stage: str, frame: int) -> None:
        """The uploader says ``stage`` finished ``frame``: mark it once its outputs are in."""
        if stage == self.job.stages[-1].name:
            return  # the frame's own marker covers the last stage
        with self._lock:
            self._stage_pending.add((stage, frame))
        self._maybe_mark_stage(stage, frame)

    def _maybe_mark_stage(self, stage: str, frame: int) -> None:
        assert self.uploader is not None
        relpaths = self.uploader.stage_relpaths(stage, frame)
        if not relpaths or not all(self.uploader.is_uploaded(r) for r in relpaths):
            return
        with self._lock:
            if (stage, frame) not in self._stage_pending:
                return
            self._stage_pending.discard((stage, frame))
        url = self.job.outputs_url
        try:
            write_stage_marker(
                self._store(url), self.retry, marker_prefix(self.job), self.job_hash,
                stage, frame, relpaths,
            )  # fmt: skip
        except JitrenderError as exc:
            self.progress.event("warning", message=f"{stage} of frame {frame}: not marked: {exc}")

    def _on_uploaded(self, record: UploadRecord) -> None:
        if record.outcome in ("created", "identical", "kept_previous", "overwritten"):
            self.progress.event("uploaded", url=record.url, outcome=record.outcome)
        else:
            self.progress.event("error", message=f"{record.url}: upload {record.outcome}")
        frame = self.patterns.frame_of(record.relpath)
        if frame is not None:
            self._maybe_mark(frame)
        with self._lock:
            pending = sorted(self._stage_pending)
        for stage, pending_frame in pending:
            self._maybe_mark_stage(stage, pending_frame)

    def _maybe_mark(self, frame: int) -> None:
        """Write the frame's marker once its stages are done and every output is uploaded."""
        assert self.uploader is not None
        with self._lock:
            if frame in self._marked or frame not in self._stages_done:
                return
        expected = sorted(
            {*self.patterns.expected_for(frame), *self.uploader.frame_relpaths(frame)}
        )
        if not all(self.uploader.is_uploaded(rel) for rel in expected):
            return
        outputs = {
            self.uploader.records[rel].url: self.uploader.records[rel].crc32c for rel in expected
        }
        try:
            self._write_marker(frame, outputs)
        except JitrenderError as exc:
            self.progress.event("error", message=f"frame {frame}: marker not written: {exc}")
            return
        self.progress.event("frame", frame=frame, status="done")

    def _stage_env(self, call: StageCall) -> dict[str, str]:
        assert self.workspace is not None
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
                "JITRENDER_JOB_HASH": self.job_hash,
                "JITRENDER_JOB_DIR": str(ws.job_dir or ""),
            }
        )
        if self.agent is not None:
            env.update(self.agent.env())
        return env

    def _invoke(self, spec: StageSpec, frames: tuple[int, ...], attempt: int) -> StageOutcome:
        assert self.workspace is not None and self.uploader is not None
        call = StageCall(
            spec.name,
            frames,
            self.workspace,
            spec.args,
            spec.command,
            {k: v for k, v in spec.env.items()},
        )
        invocation = engine_named(spec.engine or "command")(call)
        label = f"{frames[0]}" if len(frames) == 1 else f"{frames[0]}-{frames[-1]}"
        log = self.workspace.root / "logs" / f"{spec.name}.{label}.{attempt}.log"
        self.progress.event("stage", stage=spec.name, frames=label, attempt=attempt)
        uploader = self.uploader
        uploader.stage_started(frames, spec.name)
        outcome = run_invocation(
            invocation,
            log,
            env=self._stage_env(call),
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
        # Time in stage processes; fetching overlaps it, so it is not wall time minus fetch.
        self.report.timings["render_s"] += outcome.seconds
        if outcome.ok:
            uploader.stage_succeeded()
        else:
            uploader.stage_failed()
        return outcome

    def _preflight_stages(self, workspace: Workspace, frames: list[int]) -> None:
        """Every check ``validate`` makes too (templates, engine args, output patterns,
        extras), before fetching anything: a configuration error (78) costs no transfer."""
        from jitrender.preflight import check_job

        check_job(self.job, frames, workspace)

    def _groups(self) -> list[tuple[str, list[StageSpec]]]:
        """Consecutive per-frame stages run together frame by frame; chunk stages alone."""
        groups: list[tuple[str, list[StageSpec]]] = []
        for spec in self.job.stages:
            if spec.per == "frame" and groups and groups[-1][0] == "frame":
                groups[-1][1].append(spec)
            else:
                groups.append((spec.per, [spec]))
        return groups

    def _run_stages(self, frames: list[int]) -> None:
        alive = list(frames)
        failures: dict[int, FrameFailure] = {}
        groups = self._groups()
        for index, (per, specs) in enumerate(groups):
            last_group = index == len(groups) - 1
            if per == "frame":
                for frame in list(alive):
                    self._check_stop()
                    failure = self._run_frame(frame, specs, last_group)
                    if failure is not None:
                        failures[frame] = failure
                        alive.remove(frame)
                        self.progress.event("frame", frame=frame, status="failed")
            else:
                for frame, failure in self._run_chunk(alive, specs[0], last_group).items():
                    failures[frame] = failure
                    alive.remove(frame)
                    self.progress.event("frame", frame=frame, status="failed")
        self.report.failures = sorted(failures.values(), key=lambda f: f.frame)
        self.report.failed = sorted(failures)

    def _check_stop(self) -> None:
        if self.stop.is_set():
            raise Preempted("stopped by signal")

    def _run_frame(self, frame: int, specs: list[StageSpec], last: bool) -> FrameFailure | None:
        self._wait_for_deps((frame,))
        failure: FrameFailure | None = None
        # One attempt per stage and frame: a stage done in the bucket or earlier in this run
        # is not run again when a later stage of the frame is retried.
        finished = {spec.name for spec in specs if frame in self._stage_skip.get(spec.name, {})}
        for attempt in range(self.job.retries.frame + 1):
            failure = None
            for spec in specs:
                if spec.name in finished:
                    continue
                outcome = self._invoke(spec, (frame,), attempt)
                if outcome.stopped:
                    raise Preempted(f"stopped during stage {spec.name} of frame {frame}")
                if not outcome.ok:
                    failure = FrameFailure(frame, spec.name, outcome.why(), list(outcome.tail))
                    break
                finished.add(spec.name)
            if failure is None and last:
                failure = self._check_outputs(frame, specs[-1].name)
            if failure is None:
                if last:
                    self._frame_stages_done(frame)
                return None
            self.progress.event("warning", message=f"frame {frame}: {failure.why}")
            self._check_stop()
        return failure

    def _run_chunk(self, frames: list[int], spec: StageSpec, last: bool) -> dict[int, FrameFailure]:
        done_before = self._stage_skip.get(spec.name, {})  # frames this stage did earlier
        remaining = [f for f in frames if f not in done_before]
        for frame in frames:
            if frame in done_before and last and self._check_outputs(frame, spec.name) is None:
                self._frame_stages_done(frame)
        failures: dict[int, FrameFailure] = {}
        for attempt in range(self.job.retries.frame + 1):
            if not remaining:
                break
            self._wait_for_deps(tuple(remaining))
            outcome = self._invoke(spec, tuple(remaining), attempt)
            if outcome.stopped:
                if last:
                    for frame in remaining:
                        if self._check_outputs(frame, spec.name) is None:
                            self._frame_stages_done(frame)
                raise Preempted(f"stopped during stage {spec.name}")
            failures = {}
            for frame in remaining:
                if outcome.ok:
                    failure = self._check_outputs(frame, spec.name) if last else None
                elif self._stage_finished(spec.name, frame, last):
                    failure = None  # this frame's outputs were finished before the failure
                else:
                    failure = FrameFailure(frame, spec.name, outcome.why(), list(outcome.tail))
                if failure is None:
                    if last:
                        self._frame_stages_done(frame)
                else:
                    failures[frame] = failure
            remaining = sorted(failures)
            if remaining:
                self.progress.event("warning", message=f"{spec.name}: {outcome.why()}")
            self._check_stop()
        return failures

    def _stage_finished(self, stage: str, frame: int, last: bool) -> bool:
        """Whether a failed chunk call had finished ``frame`` (renamed its outputs into place
        and moved on) before it failed."""
        assert self.uploader is not None
        if last:
            return bool(self.patterns.per_frame) and self._check_outputs(frame, stage) is None
        return self.uploader.stage_was_finished(stage, frame)

    def _check_outputs(self, frame: int, stage: str) -> FrameFailure | None:
        assert self.uploader is not None
        why = self.uploader.check_frame(frame)
        return None if why is None else FrameFailure(frame, stage, why)

    def _frame_stages_done(self, frame: int) -> None:
        with self._lock:
            self._stages_done.add(frame)
        self._maybe_mark(frame)

    # -- 4. settle: flush uploads, markers, the report -----------------------------------

    def _settle(self, frames: list[int]) -> None:
        assert self.uploader is not None
        t0 = time.monotonic()
        budget = FLUSH_BUDGET_S if self.stop.is_set() else None
        self.uploader.sweep()
        flushed = self.uploader.wait(budget)
        for frame in frames:
            self._maybe_mark(frame)
        self.report.timings["upload_s"] = self.uploader.upload_seconds
        self.report.timings["upload_tail_s"] = time.monotonic() - t0
        self._collect_outputs()
        with self._lock:
            done = sorted(self._marked & set(frames))
        self.report.done = done
        if self.stop.is_set():  # frames not done are left for the retry, not failed
            flush = "finished frames flushed" if flushed else "not every upload finished"
            raise Preempted(f"stopped ({flush})")
        errors = [r for r in self.uploader.records.values() if r.outcome == "error"]
        conflicts = self.report.conflicts
        for frame in frames:
            if frame in done or frame in self.report.failed:
                continue
            self.report.failed.append(frame)
            why = "outputs not uploaded"
            bad = [u for u in conflicts if self.patterns.frame_of(u) == frame]
            if bad:
                why = f"output exists in the bucket with other content: {bad[0]}"
            self.report.failures.append(FrameFailure(frame, "upload", why))
        transient = [r for r in errors if r.transient]
        if transient:
            raise TransientError(transient[0].error or "uploads failed")
        if self.report.failed:
            first = self.report.failures[0]
            raise DataError(
                f"{len(self.report.failed)} frame(s) failed; first: frame {first.frame} "
                f"({first.stage}): {first.why}"
            )

    def _collect_outputs(self) -> None:
        assert self.uploader is not None
        for record in self.uploader.records.values():
            if record.outcome in ("created", "identical", "kept_previous", "overwritten"):
                self.report.output_urls.append(record.url)
                self.report.output_bytes += record.size
            elif record.outcome == "conflict":
                self.report.conflicts.append(record.relpath)
        if self.uploader.changed_after_upload:
            changed = self.uploader.changed_after_upload[0]
            self.progress.event(
                "warning",
                message=f"outputs/{changed} changed after it was uploaded; write outputs once "
                "(or to a temp name, then rename)",
            )


def _copy_future(source: Future[Path], target: Future[Path]) -> None:
    try:
        target.set_result(source.result())
    except BaseException as exc:
        target.set_exception(exc)


def resolve_job(job: Job, frames: list[int], options: RunOptions) -> Dependencies:
    """The dependencies ``frames`` of ``job`` need, stat'ed against storage; fetches only the
    scene (and files the resolver must read, such as linked libraries) into the cache."""
    run = JobRun(job, options)
    # Resolvers read the scene's files under their own names in a throwaway folder below the
    # cache (same filesystem: hardlinks, no copies); its held lock marks it live meanwhile.
    resolve_dir, lock_fd = run.cache.new_run_dir(f"deps-{job.display_name}")
    run._resolve_root = resolve_dir / "inputs"
    try:
        return run.resolve(frames)[0]
    finally:
        run._aio.close()
        run._fetch_pool.shutdown(wait=False)
        with contextlib.suppress(JitrenderError, OSError):
            run.cache.record_run(run._hits, run._fetched)
        shutil.rmtree(resolve_dir, ignore_errors=True)
        os.close(lock_fd)


def run_job(job: Job, options: RunOptions) -> Report:
    """Run ``job`` on this node; never raises for the job's own problems: the report's
    ``status`` and ``exit_code`` say what happened."""
    return JobRun(job, options).execute()
