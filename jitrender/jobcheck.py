"""Reading a job file's bytes into a :class:`~jitrender.job.Job`: PyYAML, then pydantic
(its validator of the job classes: see :func:`jitrender.adapters.reader`).

Imported only for a job file not checked before on this node (see :func:`jitrender.job.load_job`).
Every mistake becomes one :class:`ConfigError` line naming the file, the line, the key and
what is wrong.
"""

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any, cast

import yaml
from pydantic_core import ValidationError

from jitrender.adapters import reader
from jitrender.errors import ConfigError
from jitrender.job import Job
from jitrender.paths import is_url, location_problem, split_url

_BASE_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: much faster


class _Loader(_BASE_LOADER):  # type: ignore[misc]
    """The safe loader, refusing a key written twice in one mapping: YAML keeps the last one,
    so the first would be a setting read and then ignored."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            merge = key_node.tag == "tag:yaml.org,2002:merge"
            if merge or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            try:
                first = seen.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the constructor below says so
                continue
            if first is not key_node:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} is given twice (first on line {first.start_mark.line + 1}); "
                    "keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


_LOADER = _Loader

# A job file is a few hundred values; a million means an alias bomb, not a job.
MAX_DOCUMENT_NODES = 1_000_000

# pydantic's error types for a key no model has, and for one left out.
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")
_MISSING = ("missing", "missing_argument", "missing_keyword_only_argument")


def checked_job(path: Path, data: bytes) -> Job:
    """The job ``data`` (the bytes of ``path``) describes; :class:`ConfigError` otherwise."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        at = data[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{path}:{at}: cannot read job file: byte {data[exc.start]:#04x} is not UTF-8 text "
            f"({exc.reason}); save the file as UTF-8"
        ) from None
    try:
        document = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if mark is not None and text[mark.index : mark.index + 1] == "\t":
            problem += " (a tab: YAML indents with spaces)"
        raise ConfigError(f"{where}: not valid YAML: {problem}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{path}: a job file is a YAML mapping (key: value lines)")
    if _expanded_size_exceeds(document, MAX_DOCUMENT_NODES):
        raise ConfigError(
            f"{path}: the document expands to more than {MAX_DOCUMENT_NODES} values "
            "(YAML aliases repeating aliases?); refusing it"
        )
    yes_no = _yes_no_at(document, [])
    if yes_no is not None:
        line = _line_of(yaml.compose(text), yes_no)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(
            f"{where}: {_format_loc(yes_no)}: YAML read a yes/no word here (yes/no, on/off, "
            "true/false); write the number or text this key takes, or quote the word"
        )
    try:
        job = cast(Job, reader(Job)[0].validate_python(document))
    except ValidationError as exc:
        node = yaml.compose(text)  # only now: positions for the error message
        raise ConfigError(_one_line(path, node, exc)) from None
    problem = unsafe_paths(job)
    if problem is None:
        problem = _size_problem(job.cache.max_size)
    if problem is not None:
        loc, message = problem
        line = _line_of(yaml.compose(text), loc)
        where = f"{path}:{line}" if line else str(path)
        raise ConfigError(f"{where}: {_format_loc(loc)}: {message}")
    return job


def _size_problem(size: str | int | None) -> tuple[list[str | int], str] | None:
    """``cache.max_size`` read as :func:`jitrender.cache.parse_size` reads it, now: with the
    file's line, before the run starts. Not through ``parse_size`` itself for text: that
    remembers each size it reads in the node's memo, and checking a job writes no memo."""
    if size is None:
        return None
    from jitrender.cache import parse_size

    try:
        if isinstance(size, int):
            parse_size(size)
        else:
            from jitrender.cache import _byte_size

            _byte_size().validate_python(size)
    except ConfigError as exc:
        return ["cache", "max_size"], exc.message.removeprefix("cache.max_size: ")
    except ValueError:  # pydantic's ValidationError
        return ["cache", "max_size"], f"{size!r} is not a size (use e.g. 50GB, 500MiB)"
    return None


