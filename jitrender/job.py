"""The job.yaml schema (version 1): a job's values as plain dataclasses.

A job file is read and checked by :mod:`jitrender.jobcheck` (PyYAML, then pydantic, the
``Annotated`` constraints below and the ``__post_init__`` checks): every mistake in a job file
becomes one :class:`ConfigError` line that names the file, the line, the key and what is
wrong; never a traceback.

The values a job file's bytes were checked into are kept in a memo in the node cache (see
:mod:`jitrender.memo`): every farm task of a job landing on a node reads the same file, and only the
first one parses and validates it. The others read the memo and import neither PyYAML nor
pydantic, which were about 130 ms of every start. The classes are stdlib dataclasses, not
pydantic models, so that a memo's values are rebuilt without pydantic.
"""

import hashlib
import json
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Annotated, Any, Literal

from jitrender import memo
from jitrender.errors import ConfigError
from jitrender.paths import PathMap, PathRule, file_url, is_url, rule_from
from jitrender.sequences import parse_frames


class Rule:
    """A field's pydantic constraints (``Field``'s keywords) and after-validators, read only
    when pydantic builds the schema: a job read from the memo imports no pydantic."""

    __slots__ = ("checks", "constraints")

    def __init__(self, *checks: Callable[[Any], Any], **constraints: Any) -> None:
        self.checks = checks
        self.constraints = constraints

    def __get_pydantic_core_schema__(self, source: Any, handler: Any) -> Any:
        from pydantic import AfterValidator, Field

        marks: list[Any] = [Field(**self.constraints)] if self.constraints else []
        marks.extend(AfterValidator(check) for check in self.checks)
        return handler(Annotated[(source, *marks)])


def _strict(**more: Any) -> dict[str, Any]:
    """A model's pydantic config: unknown keys are mistakes."""
    return {"extra": "forbid", **more}


def _alias(name: str) -> str:
    return "from" if name == "from_" else name


@dataclass
class PathRuleSpec:
    """``from`` (a path prefix as written in scenes) -> ``to`` (a URL prefix)."""

    __pydantic_config__ = _strict(populate_by_name=True, alias_generator=_alias)
    from_: Annotated[str, Rule(min_length=1)]
    to: Annotated[str, Rule(min_length=1)]
    format: Literal["posix", "windows", "auto"] = "auto"


def _env_checked(env: dict[str, str]) -> dict[str, str]:
    """Environment names and values a process can be given: a name is not empty and holds no
    '=' or NUL; a value holds no NUL (else the stage could not start: a traceback, exit 70)."""
    for name, value in env.items():
        if not name or "=" in name or "\0" in name:
            raise ValueError(f"{name!r} is not an environment variable name")
        if "\0" in value:
            raise ValueError(f"{name}: a value cannot hold a NUL character")
    return env


