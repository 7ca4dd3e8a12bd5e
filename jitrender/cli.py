"""The ``jitrender`` command. Parses flags and calls the library; no logic of its own.

Exit codes: 0 done, 65 the job's data is wrong, 75 retry (preempted / transient), 78
configuration error (bad job file, bad flags, permissions). Errors are one line on stderr.

Annotations here are objects, not strings (no ``from __future__ import annotations``): typer
reads every command's signature, and compiling string annotations cost 20 ms a start.
"""

import sys

if __name__ == "__main__":  # python -m jitrender.cli: the command's own order (signals first)
    from jitrender.entry import main as _entry_main

    _entry_main()  # imports this module under its own name and exits

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from typer.exceptions import Abort, TyperException

from jitrender import __version__
from jitrender.errors import ConfigError, ExitCode, JitrenderError
from jitrender.runcmd import extra_path_map as _extra_path_map
from jitrender.runcmd import frames_of as _frames
from jitrender.runcmd import json_document as _json_document
from jitrender.runcmd import json_failure as _json_failure
from jitrender.runcmd import json_progress as _json_progress
from jitrender.runcmd import same_file as _same_file

if TYPE_CHECKING:
    from jitrender.headstart import HeadStart
    from jitrender.stopping import Stop

_APP_SETTINGS: dict[str, Any] = {
    "name": "jitrender",
    "help": (
        "Just-in-time render node: fetch exactly the files a job's frames need into a shared "
        "node-local cache, render, and upload every output exactly once, as soon as it exists."
    ),
    "no_args_is_help": True,
    "add_completion": False,
    "pretty_exceptions_enable": False,
    "context_settings": {"help_option_names": ["-h", "--help"]},
}
app = typer.Typer(**_APP_SETTINGS)
cache_app = typer.Typer(help="Inspect and maintain the node-local cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")


def _given_path(value: str) -> Path:
    """A path option's value: an empty one (``--cache-dir "$DIR"`` with the variable unset) is a
    usage error, not the current folder that ``Path("")`` would make of it."""
    if not value:
        raise typer.BadParameter("an empty path (leave the option out instead)")
    return Path(value)


CacheDir = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        parser=_given_path,
        envvar="JITRENDER_CACHE_DIR",
        help="Node-local cache folder (default: $JITRENDER_CACHE_DIR or ~/.cache/jitrender).",
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
ReportFlag = Annotated[
    Path | None,
    typer.Option("--report", parser=_given_path, help="Write the JSON report here."),
]
PathMapFlag = Annotated[
    list[str] | None,
    typer.Option(
        "--path-map", help="Extra mapping FROM=TO (repeatable), e.g. /mnt/show=gs://show."
    ),
]
PathMapRules = Annotated[
    Path | None,
    typer.Option(
        "--path-map-rules",
        parser=_given_path,
        help="Open Job Description path-mapping rules (JSON file).",
    ),
]


# Set by main(): whether the command line asks for --json (a failure is then its JSON document
# on stdout too, beside the line on stderr), and whether the command is ``run``.
_JSON_FAILURES = [False, False]


def _fail(error: JitrenderError) -> NoReturn:
    _json_document_of(error.message, error.exit_code)
    typer.echo(f"jitrender: error: {error.message}", err=True)
    raise typer.Exit(int(error.exit_code))


def _json_document_of(message: str, code: int) -> None:
    if _JSON_FAILURES[0]:
        _json_document(message, code, run=_JSON_FAILURES[1])


def _asks_json(args: list[str]) -> bool:
    """Whether ``--json`` is among the options (not after a ``--``)."""
    options = args[: args.index("--")] if "--" in args else args
    return "--json" in options


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, default=str))


