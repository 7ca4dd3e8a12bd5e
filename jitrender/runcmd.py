"""``jitrender run``'s body, and its arguments read without typer where their meaning is plain.

Every farm task starts with ``jitrender run``, so its start-up is paid by every frame. typer
0.29 reads a command's arguments through pydantic: it imports pydantic for that, and builds a
``TypeAdapter`` for each of the command's 16 parameters on every start. Without typer a warm
run's CPU went from 0.558 to 0.527 s (medians of 30 interleaved runs; the README's start-up
section). So :func:`parse` reads the argument list itself when every argument is in a form
whose meaning is not in doubt:

- the one JOB, and the run's own options as ``--name VALUE``, ``--name=VALUE`` or ``-f VALUE``;
- values that are plain text, or for the numbers plain digits (``--heartbeat-interval 2.5``);
- the two options' environment variables, read as click reads them (an empty one is unset).

Anything else (``--help``, ``--no-overwrite``, a misspelt or unknown option, a value that
starts with ``-`` or is empty, a number typer would have to judge, a second JOB) goes to typer,
which stays the command's definition and its only source of usage errors: :func:`parse`
returns None and :mod:`jitrender.cli` parses the same list as it always did. A test
(``tests/test_runargs.py``) checks that both read every generated argument list the same way
and that this table and typer's options agree, so the two cannot drift apart unseen.

No typer, rich or pydantic is imported here; the job's models import pydantic when the job is
loaded.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, cast

from jitrender.errors import ConfigError, ExitCode, JitrenderError

if TYPE_CHECKING:
    from jitrender.headstart import HeadStart
    from jitrender.job import Job
    from jitrender.stopping import Stop

# What each option of `jitrender run` is, as jitrender.cli declares it for typer: the
# parameter, its kind, its default and its environment variable.
_TEXT, _INT, _FLOAT, _PATH, _FLAG, _TEXTS = "text", "int", "float", "path", "flag", "texts"
OPTIONS: dict[str, tuple[str, str, Any, str | None]] = {
    "--frames": ("frames", _TEXT, None, None),
    "--task-index": ("task_index", _INT, None, None),
    "--task-count": ("task_count", _INT, None, None),
    "--report": ("report", _PATH, None, None),
    "--json": ("as_json", _FLAG, False, None),
    "--cache-dir": ("cache_dir", _PATH, None, "JITRENDER_CACHE_DIR"),
    "--cache-max-size": ("cache_max_size", _TEXT, None, None),
    "--overwrite": ("overwrite", _FLAG, False, None),
    "--rerender": ("rerender", _FLAG, False, None),
    "--keep-workspace": ("keep_workspace", _FLAG, False, None),
    "--progress": ("progress", _TEXT, "auto", None),
    "--path-map": ("path_map", _TEXTS, None, None),
    "--path-map-rules": ("path_map_rules", _PATH, None, None),
    "--heartbeat-interval": ("heartbeat_interval", _FLOAT, 10.0, "JITRENDER_HEARTBEAT_INTERVAL"),
    "--mount": ("mount", _PATH, None, None),
}
SHORT = {"-f": "--frames"}
_DIGITS = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,15})?")


def parse(args: Sequence[str], environ: Mapping[str, str]) -> dict[str, Any] | None:
    """The keyword arguments of :func:`run_command` that ``jitrender run ARGS`` means, or None
    where typer must judge the list (see the module's docstring)."""
    given: dict[str, Any] = {}
    jobs: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            jobs.extend(rest)
            break
        if not arg.startswith("-") or arg == "-":
            jobs.append(arg)
            continue
        name, eq, inline = arg.partition("=")
        if eq and not name.startswith("--"):
            return None  # -f=1: click reads "=1" as the value
        name = SHORT.get(name, name)
        spec = OPTIONS.get(name)
        if spec is None:
            return None
        param, kind, _, _ = spec
        if kind == _FLAG:
            if eq:
                return None
            given[param] = True
            continue
        if eq:
            text = inline
        elif rest:
            text = rest.pop(0)
        else:
            return None
        value = _value(kind, text)
        if value is None:
            return None
        if kind == _TEXTS:
            given.setdefault(param, []).append(value)
        else:
            given[param] = value  # the last one counts, as in click
    if len(jobs) != 1 or not _plain(jobs[0]):
        return None
    parsed: dict[str, Any] = {"job_file": Path(jobs[0])}
    for param, kind, default, envvar in OPTIONS.values():
        if param in given:
            parsed[param] = given[param]
            continue
        from_env = environ.get(envvar) if envvar else None
        if from_env:  # click: an empty variable is an unset one
            value = _value(kind, from_env)
            if value is None:
                return None
            parsed[param] = value
        else:
            parsed[param] = default
    return parsed


def _plain(text: str) -> bool:
    return bool(text) and not text.startswith("-") and "\x00" not in text


def _value(kind: str, text: str) -> Any:
    """``text`` as an option of ``kind`` takes it, or None where typer should judge it."""
    if not _plain(text):
        return None
    if kind == _INT:
        return int(text) if _DIGITS.fullmatch(text) else None
    if kind == _FLOAT:
        return float(text) if _DECIMAL.fullmatch(text) else None
    if kind == _PATH:
        return Path(text)
    return text  # _TEXT, _TEXTS


def main(args: Sequence[str], stop: Stop | None, head_start: HeadStart | None) -> bool:
    """Run ``jitrender run ARGS`` without typer where :func:`parse` reads ARGS, ending as
    :func:`jitrender.cli.main` ends it (SystemExit with the exit code, a one-line error);
    False, having done nothing, where typer must read them."""
    parsed = parse(args, os.environ)
    if parsed is None:
        return False
    try:
        run_command(**parsed, stop=stop, early=head_start)
    except JitrenderError as exc:
        if parsed["as_json"]:
            json_document(exc.message, exc.exit_code)
        if parsed["progress"] == "json":
            json_failure(exc.message, exc.exit_code)
        _fail(exc)
    except KeyboardInterrupt:  # as click's Abort: a line, then "try again"
        _say("")
        sys.exit(int(ExitCode.TEMPFAIL))
    return True


def json_progress(args: Sequence[str]) -> bool:
    """Whether ``run``'s arguments ``args`` ask for ``--progress json``."""
    import itertools

    return "--progress=json" in args or ("--progress", "json") in itertools.pairwise(args)


def json_failure(message: str, code: int) -> NoReturn:
    """The run's one ``result`` line, failed with ``code``, as ``--progress json`` writes every
    failure (nothing but JSON lines: a usage error too); then the exit."""
    from jitrender.progress import JsonProgress

    JsonProgress().event("result", status="failed", exit_code=int(code), error=message)
    sys.exit(int(code))


def _say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def json_document(message: str, code: int, *, run: bool = True) -> None:
    """``--json``'s one document on stdout for a command that failed: ``{"ok": false,
    "exit_code", "error"}``; a ``run``'s with ``status`` failed, as a report says it."""
    import json

    status = {"status": "failed"} if run else {}
    document = {"ok": False, **status, "exit_code": int(code), "error": message}
    sys.stdout.write(json.dumps(document, indent=2) + "\n")
    sys.stdout.flush()


def _fail(error: JitrenderError, as_json: bool = False) -> NoReturn:
    """The one line on stderr (with ``--json``, the document on stdout first); the exit."""
    if as_json:
        json_document(error.message, error.exit_code)
    _say(f"jitrender: error: {error.message}")
    sys.exit(int(error.exit_code))


def frames_of(job: Job, frames: str | None) -> list[int]:
    """The frames ``--frames`` names, or the job's own where it is not given. An empty one
    (``--frames "$FRAMES"`` with the variable unset) is an error, never all of the job."""
    from jitrender.sequences import parse_frames

    return job.frame_list() if frames is None else parse_frames(frames, "--frames")


def extra_path_map(pairs: list[str] | None, rules: Path | None) -> Any:
    """The ``--path-map`` pairs and ``--path-map-rules`` file as one map, or None."""
    from jitrender.paths import PathMap

    extra = PathMap.from_pairs(pairs or [])
    if rules is not None:  # the farm's rules run first: workstation paths -> this node's
        extra = extra.chained_after(PathMap.load_openjd(rules))
    return extra if extra else None


def run_command(
    *,
    job_file: Path,
    frames: str | None,
    task_index: int | None,
    task_count: int | None,
    report: Path | None,
    as_json: bool,
    cache_dir: Path | None,
    cache_max_size: str | None,
    overwrite: bool,
    rerender: bool,
    keep_workspace: bool,
    progress: str,
    path_map: list[str] | None,
    path_map_rules: Path | None,
    heartbeat_interval: float,
    mount: Path | None,
    stop: Stop | None,
    early: HeadStart | None,
) -> NoReturn:
    """Render a job: resolve, fetch just in time, run its stages, upload outputs exactly once.
    Ends with SystemExit carrying the run's exit code. ``stop``: the signals
    :mod:`jitrender.entry` holds; ``early``: the storage requests it started."""
    from jitrender.job import load_job
    from jitrender.progress import make_progress

    if progress not in ("auto", "rich", "plain", "json", "quiet"):
        wrong = ConfigError(f"--progress {progress!r}: use auto, rich, plain, json or quiet")
        _fail(wrong, as_json)
    stream = make_progress(progress)  # type: ignore[arg-type]
    try:
        if report is not None and report.is_dir():  # found now, not once the work is done
            raise ConfigError(f"--report {report}: is a folder (name the report's file)")
        if report is not None and same_file(report, job_file):  # the report replaced it
            raise ConfigError(f"--report {report}: is the job file (name another file)")
        if not (0 <= heartbeat_interval < float("inf")):  # nan too: never taken as "none"
            raise ConfigError(
                f"--heartbeat-interval (or JITRENDER_HEARTBEAT_INTERVAL): {heartbeat_interval!r}"
                " is not a number of seconds (0 or more; 0: no heartbeats)"
            )
        job = load_job(job_file, cache_dir)
        extra = extra_path_map(path_map, path_map_rules)
        head_start = _head_start(job, extra, early, cache_dir)  # before the imports
        if not job.outputs_url.startswith(("file://", "gs://")):
            from jitrender.preflight import check_storage  # the line `validate` gives

            check_storage(job)
        from jitrender.farm import detect_task, task_frames, task_parts

        # This task's frames, before the run's imports: the head start lists a manifest's
        # frame lines for them while those go on.
        frame_list = frames_of(job, frames)
        slot = detect_task(task_index, task_count, os.environ)
        task, parts = None, None
        split = job.split_stage
        if slot is not None and split is not None and split.split is not None:
            parts = task_parts(frame_list, split.split.parts, slot, job.chunk)
            frame_list = sorted({frame for frame, _ in parts})
            task = {"index": slot.index, "count": slot.count, "source": slot.source}
        elif slot is not None:
            frame_list = task_frames(frame_list, slot, job.chunk)
            task = {"index": slot.index, "count": slot.count, "source": slot.source}
        if head_start is not None:
            head_start.want_frames(frame_list)
        from jitrender.cache import parse_size
        from jitrender.heartbeat import TaskProgress
        from jitrender.run import RunOptions, run_job

        if early is not None:  # started by jitrender.entry, which paused garbage collection
            from jitrender.entry import imports_done

            imports_done()
        options = RunOptions(
            frames=frame_list,
            parts=parts,
            cache_dir=cache_dir,
            cache_max_bytes=parse_size(cache_max_size, "--cache-max-size", cache_dir),
            report_path=report,
            overwrite=overwrite,
            rerender=rerender,
            keep_workspace=keep_workspace,
            extra_path_map=extra,
            progress=stream,
            task=task,
            mount=mount,
            stop=stop,
            head_start=head_start,
            claim_interval_s=heartbeat_interval,  # claims' leases: as often as heartbeats
        )
        _refuse_if_unfit(job, cache_dir)
        heartbeat = None
        if heartbeat_interval > 0:
            heartbeat = _heartbeat(
                job, slot.index if slot else None, frame_list, heartbeat_interval
            )
            options.progress = TaskProgress(options.progress, heartbeat.state)
            heartbeat.start()
    except JitrenderError as exc:
        if progress == "json":  # only JSON lines on stderr, the failure included
            if as_json:
                json_document(exc.message, exc.exit_code)
            stream.event("result", status="failed", exit_code=int(exc.exit_code), error=exc.message)
            stream.close()
            sys.exit(int(exc.exit_code))
        stream.close()
        _fail(exc, as_json)
    final, error_text = "failed", cast(str | None, "internal error")  # unless run_job returns
    try:
        result = run_job(job, options)
        final, error_text = result.status, result.error
    except BaseException:
        stream.close()
        raise
    finally:
        if heartbeat is not None:
            heartbeat.stop(final, error_text)
    if as_json:
        import json

        sys.stdout.write(json.dumps(result.to_json(), indent=2, default=str) + "\n")
        sys.stdout.flush()
    summary = (
        f"{result.status}: {len(result.done)} frames rendered, "
        f"{len(result.skipped_already_done)} already done, {len(result.failed)} failed; "
        f"fetched {result.bytes_fetched} of {result.bytes_needed} bytes needed "
        f"({result.misses} files), {result.hits} cache hits; "
        f"{len(result.output_urls)} outputs"
    )
    if progress == "json":
        stream.event(
            "result",
            status=result.status,
            exit_code=result.exit_code,
            message=summary,
            error=result.error,
        )
    elif progress != "quiet":
        _say(f"jitrender: {summary}")
    stream.close()
    if result.error and progress != "json":  # quiet too: nothing on success, the cause on failure
        _say(f"jitrender: error: {result.error}")
    if result.status in ("preempted", "transient_failure"):
        # Storage threads that still hang must not hold the process past its deadline.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(result.exit_code)
    sys.exit(result.exit_code)


def same_file(one: Path, other: Path) -> bool:
    """Whether the two paths name one file (a report written there would replace the other)."""
    try:
        return os.path.samefile(one, other)
    except OSError:  # either is not there (yet): not the same file
        return False


def _head_start(
    job: Job, extra: Any, early: HeadStart | None, cache_dir: Path | None
) -> HeadStart | None:
    """The head start the entry point began, where it stats this job's scene; else one for
    the scene's stat (and its bytes, where the job's node cache lacks a small scene) and its
    storage's connections, started now (see :mod:`jitrender.headstart`). None where there is
    no remote scene or its URL does not map."""
    try:
        job.use_path_map(extra)  # the URL the run will ask for (it sets the same)
        url = job.scene_url
    except JitrenderError:  # the run says what is wrong, in its report
        return None
    if url is None or not url.startswith("gs://"):
        return early  # nothing to stat: still its stores (and their connections) if any
    if early is not None and early.asks_for(url):
        return early
    from jitrender.headstart import HeadStart
    from jitrender.storage import Stores

    stores = early.stores if early else Stores()
    late = HeadStart(stores, urls=[url], cache_dir=job.cache_folder(cache_dir)).start()
    # Its thread imports its HTTP client alone first, as jitrender.entry lets the early one:
    # shared with the run's own imports, its stat went out after the run's first request.
    late.imported.wait(5.0)  # imports only: bounded against the unforeseen
    return late


def _refuse_if_unfit(job: Any, cache_dir: Path | None) -> None:
    """A drained node, or one that blocked this job, starts nothing (exit 69)."""
    from jitrender.errors import NodeUnavailable
    from jitrender.health import NodeHealth

    why = NodeHealth(job.cache_folder(cache_dir)).refusal(job.job_hash())
    if why is not None:
        raise NodeUnavailable(why)


def _heartbeat(job: Any, slot_index: int | None, frames: list[int], interval: float) -> Any:
    from jitrender.heartbeat import for_run
    from jitrender.markers import marker_prefix
    from jitrender.outputs import OutputPatterns

    patterns = OutputPatterns(job.outputs.files)
    return for_run(
        f"{marker_prefix(job)}tasks/",
        job.outputs_url,
        patterns.frame_of,
        slot_index,
        frames,
        interval,
        os.environ,
    )
