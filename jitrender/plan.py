"""What a run will do, decided before it does it: the frames left, the dependencies they need
(stat'ed, in fetch order), the outputs each frame must produce, and how the stages group."""

from __future__ import annotations

import contextlib
import gc
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path

from jitrender.cache import Cache
from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import ConfigError, DataError
from jitrender.inputs import Inputs
from jitrender.job import DepSpec, Job, StageSpec
from jitrender.outputs import OutputPatterns
from jitrender.paths import PathMap
from jitrender.progress import Progress, QuietProgress
from jitrender.resolve import resolver_for
from jitrender.resolve.base import ResolveContext
from jitrender.resolve.manifest import entry_dependencies
from jitrender.storage import ObjectInfo, RetryPolicy


@dataclass(frozen=True)
class StageGroup:
    """Consecutive per-frame stages run together frame by frame; a chunk stage runs alone."""

    per: str  # "frame" or "chunk"
    specs: tuple[StageSpec, ...]


def stage_groups(stages: Sequence[StageSpec]) -> tuple[StageGroup, ...]:
    groups: list[StageGroup] = []
    for spec in stages:
        if spec.per == "frame" and groups and groups[-1].per == "frame":
            groups[-1] = StageGroup("frame", (*groups[-1].specs, spec))
        else:
            groups.append(StageGroup(spec.per, (spec,)))
    return tuple(groups)


def fetch_order(deps: Iterable[Dependency]) -> tuple[Dependency, ...]:
    """Files every frame needs first, then in the order of the first frame that needs them
    (by URL within each)."""
    by_url = sorted(deps, key=attrgetter("url"))  # a C key: no Python call per dependency
    always = [d for d in by_url if not d.frames]
    if len(always) == len(by_url):
        return tuple(by_url)
    # Stable: the URL order holds among the files of one first frame.
    framed = sorted((d for d in by_url if d.frames), key=lambda d: min(d.frames or (0,)))
    return (*always, *framed)


@dataclass(frozen=True)
class RunPlan:
    """Everything a run executes, computed without running anything."""

    frames: tuple[int, ...]  # still to render, in order
    deps: tuple[Dependency, ...]  # stat'ed, in fetch order
    expected: Mapping[int, tuple[str, ...]]  # frame -> output paths below outputs/
    groups: tuple[StageGroup, ...]

    @classmethod
    def make(
        cls,
        frames: Sequence[int],
        deps: Iterable[Dependency],
        patterns: OutputPatterns,
        stages: Sequence[StageSpec],
        *,
        in_fetch_order: bool = False,
    ) -> RunPlan:
        """``in_fetch_order``: ``deps`` are in :func:`fetch_order` already (a prefetching
        resolve's), which is not worked out again (0.3 s for 100,000)."""
        expected = {f: tuple(patterns.expected_for(f)) for f in frames}
        ordered = tuple(deps) if in_fetch_order else fetch_order(deps)
        return cls(tuple(frames), ordered, expected, stage_groups(stages))


def nuke_render_nodes(job: Job) -> tuple[str, ...]:
    """The Write nodes the job's ``nuke`` stages execute (``args.write``), so the resolver lists
    only what those render; empty when a rendering stage names none (Nuke then renders every
    enabled Write)."""
    names: list[str] = []
    for stage in job.stages:
        if stage.engine != "nuke" or stage.args.get("mode", "render") != "render":
            continue
        wanted = stage.args.get("write")
        if isinstance(wanted, str) and wanted:
            names.append(wanted)
        elif isinstance(wanted, list) and wanted and all(isinstance(w, str) for w in wanted):
            names.extend(wanted)
        else:
            return ()  # none named (or a bad value, which the nuke engine reports)
    return tuple(dict.fromkeys(names))