@app.command()
def run(
    ctx: typer.Context,
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
    report: ReportFlag = None,
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
    heartbeat_interval: Annotated[
        float,
        typer.Option(
            "--heartbeat-interval",
            envvar="JITRENDER_HEARTBEAT_INTERVAL",
            help="Seconds between this task's heartbeats in the bucket (0: none).",
        ),
    ] = 10.0,
    mount: Annotated[
        Path | None,
        typer.Option(
            "--mount",
            parser=_given_path,
            help="Also show the mapped bucket prefixes read-only at this folder (FUSE, extra "
            "'fuse'); opening a file fetches it. Without FUSE the run says so and prefetches.",
        ),
    ] = None,
) -> None:
    """Render a job: resolve, fetch just in time, run its stages, upload outputs exactly once."""
    from jitrender.runcmd import run_command

    held_stop, early = ctx.obj if isinstance(ctx.obj, tuple) else (None, None)
    run_command(
        job_file=job_file,
        frames=frames,
        task_index=task_index,
        task_count=task_count,
        report=report,
        as_json=as_json,
        cache_dir=cache_dir,
        cache_max_size=cache_max_size,
        overwrite=overwrite,
        rerender=rerender,
        keep_workspace=keep_workspace,
        progress=progress,
        path_map=path_map,
        path_map_rules=path_map_rules,
        heartbeat_interval=heartbeat_interval,
        mount=mount,
        stop=held_stop,
        early=early,
    )


@app.command()
def deps(
    scene: Annotated[str, typer.Argument(help="Scene URL or path (.nk, .blend, .usd, manifest).")],
    frames: Annotated[
        str | None, typer.Option("--frames", "-f", help="Frames to list deps for.")
    ] = None,
    job_file: Annotated[
        Path | None,
        typer.Option("--job", parser=_given_path, help="Take path mapping and deps from this job."),
    ] = None,
    resolver: Annotated[str, typer.Option("--resolver", help="Resolver name or auto.")] = "auto",
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="CI pre-flight: exit 65 if any dependency is missing or unresolved.",
        ),
    ] = False,
    allow_unresolved: Annotated[
        bool,
        typer.Option(
            "--allow-unresolved",
            help="With --check: entries that need the DCC to evaluate do not fail the check.",
        ),
    ] = False,
    as_json: JsonFlag = False,
    cache_dir: CacheDir = None,
    path_map: PathMapFlag = None,
    path_map_rules: PathMapRules = None,
) -> None:
    """List the files the given frames of a scene need (and what is missing or unresolved)."""
    from jitrender.cache import Cache, parse_size
    from jitrender.cachelayout import default_cache_dir
    from jitrender.job import load_job
    from jitrender.paths import PathMap, file_url, is_url
    from jitrender.plan import resolve_job_scene, resolve_scene
    from jitrender.progress import QuietProgress
    from jitrender.sequences import parse_frames

    try:
        if allow_unresolved and not check:
            raise ConfigError("--allow-unresolved: goes with --check (give both)")
        extra = _extra_path_map(path_map, path_map_rules)
        if job_file is not None:
            job = load_job(job_file, cache_dir).with_values(scene=scene, resolver=resolver)
            frame_list = _frames(job, frames)
            job.use_path_map(extra)  # first: the scene's URL goes through it
            cache = Cache(job.cache_folder(cache_dir), parse_size(job.cache.max_size))
            found = resolve_job_scene(job, frame_list, cache, job.path_mapping(), QuietProgress())
            scene_url = job.scene_url or scene  # after the --path-map rules joined the job's
        else:
            frame_list = parse_frames("1" if frames is None else frames, "--frames")
            rules = extra if extra is not None else PathMap([])
            if is_url(scene):
                scene_url = scene
            elif rules.is_mapped(scene):
                scene_url = rules.to_url(scene)
            else:
                scene_url = file_url(Path(scene).resolve())
            cache = Cache(cache_dir or default_cache_dir())
            found = resolve_scene(cache, scene_url, frame_list, resolver=resolver, path_map=rules)
    except JitrenderError as exc:
        _fail(exc)
    document = found.to_json(scene_url, frame_list)
    if as_json:
        _print_json(document)
    else:
        _print_deps_table(document)
    if check and found.missing:
        for dep in found.missing:
            typer.echo(f"jitrender: missing: {dep.url} (asked for by {dep.source})", err=True)
    if check and found.unresolved and not allow_unresolved:
        for item in found.unresolved:
            typer.echo(
                f"jitrender: unresolved: {item.source}: {item.value} ({item.why}); "
                "--allow-unresolved accepts it",
                err=True,
            )
    if check and (found.missing or (found.unresolved and not allow_unresolved)):
        raise typer.Exit(int(ExitCode.DATA))


