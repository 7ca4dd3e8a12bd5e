"""The job.yaml schema (version 1), validated with pydantic. Pure: reads the file, nothing else.

Every mistake in a job file becomes one :class:`ConfigError` line that names the file, the
line, the key and what is wrong; never a traceback.

Built cheaply, since every command starts by loading a job: annotations are objects, not
strings (pydantic compiled each string again: 12 ms a start), and default factories are
lambdas (pydantic inspects a factory's signature; a builtin's is parsed from text).
"""

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from jitrender.errors import ConfigError
from jitrender.paths import PathMap, PathRule, file_url, is_url, rule_from, split_url
from jitrender.sequences import parse_frames

_STRICT = ConfigDict(extra="forbid", populate_by_name=True)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: much faster


class PathRuleSpec(BaseModel):
    """``from`` (a path prefix as written in scenes) -> ``to`` (a URL prefix)."""

    model_config = _STRICT
    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)
    format: Literal["posix", "windows", "auto"] = "auto"


class DepSpec(BaseModel):
    """An extra dependency listed by hand: one file (may hold frame/UDIM tokens) or a prefix."""

    model_config = _STRICT
    path: str | None = None
    prefix: str | None = None
    frames: str | None = None  # the frames that need it; default: every frame

    @model_validator(mode="after")
    def _one_of(self) -> "DepSpec":
        if (self.path is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'path' or 'prefix'")
        return self


class SplitSpec(BaseModel):
    """One frame rendered as parts on many tasks: ``tiles: [X, Y]`` regions (each grown by
    ``overscan`` pixels on every inner side) or ``samples: N`` disjoint Cycles sample subsets."""

    model_config = _STRICT
    tiles: list[int] | None = None
    overscan: int | None = Field(default=None, ge=0)
    samples: int | None = Field(default=None, ge=1)

    @field_validator("tiles")
    @classmethod
    def _two_counts(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and (len(value) != 2 or min(value) < 1):
            raise ValueError(f"tiles is [columns, rows], each at least 1, not {value}")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "SplitSpec":
        if (self.tiles is None) == (self.samples is None):
            raise ValueError("give exactly one of 'tiles' or 'samples'")
        if self.overscan is not None and self.tiles is None:
            raise ValueError("'overscan' goes with 'tiles' (sample parts cover the whole frame)")
        return self

    @property
    def parts(self) -> int:
        """How many parts one frame is rendered as."""
        if self.tiles is not None:
            return self.tiles[0] * self.tiles[1]
        return self.samples or 1


class StageSpec(BaseModel):
    """One stage: a command template or a built-in engine, run per frame or once per chunk."""

    model_config = _STRICT
    name: str = Field(min_length=1)
    per: Literal["frame", "chunk"] = "frame"
    command: str | list[str] | None = None
    engine: str | None = None
    args: dict[str, Any] = Field(default_factory=lambda: {})
    env: dict[str, str] = Field(default_factory=lambda: {})
    timeout: float | None = Field(default=None, gt=0)
    split: SplitSpec | None = None  # see jitrender.split

    @model_validator(mode="after")
    def _command_or_engine(self) -> "StageSpec":
        if self.command is None and self.engine is None:
            raise ValueError("give a 'command' or an 'engine'")
        if self.command is not None and self.engine not in (None, "command"):
            raise ValueError(f"'command' goes with engine 'command', not {self.engine!r}")
        if isinstance(self.command, list) and not self.command:
            raise ValueError("'command' is an empty list")
        if self.split is not None and (self.engine != "blender" or self.per != "frame"):
            raise ValueError(
                f"split: only a per-frame 'blender' engine stage renders parts, not "
                f"{self.engine or 'command'!r} per {self.per}"
            )
        engine = self.args.get("engine", "CYCLES")
        if self.split is not None and str(engine).upper() != "CYCLES":
            raise ValueError(f"split: parts render with Cycles only, not args.engine {engine!r}")
        return self


class OutputsSpec(BaseModel):
    """Which workspace files are outputs (patterns below ``outputs/``) and where they go."""

    model_config = _STRICT
    to: str = Field(min_length=1)
    files: list[str] = Field(default_factory=lambda: ["**/*"], min_length=1)
    # A prefix for the passes a checkpointing renderer writes before its final one (optional).
    checkpoints: str | None = Field(default=None, min_length=1)


class CacheSpec(BaseModel):
    model_config = _STRICT
    dir: str | None = None
    max_size: str | int | None = None


class RetriesSpec(BaseModel):
    """``frame``: extra attempts per frame. ``storage_deadline``: seconds a storage call keeps
    retrying transient failures (jittered exponential backoff); ``storage``: an optional cap
    on its attempts within that deadline."""

    model_config = _STRICT
    frame: int = Field(default=1, ge=0, le=100)
    storage: int | None = Field(default=None, ge=1, le=1000)
    storage_deadline: float = Field(default=120.0, gt=0, le=3600)


class Job(BaseModel):
    """A render job. ``source`` is the job file it came from (not part of the schema)."""

    model_config = _STRICT
    version: Literal[1] = 1
    name: str | None = None
    scene: str | None = None
    resolver: str = "auto"
    frames: str | int
    chunk: int | None = Field(default=None, ge=1)  # frames per farm task, when split by index
    path_map: list[PathRuleSpec] | dict[str, Any] = Field(default_factory=lambda: [])
    deps: list[str | DepSpec] = Field(default_factory=lambda: [])
    stages: list[StageSpec] = Field(min_length=1)
    outputs: OutputsSpec
    cache: CacheSpec = Field(default_factory=lambda: CacheSpec())
    retries: RetriesSpec = Field(default_factory=lambda: RetriesSpec())
    env: dict[str, str] = Field(default_factory=lambda: {})

    source: Path | None = Field(default=None, exclude=True)
    # Rules from outside the job (--path-map, a farm's OpenJD rules): see use_path_map().
    _extra_map: PathMap | None = PrivateAttr(default=None)
    _map: PathMap | None = PrivateAttr(default=None)

    @field_validator("path_map")
    @classmethod
    def _path_map_readable(
        cls, value: list[PathRuleSpec] | dict[str, Any]
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

    @field_validator("frames")
    @classmethod
    def _frames_parse(cls, value: str | int) -> str | int:
        try:
            parse_frames(value)
        except ConfigError as exc:
            raise ValueError(exc.message.removeprefix("frames: ")) from None
        return value

    @field_validator("stages")
    @classmethod
    def _unique_stage_names(cls, stages: list[StageSpec]) -> list[StageSpec]:
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
        those keeps the job's markers and outputs."""
        shape = self.model_dump(
            mode="json",
            by_alias=True,
            exclude={"frames", "cache", "retries", "chunk", "name", "source"},
        )
        for stage in shape["stages"]:
            stage.pop("timeout", None)  # how long to wait changes no pixel
        shape["scene"] = self.scene_url
        for stage in shape["stages"]:
            if stage.get("split") is None:
                stage.pop("split", None)  # unsplit jobs keep the hash they had before split:
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


def _is_openjd(document: dict[str, Any]) -> bool:
    """An Open Job Description path-mapping document (``{}`` is one: a farm with no rules)."""
    return not document or "path_mapping_rules" in document or "version" in document


# -- loading -------------------------------------------------------------------------------


def load_job(path: Path) -> Job:
    """Read and validate a job file. Raises :class:`ConfigError` with one line on any mistake."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: job file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read job file: {exc}") from None
    try:
        data = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a job file is a YAML mapping (key: value lines)")
    if _expanded_size_exceeds(data, MAX_DOCUMENT_NODES):
        raise ConfigError(
            f"{path}: the document expands to more than {MAX_DOCUMENT_NODES} values "
            "(YAML aliases repeating aliases?); refusing it"
        )
    yes_no = _yes_no_at(data, [])
    if yes_no is not None:
        line = _line_of(yaml.compose(text), yes_no)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{where}: {_format_loc(yes_no)}: YAML read a yes/no word here (yes/no, on/off, "
            "true/false); write the number or text this key takes, or quote the word"
        )
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        node = yaml.compose(text)  # only now: positions for the error message
        raise ConfigError(_one_line(path, node, exc)) from None
    problem = unsafe_paths(job)
    if problem is not None:
        loc, message = problem
        line = _line_of(yaml.compose(text), loc)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {_format_loc(loc)}: {message}")
    job.source = path.resolve()
    return job


# A job file is a few hundred values; a million means an alias bomb, not a job.
MAX_DOCUMENT_NODES = 1_000_000


def _yes_no_at(data: Any, loc: list[Any]) -> list[Any] | None:
    """Where a yes/no value stands in a job's data, or None. No key of a job takes one: YAML
    reads ``yes``, ``on`` and ``true`` as True, which pydantic would take as 1 (``frames: yes``
    rendered frame 1, ``chunk: true`` meant a frame a task). A stage's ``args`` (an engine's
    own settings) and an OpenJD ``path_map`` document keep theirs."""
    if isinstance(data, bool):
        return loc
    if isinstance(data, dict):
        for key, value in data.items():
            if (key == "args" and loc[:1] == ["stages"]) or (key == "path_map" and not loc):
                continue
            found = _yes_no_at(value, [*loc, key])
            if found is not None:
                return found
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found = _yes_no_at(value, [*loc, index])
            if found is not None:
                return found
    return None


def _expanded_size_exceeds(data: Any, limit: int) -> bool:
    """True when the loaded document, with every alias expanded, holds more than ``limit``
    values. Counts shared (aliased) containers each time they appear, as any consumer walking
    the document would, and stops as soon as the limit is passed (so a bomb costs ``limit``)."""
    count = 0
    stack = [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > limit:
            return True
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, str):
            count += len(item) // 1024  # a long string counts by its size too
    return False


def unsafe_paths(job: Job) -> tuple[list[str | int], str] | None:
    """The first output setting that could write outside the outputs prefix, as (key path,
    what is wrong); None when every one stays inside. Outputs patterns are relative to
    ``outputs/`` and may not climb out of it; ``outputs.to`` names a bucket and holds no
    ``.`` or ``..`` segment."""
    for index, pattern in enumerate(job.outputs.files):
        posix = pattern.replace("\\", "/")
        if posix.startswith("/") or (len(posix) > 1 and posix[1] == ":"):
            return ["outputs", "files", index], (
                f"{pattern!r} is an absolute path; output patterns are relative to the "
                "workspace's outputs/ folder"
            )
        if ".." in posix.split("/"):
            return ["outputs", "files", index], (
                f"{pattern!r} climbs out of outputs/ with '..'; output patterns stay below it"
            )
    target = job.outputs.to
    if is_url(target):
        scheme, netloc, rest = split_url(target)
        if scheme != "file" and not netloc:
            return [
                "outputs",
                "to",
            ], f"{target!r} names no bucket (write e.g. {scheme}://bucket/renders)"
        if any(part in (".", "..") for part in rest.split("/")):
            return ["outputs", "to"], (
                f"{target!r} holds a '.' or '..' segment; name the prefix itself"
            )
    return None


def _one_line(path: Path, node: yaml.Node | None, exc: ValidationError) -> str:
    errors = exc.errors()
    # A misspelt key is the likely cause of a missing one: say it first.
    error = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    loc = [part for part in error["loc"] if not (isinstance(part, str) and "[" in part)]
    loc = [
        p for p in loc if p not in ("str", "int", "list[PathRuleSpec]", "dict[str,any]", "DepSpec")
    ]
    key = _format_loc(loc)
    line = _line_of(node, loc)
    where = f"{path}:{line}" if line else str(path)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        near = _near_keys(loc)
        message = (
            f"unknown key (did you mean {near}?)"
            if near
            else "unknown key (check its spelling and the job.yaml reference in the README)"
        )
    elif error["type"] == "missing":
        message = "required key is missing"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {key or 'job'}: {message}{more}"


def _near_keys(loc: list[Any]) -> str | None:
    """The keys of the model at ``loc``'s place closest to its last part (a misspelling of one
    of them), quoted (``'a' or 'b'``), or None."""
    import difflib

    model: Any = Job
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(part, str) else None
        model = _model_in(field.annotation) if field is not None else None
        if model is None:
            return None
    keys = [f.alias or name for name, f in model.model_fields.items() if not f.exclude]
    written = str(loc[-1])
    scored = sorted(
        ((difflib.SequenceMatcher(None, written, k).ratio(), k) for k in keys), reverse=True
    )
    # The closest, and a second one only where it is as likely ('form': 'from' or 'format').
    close = [k for score, k in scored if score >= 0.6 and score >= scored[0][0] - 0.06][:2]
    return " or ".join(repr(k) for k in close) or None


def _model_in(annotation: Any) -> Any:
    """The model a field's annotation holds (``X``, ``X | None``, ``list[X | str]``), or None."""
    import typing

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: list[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part).removesuffix("_")
    return out


def _line_of(node: yaml.Node | None, loc: list[Any]) -> int | None:
    """The 1-based line of the deepest node along ``loc`` that exists in the YAML."""
    best = node.start_mark.line + 1 if node is not None else None
    current = node
    for part in loc:
        if isinstance(current, yaml.MappingNode):
            key = str(part).removesuffix("_")
            match = next((v for k, v in current.value if getattr(k, "value", None) == key), None)
            if match is None:
                key_node = next(
                    (k for k, _ in current.value if getattr(k, "value", None) == key), None
                )
                return key_node.start_mark.line + 1 if key_node is not None else best
            key_node = next(k for k, v in current.value if v is match)
            best = key_node.start_mark.line + 1
            current = match
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int):
            if part >= len(current.value):
                return best
            current = current.value[part]
            best = current.start_mark.line + 1
        else:
            return best
    return best