# -- what the frames need ---------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    """A scene's (and a job's ``deps:``) dependencies for some frames, each stat'ed; the scene
    itself is not among ``deps`` but is counted in ``count`` and ``bytes_needed``."""

    deps: list[Dependency]
    unresolved: list[Unresolved]
    scene: ObjectInfo | None
    scene_local: Path | None
    in_fetch_order: bool = False  # ``deps`` are in fetch_order (a prefetching resolve's)

    @property
    def missing(self) -> list[Dependency]:
        return [d for d in self.deps if d.exists is False]

    @property
    def count(self) -> int:
        return len(self.deps) + (1 if self.scene is not None else 0)

    @property
    def bytes_needed(self) -> int:
        scene = self.scene.size if self.scene is not None else 0
        return sum(d.size or 0 for d in self.deps) + scene

    def dependencies(self) -> Dependencies:
        return Dependencies(self.deps, self.unresolved)

    def check_missing(self) -> None:
        """Raise :class:`DataError` naming (the first five of) the dependencies missing from
        storage: nothing renders with an input missing."""
        missing = self.missing
        if missing:
            names = ", ".join(f"{d.url} ({d.source})" for d in missing[:5])
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise DataError(f"{len(missing)} dependencies missing from storage: {names}{more}")


def resolve_dependencies(
    inputs: Inputs,
    *,
    scene_url: str | None,
    resolver: str,
    frames: Sequence[int],
    path_map: PathMap,
    entries: Sequence[str | DepSpec] = (),
    env: Mapping[str, str] | None = None,
    base_url: str,
    where: str,
    progress: Progress,
    render_nodes: tuple[str, ...] = (),
    prefetch: bool = False,
) -> Resolution:
    """Resolve ``scene_url`` (linked below ``inputs.root`` for the resolver to read) and the
    job's ``deps:`` ``entries`` for ``frames``, then stat every dependency. Raises
    :class:`ConfigError` when the scene does not exist; missing dependencies are reported in
    the result, not raised. With ``prefetch`` the dependencies (the scene's excepted) are
    handed to ``inputs.prefetch`` in :func:`fetch_order` as soon as they are known, before
    their stats are in: each starts (a cached one is linked) as its own stat answers."""
    found = Dependencies()
    scene: ObjectInfo | None = None
    scene_file = Path(os.devnull)
    if scene_url is not None:
        scene = inputs.stat(scene_url)
        if scene is None:
            raise ConfigError(f"{where}: scene: {scene_url} does not exist")
        scene_file = inputs.local_copy(scene_url)
    ctx = ResolveContext(
        scene_url=scene_url if scene_url is not None else base_url,
        scene_file=scene_file,
        frames=tuple(frames),
        path_map=path_map,
        list_prefix=inputs.list_prefix,
        fetch=inputs.local_copy,
        env=dict(env or {}),
        render_nodes=render_nodes,
        list_prefixes=inputs.list_prefixes,
        stat_soon=inputs.stat_soon,
    )
    with _collector_paused():
        if scene_url is not None:
            name, resolve = resolver_for(resolver, scene_url)
            progress.event("phase", message=f"resolving {scene_url} with '{name}'")
            found.extend(resolve(ctx))
        for index, entry in enumerate(entries):
            found.extend(_entry(ctx, entry, f"job deps[{index}]"))
        merged = found.merged()
        wanted = [d for d in merged.deps if d.url != scene_url]
        inputs.stat_soon(d.url for d in wanted)
        if prefetch:  # the order needs no stat; each waits in the feed for its own answer
            wanted = list(fetch_order(wanted))
            inputs.prefetch(wanted)
        deps = inputs.stat_all(wanted)  # (in the order given)
    for item in merged.unresolved:
        progress.event("warning", message=f"unresolved {item.source}: {item.why}")
    scene_local = scene_file if scene_url is not None else None
    return Resolution(deps, merged.unresolved, scene, scene_local, in_fetch_order=prefetch)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection while a plan builds its records: each of the full passes
    that 100,000 new (acyclic) dependencies trigger walks every object, a quarter of the CPU."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _entry(ctx: ResolveContext, entry: str | DepSpec, source: str) -> Dependencies:
    if isinstance(entry, str):
        return entry_dependencies(ctx, entry, source)
    written = entry.path if entry.path is not None else (entry.prefix or "")
    if entry.prefix is not None and not written.endswith("/"):
        written += "/"
    return entry_dependencies(ctx, written, source, entry.frames)


def resolve_for_job(
    job: Job,
    inputs: Inputs,
    frames: list[int],
    path_map: PathMap,
    progress: Progress,
    *,
    prefetch: bool = False,
) -> Resolution:
    """``job``'s scene and ``deps:`` resolved for ``frames`` through ``inputs`` (prefetched
    as they are known with ``prefetch``: see :func:`resolve_dependencies`)."""
    return resolve_dependencies(
        inputs,
        scene_url=job.scene_url,
        resolver=job.resolver,
        frames=frames,
        path_map=path_map,
        entries=job.deps,
        env=job.env,
        base_url=job.base_url + "/job",
        where=str(job.source),
        progress=progress,
        render_nodes=nuke_render_nodes(job),
        prefetch=prefetch,
    )


def resolve_scene(
    cache: Cache,
    scene_url: str | None,
    frames: list[int],
    *,
    resolver: str = "auto",
    path_map: PathMap,
    entries: Sequence[str | DepSpec] = (),
    env: Mapping[str, str] | None = None,
    retry: RetryPolicy | None = None,
    where: str = "deps",
    base_url: str | None = None,
    progress: Progress | None = None,
    render_nodes: tuple[str, ...] = (),
) -> Dependencies:
    """The dependencies ``frames`` of a scene (and of ``deps:`` entries) need, stat'ed against
    storage; fetches only the scene and the files the resolver must read (linked libraries,
    precomps) into ``cache``."""
    # Resolvers read the scene's files under their own names in a throwaway folder below the
    # cache (same filesystem: hardlinks, no copies); its held lock marks it live meanwhile.
    resolve_dir, lock_fd = cache.new_run_dir(f"deps-{Path(scene_url or where).name}")
    inputs = Inputs(cache, resolve_dir / "inputs", retry=retry)
    try:
        return resolve_dependencies(
            inputs,
            scene_url=scene_url,
            resolver=resolver,
            frames=frames,
            path_map=path_map,
            entries=entries,
            env=env,
            base_url=base_url or where,
            where=where,
            progress=progress or QuietProgress(),
            render_nodes=render_nodes,
        ).dependencies()
    finally:
        inputs.close()
        shutil.rmtree(resolve_dir, ignore_errors=True)
        os.close(lock_fd)


def resolve_job_scene(
    job: Job, frames: list[int], cache: Cache, path_map: PathMap, progress: Progress
) -> Dependencies:
    """:func:`resolve_scene` with ``job``'s scene, resolver, ``deps:``, env and retries."""
    return resolve_scene(
        cache,
        job.scene_url,
        frames,
        resolver=job.resolver,
        path_map=path_map,
        entries=job.deps,
        env=job.env,
        retry=RetryPolicy(attempts=job.retries.storage),
        where=str(job.source),
        base_url=job.base_url + "/job",
        progress=progress,
        render_nodes=nuke_render_nodes(job),
    )