def _print_deps_table(document: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{document['scene']} — {len(document['deps'])} dependencies")
    for column in ("url", "frames", "size", "exists", "source"):
        # A URL or source is folded onto more lines, never cut ("file:///show/te…" named no
        # file, and a pipe's width is 80).
        table.add_column(column, overflow="fold" if column in ("url", "source") else "ellipsis")
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
    watch: Annotated[
        bool, typer.Option("--watch", help="Look again every --interval s until complete.")
    ] = False,
    interval: Annotated[
        float | None, typer.Option("--interval", help="Seconds between looks (default 5).")
    ] = None,
    serve: Annotated[
        bool, typer.Option("--serve", help="Serve the status page and its JSON API.")
    ] = False,
    port: Annotated[
        int | None, typer.Option("--port", help="Port for --serve (0: any free; default 8470).")
    ] = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address for --serve (default 127.0.0.1).")
    ] = None,
) -> None:
    """Job-wide status from the bucket: frames done / running / failed / pending (markers),
    tasks and their heartbeats (stalled or lost after 3 intervals), render times, ETA, failure
    lines. --serve answers GET /api/jobs/<hash>/status with the same JSON and shows a page on /."""
    import time

    from jitrender.job import load_job
    from jitrender.status import StatusServer, job_status, text_lines

    try:
        # An option that only goes with another is refused without it, never taken and unused.
        if interval is not None and not watch:
            raise ConfigError(f"--interval {interval!r}: goes with --watch (give both)")
        for flag, value in (("--port", port), ("--host", host)):
            if value is not None and not serve:
                raise ConfigError(f"{flag} {value}: goes with --serve (give both)")
        if serve and (watch or as_json):
            raise ConfigError(
                f"--serve with {'--watch' if watch else '--json'}: the page serves its JSON "
                "and looks again itself; give --serve alone"
            )
        interval = 5.0 if interval is None else interval
        port = 8470 if port is None else port
        host = "127.0.0.1" if host is None else host
        if watch and not 0 < interval < float("inf"):  # 0 would ask storage without a pause
            raise ConfigError(f"--interval {interval!r}: must be a number of seconds above 0")
        if serve and not 0 <= port <= 65535:
            raise ConfigError(f"--port {port}: must be 0 (any free port) to 65535")
        job = load_job(job_file)
        frame_list = _frames(job, frames)
        if serve:
            try:
                server = StatusServer(job, frame_list, host, port)
            except OSError as exc:
                raise ConfigError(f"--serve on {host}:{port}: {exc.strerror or exc}") from None
            typer.echo(f"jitrender: status of {job.display_name} at {server.url}", err=True)
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                server.close()
            raise typer.Exit(0)
        while True:
            document = job_status(job, frame_list)
            if as_json:
                typer.echo(json.dumps(document, indent=None if watch else 2, default=str))
            else:
                typer.echo("\n".join(text_lines(document)))
            if not watch or document["complete"]:
                break
            time.sleep(interval)
    except JitrenderError as exc:
        _fail(exc)
    raise typer.Exit(0)