def json_values(job: Job) -> dict[str, Any]:
    """The job's values as pydantic writes them in JSON (dates as ISO text, and so on)."""
    values: dict[str, Any] = reader(Job)[1].to_python(job, mode="json", by_alias=True)
    return values


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
    for key in ("to", "checkpoints"):
        target = getattr(job.outputs, key)
        if target is None:
            continue
        problem: str | None = location_problem(target, "renders")
        if problem is None and is_url(target):
            rest = split_url(target)[2]
            if any(part in (".", "..") for part in rest.split("/")):
                problem = f"{target!r} holds a '.' or '..' segment; name the prefix itself"
        if problem is not None:
            return ["outputs", key], problem
    if job.scene is not None:
        problem = location_problem(job.scene, "shots/comp.nk")
        if problem is not None:
            return ["scene"], problem
    if isinstance(job.path_map, list):
        for index, rule in enumerate(job.path_map):
            problem = location_problem(rule.to, "show")
            if problem is not None:
                return ["path_map", index, "to"], problem
    elif "path_mapping_rules" not in job.path_map and "version" not in job.path_map:
        for source, dest in job.path_map.items():  # FROM: TO (an OpenJD map's are node paths)
            problem = location_problem(dest, "show") if isinstance(dest, str) else None
            if problem is not None:
                return ["path_map", source], problem
    for index, dep in enumerate(job.deps):
        named: list[tuple[str, str | None]]
        if isinstance(dep, str):
            named = [("", dep)]
        else:
            named = [("path", dep.path), ("prefix", dep.prefix)]
        for name, value in named:
            problem = location_problem(value, "plates/a.####.exr") if value else None
            if problem is not None:
                return ["deps", index, *([name] if name else [])], problem
    return None


def _one_line(path: Path, node: yaml.Node | None, exc: ValidationError) -> str:
    errors = exc.errors()
    # A misspelt key is the likely cause of a missing one: say it first; then a check of the
    # job's own (a value error), before a type the value is not (a dep given as a mapping is
    # not a string either: its own check says what is wrong).
    error = next(
        (e for e in errors if e["type"] in _UNKNOWN),
        next((e for e in errors if e["type"] == "value_error"), errors[0]),
    )
    loc = [part for part in error["loc"] if not (isinstance(part, str) and "[" in part)]
    loc = [
        p for p in loc if p not in ("str", "int", "list[PathRuleSpec]", "dict[str,any]", "DepSpec")
    ]
    key = _format_loc(loc)
    line = _line_of(node, loc)
    where = f"{path}:{line}" if line else str(path)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in _UNKNOWN:
        near = _near_keys(loc)
        message = (
            f"unknown key (did you mean {near}?)"
            if near
            else "unknown key (check its spelling and the job.yaml reference in the README)"
        )
    elif error["type"] in _MISSING:
        message = "required key is missing"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {key or 'job'}: {message}{more}"


def _near_keys(loc: list[Any]) -> str | None:
    """The keys of the model at ``loc``'s place closest to its last part (a misspelling of one
    of them), quoted (``'a' or 'b'``), or None."""
    model: Any = Job
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        kinds = {_key(f.name): f.type for f in dataclasses.fields(model)}
        model = _model_in(kinds[part]) if part in kinds else None
        if model is None:
            return None
    keys = [_key(f.name) for f in dataclasses.fields(model)]
    written = str(loc[-1])
    scored = sorted(
        ((difflib.SequenceMatcher(None, written, k).ratio(), k) for k in keys), reverse=True
    )
    # The closest, and a second one only where it is as likely ('form': 'from' or 'format').
    close = [k for score, k in scored if score >= 0.6 and score >= scored[0][0] - 0.06][:2]
    return " or ".join(repr(k) for k in close) or None


def _key(name: str) -> str:
    """A field's key in job.yaml (``from_`` is ``from``)."""
    return name.removesuffix("_")


def _model_in(annotation: Any) -> Any:
    """The model a field's annotation holds (``X``, ``X | None``, ``list[X | str]``), or None."""
    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
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
