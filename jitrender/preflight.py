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
from jitrender.paths import workspace_relpath


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
        if not job.deps and job.resolver != "auto":
            raise ConfigError(f"{job.source}: resolver {job.resolver!r} needs a 'scene'")
        return
    resolver_for(job.resolver, scene_url)


def check_stages(job: Job, frames: list[int], workspace: Workspace) -> None:
    """Build every stage's command once, so a bad template or engine argument is a
    configuration error (78) that costs no transfer."""
    for spec in job.stages:
        sample = (frames[0],) if spec.per == "frame" else tuple(frames)
        call = StageCall(spec.name, sample, workspace, spec.args, spec.command, spec.env)
        engine_named(spec.engine or "command")(call)


def check_job(job: Job, frames: list[int], workspace: Workspace) -> None:
    """Every check :func:`jitrender.run.run_job` makes before fetching; raises
    :class:`ConfigError` (one line) on the first problem."""
    from jitrender.cache import parse_size

    job.path_mapping()
    parse_size(job.cache.max_size)  # the same line run gives
    check_outputs(job)
    check_resolver(job)
    if frames:
        check_stages(job, frames, workspace)
    if job.split_stage is not None:
        from jitrender.split import check_split

        check_split(job)