@dataclass
class DepSpec:
    """An extra dependency listed by hand: one file (may hold frame/UDIM tokens) or a prefix."""

    __pydantic_config__ = _strict()
    path: str | None = None
    prefix: str | None = None
    frames: str | None = None  # the frames that need it; default: every frame

    def __post_init__(self) -> None:
        if (self.path is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'path' or 'prefix'")
        if self.frames is not None:  # checked now, as the job's own frames are (not at fetch)
            try:
                _frames_parse(self.frames)
            except ValueError as exc:
                raise ValueError(f"frames: {exc}") from None


def _two_counts(value: list[int] | None) -> list[int] | None:
    if value is not None and (len(value) != 2 or min(value) < 1):
        raise ValueError(f"tiles is [columns, rows], each at least 1, not {value}")
    return value


@dataclass
class SplitSpec:
    """One frame rendered as parts on many tasks: ``tiles: [X, Y]`` regions (each grown by
    ``overscan`` pixels on every inner side) or ``samples: N`` disjoint Cycles sample subsets."""

    __pydantic_config__ = _strict()
    tiles: Annotated[list[int] | None, Rule(_two_counts)] = None
    overscan: Annotated[int | None, Rule(ge=0)] = None
    samples: Annotated[int | None, Rule(ge=1)] = None

    def __post_init__(self) -> None:
        if (self.tiles is None) == (self.samples is None):
            raise ValueError("give exactly one of 'tiles' or 'samples'")
        if self.overscan is not None and self.tiles is None:
            raise ValueError("'overscan' goes with 'tiles' (sample parts cover the whole frame)")

    @property
    def parts(self) -> int:
        """How many parts one frame is rendered as."""
        if self.tiles is not None:
            return self.tiles[0] * self.tiles[1]
        return self.samples or 1


@dataclass
class StageSpec:
    """One stage: a command template or a built-in engine, run per frame or once per chunk."""

    __pydantic_config__ = _strict()
    name: Annotated[str, Rule(min_length=1)]
    per: Literal["frame", "chunk"] = "frame"
    command: str | list[str] | None = None
    engine: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    env: Annotated[dict[str, str], Rule(_env_checked)] = field(default_factory=dict)
    timeout: Annotated[float | None, Rule(gt=0)] = None
    split: SplitSpec | None = None  # see jitrender.split

    def __post_init__(self) -> None:
        problem = _stage_name_problem(self.name)
        if problem is not None:
            raise ValueError(problem)
        if self.command is None and self.engine is None:
            raise ValueError("give a 'command' or an 'engine'")
        if isinstance(self.command, str) and not self.command.strip():
            raise ValueError("'command' is empty")
        if self.engine in (None, "command") and self.args:
            raise ValueError(
                f"args ({', '.join(map(str, self.args))}): the 'command' engine takes no args "
                "(write the values into 'command')"
            )
        if self.command is not None and self.engine not in (None, "command"):
            raise ValueError(f"'command' goes with engine 'command', not {self.engine!r}")
        if isinstance(self.command, list) and not self.command:
            raise ValueError("'command' is an empty list")
        if isinstance(self.command, list) and not self.command[0].strip():
            raise ValueError("'command' names no program: its first item is empty")
        if self.split is not None and (self.engine != "blender" or self.per != "frame"):
            raise ValueError(
                f"split: only a per-frame 'blender' engine stage renders parts, not "
                f"{self.engine or 'command'!r} per {self.per}"
            )
        engine = self.args.get("engine", "CYCLES")
        if self.split is not None and str(engine).upper() != "CYCLES":
            raise ValueError(f"split: parts render with Cycles only, not args.engine {engine!r}")


def _stage_name_problem(name: str) -> str | None:
    """What makes ``name`` unfit to name a stage, or None. A stage's name is part of its log
    files' and stage markers' names: a '/' would put them in other folders (``../x``: outside
    the workspace's logs/), so names are plain words."""
    if name in (".", "..") or any(c in name for c in "/\\") or not name.isprintable():
        return (
            f"name {name!r}: a stage's name is a plain word (no slash or backslash, no control "
            "characters, not only dots); it names the stage's log files and markers"
        )
    return None


def _every_file() -> list[str]:
    return ["**/*"]


@dataclass
class OutputsSpec:
    """Which workspace files are outputs (patterns below ``outputs/``) and where they go."""

    __pydantic_config__ = _strict()
    to: Annotated[str, Rule(min_length=1)]
    files: Annotated[list[str], Rule(min_length=1)] = field(default_factory=_every_file)
    # A prefix for the passes a checkpointing renderer writes before its final one (optional).
    checkpoints: Annotated[str | None, Rule(min_length=1)] = None


@dataclass
class CacheSpec:
    __pydantic_config__ = _strict()
    dir: str | None = None
    max_size: str | int | None = None


@dataclass
class RetriesSpec:
    """``frame``: extra attempts per frame. ``storage_deadline``: seconds a storage call keeps
    retrying transient failures (jittered exponential backoff); ``storage``: an optional cap
    on its attempts within that deadline."""

    __pydantic_config__ = _strict()
    frame: Annotated[int, Rule(ge=0, le=100)] = 1
    storage: Annotated[int | None, Rule(ge=1, le=1000)] = None
    storage_deadline: Annotated[float, Rule(gt=0, le=3600)] = 120.0


def _is_openjd(document: dict[str, Any]) -> bool:
    """An Open Job Description path-mapping document (``{}`` is one: a farm with no rules)."""
    return not document or "path_mapping_rules" in document or "version" in document


def _path_map_readable(
    value: list[PathRuleSpec] | dict[str, Any],
) -> list[PathRuleSpec] | dict[str, Any]:
    """The mapping form ``{FROM: TO}`` or an OpenJD document; never read as nothing."""
    if not isinstance(value, dict):
        return value
    try:
        if _is_openjd(value):
            PathMap.from_openjd(value, "path_map")
        else:
            PathMap.from_mapping(value, "path_map")
    except ConfigError as exc:
        raise ValueError(exc.message.removeprefix("path_map: ")) from None
    return value


def _frames_parse(value: str | int) -> str | int:
    try:
        parse_frames(value)
    except ConfigError as exc:
        raise ValueError(exc.message.removeprefix("frames: ")) from None
    return value


def _unique_stage_names(stages: list[StageSpec]) -> list[StageSpec]:
    names = [s.name for s in stages]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"stage names must be unique; repeated: {', '.join(dupes)}")
    split = [s.name for s in stages if s.split is not None]
    if split and len(stages) > 1:
        raise ValueError(
            f"stage {split[0]!r} has 'split': a split job has that one render stage only "
            "(its parts are assembled, denoised and composited by jitrender)"
        )
    return stages