@app.command()
def logs(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml.", metavar="JOB")],
    frame: Annotated[
        int | None, typer.Option("--frame", help="Only the stage logs of this frame.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep printing what the logs gain (Ctrl-C stops).")
    ] = False,
) -> None:
    """Print the job's stage logs from the bucket (every run, every task, every attempt), each
    under a '==> task/run/file <==' header."""
    from jitrender.job import load_job
    from jitrender.joblogs import follow_logs, logs_prefix
    from jitrender.markers import marker_prefix
    from jitrender.storage import RetryPolicy, Stores

    seen: set[str] = set()
    try:
        job = load_job(job_file)
        prefix = logs_prefix(marker_prefix(job))
        store = Stores().for_url(prefix)
        for name, data in follow_logs(store, prefix, frame, RetryPolicy(), follow=follow):
            if name not in seen:
                seen.add(name)
                typer.echo(f"==> {name} <==")
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    except JitrenderError as exc:
        _fail(exc)
    except KeyboardInterrupt:
        raise typer.Exit(0) from None
    if not seen:
        which = f" of frame {frame}" if frame is not None else ""
        typer.echo(f"jitrender: no logs{which} under {prefix}", err=True)


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
def submit(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml to submit.", metavar="JOB")],
    # A value option's flag is its name, as typer spells it (time_limit: --time-limit).
    farm: Annotated[str, typer.Option(help="slurm | kubernetes | gcp-batch | aws-batch | openjd")],
    tasks: Annotated[int | None, typer.Option(help="Farm tasks to start.")] = None,
    chunk: Annotated[
        int | None, typer.Option(help="Frames per task (sets the task count).")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Print the farm's document; submit nothing.")
    ] = False,
    name: Annotated[str | None, typer.Option(help="Farm job name stem.")] = None,
    image: Annotated[str | None, typer.Option(help="Container image (container farms).")] = None,
    job_path: Annotated[
        str | None, typer.Option(help="The job file as the farm's nodes see it (gs:// too).")
    ] = None,
    queue: Annotated[
        str | None, typer.Option(help="Slurm partition / AWS Batch job queue.")
    ] = None,
    cpus: Annotated[int, typer.Option(help="CPUs per task.")] = 16,
    memory: Annotated[str, typer.Option(help="Memory per task, e.g. 60GB.")] = "60GB",
    time_limit: Annotated[int, typer.Option(help="Seconds one attempt may run.")] = 21600,
    parallelism: Annotated[int | None, typer.Option(help="Tasks at once (default: all).")] = None,
    max_retries: Annotated[
        int, typer.Option(help="Retries per task after exit 75 / preemption.")
    ] = 3,
    node_cache_dir: Annotated[
        str | None, typer.Option(help="Cache folder on the farm's nodes.")
    ] = None,
    jitrender_command: Annotated[
        str, typer.Option("--jitrender", help="Command that starts jitrender on a node.")
    ] = "jitrender",
    log_dir: Annotated[
        Path | None, typer.Option(parser=_given_path, help="Slurm log folder (created).")
    ] = None,
    bundle_dir: Annotated[
        Path | None, typer.Option(parser=_given_path, help="Where the OpenJD bundle is written.")
    ] = None,
    namespace: Annotated[str, typer.Option(help="Kubernetes namespace.")] = "default",
    kubernetes_version: Annotated[
        str, typer.Option(help="Oldest cluster version to target.")
    ] = "1.29",
    project: Annotated[str | None, typer.Option(help="GCP project.")] = None,
    region: Annotated[str | None, typer.Option(help="GCP / AWS region.")] = None,
) -> None:
    """Write the farm's own job for JOB (task count, exit-code retry policy, preemption) and
    submit it with the farm's client; prints the farm's job id and how to follow it."""
    from jitrender import submit as farms
    from jitrender.cache import parse_size
    from jitrender.job import load_job

    try:
        job = load_job(job_file)
        options = farms.SubmitOptions(
            farm=farm,
            tasks=tasks,
            chunk=chunk,
            name=name,
            image=image or farms.DEFAULT_IMAGE,
            job_path=job_path,
            queue=queue,
            cpus=cpus,
            memory_bytes=parse_size(memory, "--memory") or 0,
            time_limit_s=time_limit,
            parallelism=parallelism,
            max_retries=max_retries,
            cache_dir=node_cache_dir,
            jitrender=jitrender_command,
            log_dir=log_dir.resolve() if log_dir is not None else None,
            bundle_dir=bundle_dir,
            namespace=namespace,
            kubernetes_version=kubernetes_version,
            project=project,
            region=region,
        )
        document = farms.farm_job(job, options)  # the farm and its limits, then:
        farms.check_farm_options(
            farm,
            {
                "--queue": queue,
                "--image": image,
                "--log-dir": log_dir,
                "--bundle-dir": bundle_dir,
                "--project": project,
                "--region": region,
            },
        )
        if dry_run:
            if document.farm == "openjd" and bundle_dir is not None:
                farms.write_bundle(bundle_dir, document)
            typer.echo(document.document, nl=False)
            raise typer.Exit(0)
        farm_id = farms.submit(job, document, options)
    except JitrenderError as exc:
        _fail(exc)
    typer.echo(f"submitted {document.name} to {farm}: {farm_id}")
    typer.echo(f"{document.plan.count} tasks, {document.plan.frames} frames")
    typer.echo(f"follow it with: {farms.status_command(job)}")


