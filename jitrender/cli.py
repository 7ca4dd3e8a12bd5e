"""The ``jitrender`` command. Parses flags and calls the library; no logic of its own.

Exit codes: 0 done, 65 the job's data is wrong, 75 retry (preempted / transient), 78
configuration error (bad job file, bad flags, permissions). Errors are one line on stderr.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from typer.exceptions import Abort, TyperException

from jitrender import __version__
from jitrender.errors import ConfigError, ExitCode, JitrenderError

app = typer.Typer(
    name="jitrender",
    help=(
        "Just-in-time render node: fetch exactly the files a job's frames need into a shared "
        "node-local cache, render, and upload every output exactly once, as soon as it exists."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
cache_app = typer.Typer(help="Inspect and maintain the node-local cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        envvar="JITRENDER_CACHE_DIR",
        help="Node-local cache folder (default: $JITRENDER_CACHE_DIR or ~/.cache/jitrender).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
PathMapFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--path-map", help="Extra mapping FROM=TO (repeatable), e.g. /mnt/show=gs://show."
    ),
]
PathMapRules = Annotated[
    Path | None,
    typer.Option("--path-map-rules", help="Open Job Description path-mapping rules (JSON file)."),
]


def _fail(error: JitrenderError) -> NoReturn:
    typer.echo(f"jitrender: error: {error.message}", err=True)
    raise typer.Exit(int(error.exit_code))


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


def _extra_path_map(pairs: list[str] | None, rules: Path | None) -> Any:
    from jitrender.paths import PathMap

    extra = PathMap.from_pairs(pairs or [])
    if rules is not None:
        extra = extra.merged(PathMap.load_openjd(rules))
    return extra if extra else None


@app.command()
def run(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml to run.", metavar="JOB")],
    frames: Annotated[
        str | None, typer.Option("--frames", "-f", help="Frames to render, e.g. 1001-1010.")
    ] = None,
    task_index: Annotated[
        int | None, typer.Option("--task-index", help="This task's index (0-based).")
    ] = None,
    task_count: Annotated[
        int | None, typer.Option("--task-count", help="How many tasks share the frames.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON report here.")
    ] = None,
    as_json: JsonFlag = False,
    cache_dir: CacheDir = None,
    cache_max_size: Annotated[
        str | None, typer.Option("--cache-max-size", help="Cache size cap, e.g. 200GB.")
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace outputs that exist with other content (generation-matched; the same "
            "bytes are left alone), including those of another version of the job.",
        ),
    ] = False,
    rerender: Annotated[
        bool,
        typer.Option(
            "--rerender",
            help="Render the frames again even if they are done, replacing their outputs and "
            "markers (use with --frames).",
        ),
    ] = False,
    keep_workspace: Annotated[
        bool, typer.Option("--keep-workspace", help="Keep the run's workspace for debugging.")
    ] = False,
    progress: Annotated[
        str, typer.Option("--progress", help="auto | rich | plain | json | quiet")
    ] = "auto",
    path_map: PathMapFlag = None,
    path_map_rules: PathMapRules = None,
    mount: Annotated[
        Path | None,
        typer.Option(
            "--mount",
            help="Also show the mapped bucket prefixes read-only at this folder (FUSE, extra "
            "'fuse'); opening a file fetches it. Without FUSE the run says so and prefetches.",
        ),
    ] = None,
) -> None:
    """Render a job: resolve, fetch just in time, run its stages, upload outputs exactly once."""
    from jitrender.cache import parse_size
    from jitrender.farm import detect_task, task_frames
    from jitrender.job import load_job
    from jitrender.progress import make_progress
    from jitrender.run import RunOptions, run_job
    from jitrender.sequences import parse_frames

    if progress not in ("auto", "rich", "plain", "json", "quiet"):
        _fail(ConfigError(f"--progress {progress!r}: use auto, rich, plain, json or quiet"))
    try:
        job = load_job(job_file)
        frame_list = parse_frames(frames, "--frames") if frames else job.frame_list()
        slot = detect_task(task_index, task_count, os.environ)
        task = None
        if slot is not None:
            frame_list = task_frames(frame_list, slot, job.chunk)
            task = {"index": slot.index, "count": slot.count, "source": slot.source}
        options = RunOptions(
            frames=frame_list,
            cache_dir=cache_dir,
            cache_max_bytes=parse_size(cache_max_size, "--cache-max-size"),
            report_path=report,
            overwrite=overwrite,
            rerender=rerender,
            keep_workspace=keep_workspace,
            extra_path_map=_extra_path_map(path_map, path_map_rules),
            progress=make_progress(progress),  # type: ignore[arg-type]
            task=task,
            mount=mount,
        )
    except JitrenderError as exc:
        _fail(exc)
    try:
        result = run_job(job, options)
    finally:
        options.progress.close()
    if as_json:
        _print_json(result.to_json())
    summary = (
        f"{result.status}: {len(result.done)} frames rendered, "
        f"{len(result.skipped_already_done)} already done, {len(result.failed)} failed; "
        f"fetched {result.bytes_fetched} of {result.bytes_needed} bytes needed "
        f"({result.misses} files), {result.hits} cache hits; "
        f"{len(result.output_urls)} outputs"
    )
    typer.echo(f"jitrender: {summary}", err=True)
    if result.error:
        typer.echo(f"jitrender: error: {result.error}", err=True)
    if result.status == "preempted":
        # Storage threads that still hang must not hold the process past its deadline.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)
    raise typer.Exit(result.exit_code)


@app.command()
def deps(
    scene: Annotated[str, typer.Argument(help="Scene URL or path (.nk, .blend, .usd, manifest).")],
    frames: Annotated[
        str | None, typer.Option("--frames", "-f", help="Frames to list deps for.")
    ] = None,
    job_file: Annotated[
        Path | None, typer.Option("--job", help="Take path mapping and deps from this job.")
    ] = None,
    resolver: Annotated[str, typer.Option("--resolver", help="Resolver name or auto.")] = "auto",
    check: Annotated[
        bool, typer.Option("--check", help="CI pre-flight: exit 65 if any dependency is missing.")
    ] = False,
    as_json: JsonFlag = False,
    cache_dir: CacheDir = None,
    path_map: PathMapFlag = None,
    path_map_rules: PathMapRules = None,
) -> None:
    """List the files the given frames of a scene need (and what is missing or unresolved)."""
    from jitrender.job import Job, load_job
    from jitrender.run import RunOptions, resolve_job
    from jitrender.sequences import parse_frames

    try:
        if job_file is not None:
            job = load_job(job_file)
            job = job.model_copy(update={"scene": scene, "resolver": resolver})
        else:
            job = Job.model_validate(
                {
                    "scene": scene,
                    "resolver": resolver,
                    "frames": frames or "1",
                    "stages": [{"name": "none", "command": "true"}],
                    "outputs": {"to": "file:///nonexistent"},
                }
            )
        frame_list = parse_frames(frames, "--frames") if frames else job.frame_list()
        options = RunOptions(
            cache_dir=cache_dir, extra_path_map=_extra_path_map(path_map, path_map_rules)
        )
        found = resolve_job(job, frame_list, options)
    except JitrenderError as exc:
        _fail(exc)
    document = found.to_json(job.scene_url or scene, frame_list)
    if as_json:
        _print_json(document)
    else:
        _print_deps_table(document)
    if check and found.missing:
        for dep in found.missing:
            typer.echo(f"jitrender: missing: {dep.url} (asked for by {dep.source})", err=True)
        raise typer.Exit(int(ExitCode.DATA))


def _print_deps_table(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{document['scene']} — {len(document['deps'])} dependencies")
    for column in ("url", "frames", "size", "exists", "source"):
        table.add_column(column)
    for dep in document["deps"]:
        frames = dep["frames"]
        shown = "all" if frames is None else _compact(frames)
        table.add_row(
            dep["url"],
            shown,
            str(dep["size"] if dep["size"] is not None else "-"),
            "yes" if dep["exists"] else "[red]MISSING[/red]",
            dep["source"],
        )
    console = Console()
    console.print(table)
    for item in document["unresolved"]:
        console.print(f"unresolved: {item['source']}: {item['value']} ({item['why']})")


def _compact(frames: list[int]) -> str:
    from jitrender.sequences import format_frames

    return format_frames(frames)


@app.command()
def status(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml.", metavar="JOB")],
    frames: Annotated[str | None, typer.Option("--frames", "-f")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Frames done and missing, read from the bucket: done markers of this job's hash whose
    outputs are all still there."""
    from jitrender.job import load_job
    from jitrender.outputs import OutputPatterns, frames_in_bucket
    from jitrender.run import marker_prefix
    from jitrender.sequences import format_frames, parse_frames
    from jitrender.storage import RetryPolicy, Stores, with_retries

    try:
        job = load_job(job_file)
        frame_list = parse_frames(frames, "--frames") if frames else job.frame_list()
        prefix, outputs = marker_prefix(job), job.outputs_url + "/"
        store = Stores().for_url(outputs)
        # One listing: markers, and whether the outputs each marker names are still there.
        listing = with_retries(lambda: store.list(outputs), outputs, RetryPolicy())
    except JitrenderError as exc:
        _fail(exc)
    patterns = OutputPatterns(job.outputs.files)
    done = frames_in_bucket(listing, job.outputs_url, prefix, patterns, frame_list).done
    missing = [f for f in frame_list if f not in set(done)]
    document = {
        "job": job.display_name,
        "job_hash": job.job_hash(),
        "frames": {"requested": frame_list, "done": done, "missing": missing},
        "complete": not missing,
    }
    if as_json:
        _print_json(document)
    else:
        typer.echo(f"job {job.display_name} ({job.job_hash()})")
        typer.echo(f"  done:    {len(done)} {format_frames(done)}")
        typer.echo(f"  missing: {len(missing)} {format_frames(missing)}")
    raise typer.Exit(0)