@dataclass(kw_only=True)
class Job:
    """A render job. ``source`` is the job file it came from (not part of the schema)."""

    __pydantic_config__ = _strict()
    version: Literal[1] = 1
    name: Annotated[str | None, Rule(min_length=1)] = None
    scene: str | None = None
    resolver: str = "auto"
    frames: Annotated[str | int, Rule(_frames_parse)]
    chunk: Annotated[int | None, Rule(ge=1)] = None  # frames per farm task, split by index
    path_map: Annotated[list[PathRuleSpec] | dict[str, Any], Rule(_path_map_readable)] = field(
        default_factory=list
    )
    deps: list[str | DepSpec] = field(default_factory=list)
    stages: Annotated[list[StageSpec], Rule(_unique_stage_names, min_length=1)]
    outputs: OutputsSpec
    cache: CacheSpec = field(default_factory=CacheSpec)
    retries: RetriesSpec = field(default_factory=RetriesSpec)
    env: Annotated[dict[str, str], Rule(_env_checked)] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.source: Path | None = None
        # Rules from outside the job (--path-map, a farm's OpenJD rules): see use_path_map().
        self._extra_map: PathMap | None = None
        self._map: PathMap | None = None

    def with_values(self, **values: Any) -> "Job":
        """A copy with some keys set otherwise (``deps --scene``), from the same file."""
        copy = replace(self, **values)
        copy.source = self.source
        copy.use_path_map(self._extra_map)
        return copy

    # -- derived values ------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The folder URL that relative paths in the job file start from."""
        folder = self.source.parent if self.source is not None else Path.cwd()
        return file_url(folder)

    def resolve_url(self, value: str) -> str:
        """A URL as given in the job: absolute URL, a path the job's path mapping (with the
        farm's and ``--path-map`` rules) maps, an absolute path, or relative to the job file."""
        if is_url(value):
            return value
        mapping = self.path_mapping()
        if mapping.is_mapped(value):
            return mapping.to_url(value)
        return self._plain_url(value)

    def _plain_url(self, value: str) -> str:
        if is_url(value):
            return value
        path = Path(value)
        if not path.is_absolute():
            base = self.source.parent if self.source is not None else Path.cwd()
            path = base / path
        return file_url(path.resolve())

    @property
    def scene_url(self) -> str | None:
        return self.resolve_url(self.scene) if self.scene is not None else None

    @property
    def checkpoints_url(self) -> str | None:
        """Where intermediate passes go (``outputs.checkpoints``), or None."""
        if self.outputs.checkpoints is None:
            return None
        return self.resolve_url(self.outputs.checkpoints).rstrip("/")

    @property
    def outputs_url(self) -> str:
        return self.resolve_url(self.outputs.to).rstrip("/")

    def frame_list(self) -> list[int]:
        return parse_frames(self.frames)

    def cache_folder(self, override: Path | None = None) -> Path:
        """The node cache this job uses: ``override`` (``--cache-dir``), else the job's
        ``cache.dir``, else the default (``$JITRENDER_CACHE_DIR`` or ~/.cache/jitrender)."""
        if override is not None:
            return override
        if self.cache.dir:
            return Path(self.cache.dir).expanduser()
        from jitrender.cachelayout import default_cache_dir

        return default_cache_dir()

    def use_path_map(self, extra: PathMap | None) -> None:
        """Add rules from outside the job file: ``--path-map`` pairs join the job's rules
        (longest prefix wins; on a tie the flag's), a farm's OpenJD rules (``extra.before``)
        run first. The scene, deps and outputs all go through the result."""
        self._extra_map = extra
        self._map = None

    def path_mapping(self) -> PathMap:
        """The job's rules, with those given by :meth:`use_path_map`."""
        if self._map is not None:
            return self._map
        where = f"{self.source or 'job'}: path_map"
        if isinstance(self.path_map, dict):
            if _is_openjd(self.path_map):
                own = PathMap.from_openjd(self.path_map, where)
            else:
                own = PathMap.from_mapping(self.path_map, where, self._plain_url)
        else:
            rules: list[PathRule] = []
            for spec in self.path_map:
                rule = rule_from(spec.from_, self._plain_url(spec.to))
                if spec.format != "auto":
                    rule = PathRule(rule.source, rule.destination, spec.format)
                rules.append(rule)
            own = PathMap(rules)
        self._map = own.merged(self._extra_map) if self._extra_map is not None else own
        return self._map

    def job_hash(self) -> str:
        """Identity of what the job produces: the scene (its URL), how inputs are found
        (resolver, path mapping, extra deps), each stage's name, granularity, command or
        engine, args and env, the job's env and the outputs (where, which files). Not the
        frame range, the name, stage timeouts, retries, the cache or the task split: editing
        those keeps the job's markers and outputs. (Markers are named by it: the same job must
        hash the same in every version; ``tests/test_job_hash.py`` holds hashes to that.)"""
        shape = asdict(self)
        if not _plain(shape):  # YAML's dates and the like: as pydantic writes them in JSON
            from jitrender.jobcheck import json_values

            shape = json_values(self)
        for key in ("frames", "cache", "retries", "chunk", "name"):
            shape.pop(key)
        if isinstance(shape["path_map"], list):
            for rule in shape["path_map"]:
                rule["from"] = rule.pop("from_", rule.get("from"))
        for stage in shape["stages"]:
            stage.pop("timeout", None)  # how long to wait changes no pixel
            if stage.get("split") is None:
                stage.pop("split", None)  # unsplit jobs keep the hash they had before split:
        shape["scene"] = self.scene_url
        shape["outputs"]["to"] = self.outputs_url
        shape["outputs"].pop("checkpoints", None)  # where previews go changes no final pixel
        canonical = json.dumps(shape, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]

    @property
    def split_stage(self) -> StageSpec | None:
        """The stage whose frames are rendered as parts (``split:``), or None."""
        return next((s for s in self.stages if s.split is not None), None)

    @property
    def display_name(self) -> str:
        if self.name:
            return self.name
        return self.source.stem if self.source is not None else "job"


