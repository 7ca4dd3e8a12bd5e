"""The checks a run makes before it fetches anything, in one place: ``jitrender run`` and
``jitrender validate`` both call :func:`check_job`, so a job one of them refuses with exit 78
the other refuses with the same line.

What is checked: the path mapping, the cache size, the output patterns, that the scene's
resolver exists and its optional extra is installed, and every stage's command or engine call
built once for a sample of the frames (templates, placeholders, engine arguments, the
renderer's presence). Nothing here touches storage.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from jitrender.engines import StageCall, Workspace, engine_named
from jitrender.errors import ConfigError
from jitrender.job import Job
from jitrender.paths import split_url, workspace_relpath


def planned_workspace(job: Job, root: Path) -> Workspace:
    """The workspace a run rooted at ``root`` will have (the scene where run links it)."""
    scene_url = job.scene_url
    scene = root / "inputs" / workspace_relpath(scene_url) if scene_url else None
    return Workspace(root, scene, job.source.parent if job.source is not None else None)


def check_outputs(job: Job) -> None:
    """Output patterns stay below ``outputs/``: a pattern that cannot match is refused, not
    quietly never uploaded."""
    for index, pattern in enumerate(job.outputs.files):
        where = f"{job.source or 'job'}: outputs.files[{index}]"
        path = PurePosixPath(pattern)
        if not pattern.strip():
            raise ConfigError(f"{where}: empty pattern")
        if pattern.startswith("/") or "\\" in pattern or ".." in path.parts:
            raise ConfigError(f"{where}: {pattern!r} must be a relative pattern below outputs/")


def check_resolver(job: Job) -> None:
    """The scene's resolver exists and can be imported (its extra is installed)."""
    from jitrender.resolve import resolver_for

    scene_url = job.scene_url
    if scene_url is None:
        if job.resolver != "auto":  # (with deps: too: they are read as listed, never by it)
            raise ConfigError(f"{job.source}: resolver {job.resolver!r} needs a 'scene'")
        return
    try:
        resolver_for(job.resolver, scene_url)
    except ConfigError as exc:
        if job.resolver == "auto":  # the line names the scene's URL and what to set
            raise
        raise ConfigError(f"{job.source or 'job'}: {exc.message}") from None


def check_stages(job: Job, frames: list[int], workspace: Workspace) -> None:
    """Build every stage's command once, so a bad template or engine argument is a
    configuration error (78) that costs no transfer."""
    for spec in job.stages:
        sample = (frames[0],) if spec.per == "frame" else tuple(frames)
        call = StageCall(spec.name, sample, workspace, spec.args, spec.command, spec.env)
        engine_named(spec.engine or "command")(call)


def check_storage(job: Job) -> None:
    """Every URL the job names (scene, deps, outputs, checkpoints) has a storage backend on this
    node: a scheme no backend takes is refused now (``validate`` too), not when it is first
    used (``outputs.checkpoints`` then was dropped unseen: it is best effort)."""
    urls: list[tuple[str, str | None]] = [
        ("scene", job.scene_url),
        ("outputs.to", job.outputs_url),
        ("outputs.checkpoints", job.checkpoints_url),
    ]
    for index, dep in enumerate(job.deps):
        value = dep if isinstance(dep, str) else (dep.path or dep.prefix)
        urls.append((f"deps[{index}]", job.resolve_url(value) if value else None))
    for key, url in urls:
        if url is None:
            continue
        scheme = split_url(url)[0]
        if scheme in ("file", "gs"):  # the built-in stores
            continue
        from jitrender.storage import _STORE_FACTORIES

        if _STORE_FACTORIES.get(scheme) is not None:
            continue
        import fsspec

        try:
            fsspec.get_filesystem_class(scheme)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"{job.source or 'job'}: {key}: {url}: no storage backend for {scheme}:// ({exc})"
            ) from None


def check_job(job: Job, frames: list[int], workspace: Workspace) -> None:
    """Every check :func:`jitrender.run.run_job` makes before fetching; raises
    :class:`ConfigError` (one line) on the first problem."""
    from jitrender.cache import parse_size

    job.path_mapping()
    check_storage(job)
    parse_size(job.cache.max_size)  # the same line run gives
    check_outputs(job)
    check_resolver(job)
    if frames:
        check_stages(job, frames, workspace)
    if job.split_stage is not None:
        from jitrender.split import check_split

        check_split(job)