@app.command()
def validate(
    job_file: Annotated[Path, typer.Argument(help="The job.yaml.", metavar="JOB")],
    frames: Annotated[
        str | None, typer.Option("--frames", "-f", help="Frames to check the stages for.")
    ] = None,
    as_json: JsonFlag = False,
    path_map: PathMapFlag = None,
    path_map_rules: PathMapRules = None,
) -> None:
    """Check a job without running it: every check `run` makes before it fetches (the job
    file, path mapping, output patterns, resolver and its extra, each stage's command and
    engine arguments). Exit 78 with the same line `run` would print."""
    import os
    import tempfile

    from jitrender.job import load_job
    from jitrender.preflight import check_job, planned_workspace

    try:
        job = load_job(job_file)
        job.use_path_map(_extra_path_map(path_map, path_map_rules))
        frame_list = _frames(job, frames)
        # The cache run would use ($JITRENDER_CACHE_DIR before the job's cache.dir, as run):
        # a file there is run's 78 too.
        named = os.environ.get("JITRENDER_CACHE_DIR")
        folder = job.cache_folder(Path(named) if named else None)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{folder}: cannot use as cache folder: it is not a folder")
        root = Path(tempfile.gettempdir()) / "jitrender-validate"
        check_job(job, frame_list, planned_workspace(job, root))
    except JitrenderError as exc:
        _fail(exc)  # with --json, its document too
    if as_json:
        _print_json(
            {
                "ok": True,
                "job": job.display_name,
                "job_hash": job.job_hash(),
                "scene": job.scene_url,
                "outputs": job.outputs_url,
                "frames": frame_list,
                "stages": [s.name for s in job.stages],
            }
        )
    else:
        typer.echo(f"{job_file}: ok ({len(frame_list)} frames, {len(job.stages)} stages)")


def _cache_action(
    action: str, cache_dir: Path | None, as_json: bool, max_size: str | None = None
) -> dict[str, Any]:
    """Run one maintenance action on the node's cache and print its result."""
    from jitrender.cache import Cache, holds_no_cache, parse_size
    from jitrender.cachelayout import default_cache_dir

    try:
        root = cache_dir or default_cache_dir()
        if holds_no_cache(root):  # (--cache-dir /tmp): no cache made among its files
            raise ConfigError(
                f"{root}: no jitrender cache there (no index.sqlite, objects/ or runs/), and it "
                f"holds other files (jitrender cache {action} works on a cache)"
            )
        cache = Cache(root, parse_size(max_size, "--max-size"))
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
    """Evict every entry no running job is using; forget the memo of job files read."""
    _cache_action("clear", cache_dir, as_json)


@app.command()
def health(
    cache_dir: CacheDir = None,
    as_json: JsonFlag = False,
    reset: Annotated[
        bool,
        typer.Option(
            "--reset", help="Forget the failure streak and blocked jobs (after repairing the node)."
        ),
    ] = False,
) -> None:
    """Is this node fit for work? Exit 0 healthy, 69 unhealthy (frames of several jobs failed
    in a row for the node's own reasons: signals, OOM, GPU/driver errors; drain it). Also
    lists the jobs this node has blocked. Reads health.json in the cache folder."""
    from jitrender.cachelayout import default_cache_dir
    from jitrender.health import NodeHealth

    try:
        root = cache_dir or default_cache_dir()
        if root.exists() and not root.is_dir():  # else read as a node with no record: healthy
            raise ConfigError(f"{root}: not a folder (the cache folder holds health.json)")
        node = NodeHealth(root)
    except ConfigError as exc:  # a threshold that is not a number
        _fail(exc)
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
            typer.echo(
                f"  {item['job_name']} frame {item['frame']}: {item.get('cause', '')}: "
                f"{item['why']}"
            )
        for job_hash, item in state["blocked_jobs"].items():
            typer.echo(
                f"  blocked job {item.get('job_name')} ({job_hash}): {item['failures']} failed "
                "frames here; it takes no more of its frames"
            )
    raise typer.Exit(0 if state["healthy"] else int(ExitCode.UNHEALTHY))