@app.command()
def requeue(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml.", metavar="JOB")],
    frames: Annotated[
        str, typer.Option("--frames", "-f", help="Frames to render again, e.g. 1001-1010.")
    ],
    delete_outputs: Annotated[
        bool,
        typer.Option("--delete-outputs", help="Also delete those frames' outputs from the bucket."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Drop the done markers of frames so that the farm's next run renders them again
    (outputs are kept, and replaced when the frames render, unless --delete-outputs)."""
    from jitrender.job import load_job
    from jitrender.requeue import requeue_frames
    from jitrender.sequences import format_frames, parse_frames

    try:
        job = load_job(job_file)
        result = requeue_frames(
            job, parse_frames(frames, "--frames"), delete_outputs=delete_outputs
        )
    except JitrenderError as exc:
        _fail(exc)
    if as_json:
        _print_json(result.to_json())
    else:
        typer.echo(
            f"requeued frames {format_frames(result.frames)}: {len(result.markers)} markers "
            f"and {len(result.outputs)} outputs removed"
        )


@app.command()
def validate(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml.", metavar="JOB")],
) -> None:
    """Check a job file without running it (exit 78 with one line when it is wrong)."""
    from jitrender.job import load_job

    try:
        job = load_job(job_file)
    except JitrenderError as exc:
        _fail(exc)
    typer.echo(f"{job_file}: ok ({len(job.frame_list())} frames, {len(job.stages)} stages)")


def _cache_action(
    action: str, cache_dir: Path | None, as_json: bool, max_size: str | None = None
) -> dict[str, Any]:
    """Run one maintenance action on the node's cache and print its result."""
    from jitrender.cache import Cache, default_cache_dir, parse_size

    try:
        cache = Cache(cache_dir or default_cache_dir(), parse_size(max_size, "--max-size"))
        result: dict[str, Any] = getattr(cache, action)()
    except JitrenderError as exc:
        _fail(exc)
    if as_json:
        _print_json(result)
    elif action == "stats":
        for key, value in result.items():
            typer.echo(f"{key:>17}: {value}")
    else:
        typer.echo(" ".join(f"{k}={v}" for k, v in result.items()))
    return result


@cache_app.command("stats")
def cache_stats(cache_dir: CacheDir = None, as_json: JsonFlag = False) -> None:
    """Entries, bytes, hit rate and pinned bytes (in use by running jobs)."""
    _cache_action("stats", cache_dir, as_json)


@cache_app.command("verify")
def cache_verify(cache_dir: CacheDir = None, as_json: JsonFlag = False) -> None:
    """Re-checksum every entry; drop bad ones (exit 65 if any were bad)."""
    result = _cache_action("verify", cache_dir, as_json)
    raise typer.Exit(int(ExitCode.DATA) if result["bad"] else 0)


@cache_app.command("prune")
def cache_prune(
    cache_dir: CacheDir = None,
    max_size: Annotated[
        str | None, typer.Option("--max-size", help="Evict down to this size (e.g. 100GB).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Remove leftovers of dead runs and evict least-recently-used entries down to the cap."""
    _cache_action("prune", cache_dir, as_json, max_size)


@cache_app.command("clear")
def cache_clear(cache_dir: CacheDir = None, as_json: JsonFlag = False) -> None:
    """Evict every entry no running job is using."""
    _cache_action("clear", cache_dir, as_json)


@app.command()
def health(
    cache_dir: CacheDir = None,
    as_json: JsonFlag = False,
    reset: Annotated[
        bool, typer.Option("--reset", help="Forget the failure streak (after repairing the node).")
    ] = False,
) -> None:
    """Is this node fit for work? Exit 0 healthy, 69 unhealthy (it failed frames of several
    jobs in a row: drain it). Reads health.json in the cache folder."""
    from jitrender.cache import default_cache_dir
    from jitrender.health import NodeHealth

    node = NodeHealth(cache_dir or default_cache_dir())
    try:
        if reset:
            node.reset()
        state = node.status()
    except OSError as exc:
        _fail(ConfigError(f"{node.path}: cannot use health record: {exc}"))
    if as_json:
        _print_json(state)
    else:
        word = "healthy" if state["healthy"] else "UNHEALTHY: drain this node"
        typer.echo(
            f"{word} ({state['failed_frames_in_a_row']} failed frames of "
            f"{state['failed_jobs_in_a_row']} jobs in a row; limits "
            f"{state['thresholds']['failed_frames']} frames, "
            f"{state['thresholds']['failed_jobs']} jobs)"
        )
        for item in state["recent_failures"]:
            typer.echo(f"  {item['job_name']} frame {item['frame']}: {item['why']}")
    raise typer.Exit(0 if state["healthy"] else int(ExitCode.UNHEALTHY))


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None) -> None:
    """Entry point: usage errors exit 78 with one line, like every configuration error."""
    try:
        code = app(args=argv, standalone_mode=False)  # an int when a command raised Exit
    except TyperException as exc:  # usage errors: unknown flag, bad value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            sys.exit(0)
        message = " ".join(exc.format_message().split())
        typer.echo(f"jitrender: error: {message} (see --help)", err=True)
        sys.exit(int(ExitCode.CONFIG))
    except Abort:
        sys.exit(int(ExitCode.TEMPFAIL))
    except JitrenderError as exc:
        typer.echo(f"jitrender: error: {exc.message}", err=True)
        sys.exit(int(exc.exit_code))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