# -- loading -------------------------------------------------------------------------------


def load_job(path: Path, cache_dir: Path | None = None) -> Job:
    """Read and validate a job file. Raises :class:`ConfigError` with one line on any mistake.

    A file whose bytes were validated before on this node (by this jitrender and this
    pydantic) is rebuilt from the memo of its values instead, and is the same job. The memo
    is in the node cache ``cache_dir`` (``--cache-dir``; else ``$JITRENDER_CACHE_DIR`` or the
    default), and kept only where the job uses that cache."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read job file: {exc}") from None
    kept = memo.at("job", data, cache_dir)
    job = _recalled(kept) if kept is not None else None
    if job is None:
        from jitrender.jobcheck import checked_job

        job = checked_job(path, data)
        # Not for a job whose own cache.dir is another cache than the one looked in.
        if kept is not None and (
            kept.cache is None or kept.cache.absolute() == job.cache_folder(cache_dir).absolute()
        ):
            _remember(kept, job)
    job.source = path.resolve()
    return job


# -- the memo of checked jobs (see jitrender.memo) ---------------------------------------


def _recalled(kept: memo.Memo) -> Job | None:
    values = kept.recall()
    if values is None:
        return None
    try:
        job = _rebuilt(Job, values)
    except Exception:  # any memo that does not read back is no memo
        return None
    return job if isinstance(job, Job) else None


def _remember(kept: memo.Memo, job: Job) -> None:
    """Keep the job's values where JSON keeps them unchanged (not YAML's dates)."""
    values = asdict(job)
    if not _plain(values):
        return
    text = json.dumps(values, allow_nan=False)  # in order: a dict's order is kept
    if _rebuilt(Job, json.loads(text)) == job:
        kept.remember(text)


def _plain(value: Any) -> bool:
    """Whether ``value`` is JSON's own: str-keyed dicts, lists, text, finite numbers, bools,
    None (so it reads back from JSON as the same values)."""
    if value is None or isinstance(value, (str, bool, int)):
        return True
    if isinstance(value, float):
        return value - value == 0  # not inf or nan
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _rebuilt(kind: Any, value: Any) -> Any:
    """``value`` (JSON of :func:`dataclasses.asdict`) as the ``kind`` it was."""
    if value is None:
        return None
    if isinstance(kind, type) and is_dataclass(kind):
        known = {f.name: f.type for f in fields(kind)}
        return kind(**{name: _rebuilt(known[name], v) for name, v in value.items()})
    origin = typing.get_origin(kind)
    if origin is Annotated:
        return _rebuilt(typing.get_args(kind)[0], value)
    if origin is list:
        (item,) = typing.get_args(kind)
        return [_rebuilt(item, v) for v in value]
    if origin is types.UnionType:
        for arg in typing.get_args(kind):
            if isinstance(value, dict) and isinstance(arg, type) and is_dataclass(arg):
                return _rebuilt(arg, value)
            if isinstance(value, list) and typing.get_origin(arg) is list:
                return _rebuilt(arg, value)
    return value