@app.command()
def assemble(
    job_file: Annotated[Path, typer.Argument(help="The split job's job.yaml.", metavar="JOB")],
    frames: Annotated[
        str | None, typer.Option("--frames", "-f", help="Frames to assemble (default: all).")
    ] = None,
    report: ReportFlag = None,
    as_json: JsonFlag = False,
    cache_dir: CacheDir = None,
    path_map: PathMapFlag = None,
    path_map_rules: PathMapRules = None,
) -> None:
    """Finish a split job's frames whose parts are all in the bucket but that no task
    assembled (its tasks were killed after the last part, say); renders nothing. Frames
    already done are skipped; a frame with a part missing fails (exit 65) naming it."""
    from jitrender.job import load_job
    from jitrender.run import RunOptions, run_job

    try:
        job = load_job(job_file)
        if job.split_stage is None:
            raise ConfigError(f"{job_file}: no stage has 'split': there is nothing to assemble")
        if report is not None and _same_file(report, job_file):
            raise ConfigError(f"--report {report}: is the job file (name another file)")
        frame_list = _frames(job, frames)
        options = RunOptions(
            frames=frame_list,
            parts=[],
            assemble_only=True,
            cache_dir=cache_dir,
            report_path=report,
            extra_path_map=_extra_path_map(path_map, path_map_rules),
        )
    except JitrenderError as exc:
        _fail(exc)
    result = run_job(job, options)
    if as_json:
        _print_json(result.to_json())
    assembled = (result.parts or {}).get("assembled", [])
    typer.echo(
        f"jitrender: {result.status}: {len(assembled)} frames assembled, "
        f"{len(result.skipped_already_done)} already done, {len(result.failed)} failed",
        err=True,
    )
    if result.error:
        typer.echo(f"jitrender: error: {result.error}", err=True)
    raise typer.Exit(result.exit_code)


def _version_info() -> dict[str, Any]:
    """The version, the Python running it, and which optional extras are importable."""
    import importlib.util
    import platform

    def present(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    return {
        "version": __version__,
        "python": platform.python_version(),
        "extras": {"blender": present("bpy"), "usd": present("pxr"), "fuse": present("mfusepy")},
    }


@app.command()
def version(as_json: JsonFlag = False) -> None:
    """Print the version (with --json: also the Python and the installed extras)."""
    if as_json:
        _print_json(_version_info())
    else:
        typer.echo(__version__)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def _options(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            is_eager=True,
            callback=_show_version,
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Just-in-time render node: fetch exactly the files a job's frames need into a shared
    node-local cache, render, and upload every output exactly once, as soon as it exists."""


def _app_for(args: list[str]) -> typer.Typer:
    """``app`` with only the command ``args`` name (typer builds each command's options on
    every start); ``app`` itself for help, ``--version``, a typo or no command."""
    from typer.main import get_command_name

    name = args[0] if args else ""
    for info in app.registered_commands:
        if (
            info.callback is not None
            and (info.name or get_command_name(info.callback.__name__)) == name
        ):
            light = typer.Typer(**_APP_SETTINGS)
            light.registered_callback = app.registered_callback
            light.registered_commands = [info]
            return light
    return app


def main(
    argv: list[str] | None = None,
    stop: "Stop | None" = None,
    head_start: "HeadStart | None" = None,
) -> None:
    """Entry point: usage errors exit 78 with one line, like every configuration error.
    ``stop``: the :class:`~jitrender.stopping.Stop` :mod:`jitrender.entry` holds for ``run``;
    ``head_start``: the storage requests it started (:mod:`jitrender.headstart`)."""
    args = sys.argv[1:] if argv is None else argv
    if stop is None and args[:1] == ["run"]:
        from jitrender.stopping import Stop  # light: no storage, job or typer-app imports

        # First, before the imports that take time and before the job is loaded, and kept
        # until the process exits: a SIGTERM at any moment ends with the report's exit code.
        stop = Stop().hold()
    json_lines = args[:1] == ["run"] and _json_progress(args)  # its failures: JSON lines too
    _JSON_FAILURES[:] = [_asks_json(args), args[:1] == ["run"]]
    try:
        # An int when a command raised Exit.
        code = _app_for(args)(args=args, standalone_mode=False, obj=(stop, head_start))
    except TyperException as exc:  # usage errors: unknown flag, bad value, missing argument
        if type(exc).__name__ == "NoArgsIsHelpError":
            typer.echo(exc.format_message())
            sys.exit(0)
        message = " ".join(exc.format_message().split())
        _json_document_of(f"{message} (see --help)", ExitCode.CONFIG)
        if json_lines:
            _json_failure(f"{message} (see --help)", ExitCode.CONFIG)
        typer.echo(f"jitrender: error: {message} (see --help)", err=True)
        sys.exit(int(ExitCode.CONFIG))
    except Abort:
        sys.exit(int(ExitCode.TEMPFAIL))
    except JitrenderError as exc:
        _json_document_of(exc.message, exc.exit_code)
        if json_lines:
            _json_failure(exc.message, exc.exit_code)
        typer.echo(f"jitrender: error: {exc.message}", err=True)
        sys.exit(int(exc.exit_code))
    sys.exit(code if isinstance(code, int) else 0)
