"""Nuke ``.nk`` scripts: the files each requested frame reads, worked out without Nuke.

What a caller may rely on:

- File knobs of Read/DeepRead (``file``; ``proxy`` too when the Root is in proxy mode),
  ReadGeo/ReadGeo2, Camera/Axis/Light (only with ``read_from_file true``),
  OCIOFileTransform, OCIOCDLTransform (with ``read_from_file``), Vectorfield
  (``vfield_file``), AudioRead, Precomp and LiveGroup (the referenced script is resolved
  too), and the Root's custom OCIO config with the LUTs it references.
- Read-like nodes map each render frame to the file frame it reads: ``frame_mode``
  ``expression`` (the default; ``frame`` empty means the render frame itself), ``start at``
  (file frame ``first`` shows at render frame ``frame``) or ``offset`` (file frame = render
  frame - ``frame``); then frames outside ``first``..``last`` follow ``before``/``after``:
  ``hold`` (the default), ``loop``, ``bounce`` or ``black`` (no file). Omitted knobs take
  Nuke's defaults: ``first 1``, ``last 1`` (Nuke writes only knobs that differ from their
  default, which is why a 1-100 sequence is saved with ``last 100`` and no ``first``).
  ``origfirst``/``origlast`` only describe the files on disk; Nuke reads inside
  ``first``..``last``, so they change nothing here.
- Relative paths resolve against the Root's ``project_directory`` when it is set, else the
  script's folder (Nuke itself would use its working directory, which a farm node does not
  share with the artist).
- Disabled nodes, and every node inside a disabled group, need nothing.
- What needs Nuke to evaluate (Python, unknown TCL, animated file knobs, frame expressions
  beyond arithmetic) is reported in ``Dependencies.unresolved`` with the node and why.
"""

from __future__ import annotations

import math
import os
import posixpath
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from jitrender.deps import Dependencies, Unresolved
from jitrender.errors import JitrenderError, SceneParseError
from jitrender.paths import is_url, join_url, local_path_of, split_url
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext, file_dependencies
from jitrender.resolve.nuke_ocio import ocio_config_dependencies
from jitrender.resolve.nuke_script import Node, NukeScript, Scanner, decode_script, parse_script
from jitrender.resolve.nuke_tcl import (
    MAX_DEPTH,
    NotEvaluable,
    TclContext,
    compile_expression,
    format_number,
    parse_number,
    substitute,
)
from jitrender.sequences import has_frame_token

# Precomps inside precomps deeper than this are a loop in all but name.
MAX_PRECOMP_DEPTH = 16
# No sequence on a farm is numbered beyond this; larger values are typos or garbage.
MAX_FRAME = 10**9

_ROOT_DEFAULTS = {"first_frame": "1", "last_frame": "100", "project_directory": "", "proxy": ""}
_READ_DEFAULTS = {
    "first": "1",
    "last": "1",
    "origfirst": "1",
    "origlast": "1",
    "before": "hold",
    "after": "hold",
    "frame_mode": "expression",
    "frame": "",
}
_READ_LIKE = frozenset({"Read", "DeepRead"})
_HOLD_MODES = ("hold", "loop", "bounce", "black")
_FRAME_MODES = ("expression", "startat", "offset")

Handler = Callable[["ScriptResolver", Node], Dependencies]
_handlers: dict[str, Handler] = {}


def _handles(*classes: str) -> Callable[[Handler], Handler]:
    """Decorator: ``fn`` resolves nodes of these classes."""

    def decorate(fn: Handler) -> Handler:
        for cls in classes:
            _handlers[cls] = fn
        return fn

    return decorate


@dataclass
class ScriptResolver:
    """One parsed script and what evaluating its knobs needs. ``prefix`` names the Precomp or
    LiveGroup that brought the script in (empty for the job's own scene)."""

    ctx: ResolveContext
    script: NukeScript
    environ: Mapping[str, str]
    visited: frozenset[str]
    prefix: str = ""
    out: Dependencies = field(default_factory=Dependencies)
    _depth: int = 0
    # (node id, knob) -> evaluated value or why not; knobs that refer to each other are
    # evaluated once, so a chain of references cannot blow up exponentially.
    _values: dict[tuple[int, str], str | NotEvaluable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.script.root or Node("Root", {}, None, 0)
        self.root_name = _root_name(self.ctx)
        self.views = self._views()
        self.proxy_mode = self.root.flag("proxy")
        self.project_url = self._project_url()

    # -- evaluation ------------------------------------------------------------------------

    def source(self, node: Node, knob: str) -> str:
        return f"{self.prefix}{node.path}.{knob}"

    def tcl(self, here: Node) -> TclContext:
        return TclContext(self.root_name, lambda ref: self.lookup(ref, here), self.environ)

    def lookup(self, reference: str, here: Node) -> str:
        """The evaluated value of a knob reference as seen from ``here``."""
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise NotEvaluable("expressions refer to each other in a loop")
            parts = reference.split(".")
            node = self._find(parts[:-1], here) if len(parts) > 1 else here
            key = (id(node), parts[-1])
            known = self._values.get(key)
            if known is None:
                try:
                    known = self._knob(node, parts[-1])
                except NotEvaluable as exc:
                    known = exc
                self._values[key] = known
            if isinstance(known, NotEvaluable):
                raise known
            return known
        finally:
            self._depth -= 1

    def _find(self, parts: list[str], here: Node) -> Node:
        head = parts[0]
        node: Node | None
        if head == "this":
            node = here
        elif head == "root":
            node = self.root
        elif head == "parent":
            node = here.group or self.root
        else:
            # Names resolve in the group the node sits in first, then at the top level.
            scope = here.group.members if here.group is not None else self.script.top
            node = scope.get(head) or self.script.top.get(head)
        for part in parts[1:]:
            if node is None:
                break
            if part == "parent":
                node = None if node is self.root else (node.group or self.root)
            elif node is self.root:
                node = self.script.top.get(part)
            else:
                node = node.members.get(part)
        if node is None:
            raise NotEvaluable(f"no node {'.'.join(parts)} in the script")
        return node

    def _knob(self, node: Node, knob: str) -> str:
        if node is self.root:
            if knob == "name":
                return self.root_name
            raw = node.knobs.get(knob, _ROOT_DEFAULTS.get(knob))
        elif knob == "name":
            return node.name
        else:
            raw = node.knobs.get(knob)
            if raw is None and node.cls in _READ_LIKE:
                raw = _READ_DEFAULTS.get(knob)
            if raw is None and knob == "disable":
                raw = "false"
        if raw is None:
            raise NotEvaluable(
                f"{node.name}.{knob} is not set in the script; its default needs Nuke"
            )
        if knob in node.braced and raw.lstrip().startswith("{"):
            return format_number(parse_number(raw, lambda ref: self.lookup(ref, node), None))
        return substitute(raw, self.tcl(node), self._depth)

    def frame_number(self, node: Node, knob: str, default: str) -> int:
        """An integer knob (a frame number), literal or expression."""
        raw = node.knobs.get(knob, default)
        return _whole_frame(parse_number(raw or "0", lambda ref: self.lookup(ref, node), None))

    def choice(self, node: Node, knob: str, options: tuple[str, ...]) -> str:
        raw = node.knobs.get(knob, options[0]).strip().lower().replace(" ", "").replace("_", "")
        if raw.isdigit() and int(raw) < len(options):
            return options[int(raw)]
        if raw not in options:
            raise NotEvaluable(f"{node.name}.{knob} is {raw!r}, not one of {', '.join(options)}")
        return raw

    def path(self, node: Node, knob: str) -> str | None:
        """A file knob's evaluated value; None (and an unresolved entry) if it needs Nuke."""
        raw = node.knobs.get(knob, "")
        if not raw.strip():
            return None
        if knob in node.braced and raw.lstrip().startswith("{"):
            why = "the file knob is animated or an expression; its value needs Nuke"
            self.out.unresolved.append(Unresolved(self.source(node, knob), raw, why))
            return None
        try:
            return substitute(raw, self.tcl(node)).strip()
        except NotEvaluable as exc:
            self.out.unresolved.append(Unresolved(self.source(node, knob), raw, exc.why))
            return None

    def files(
        self, node: Node, knob: str, frame_map: Mapping[int, list[int]] | None = None
    ) -> Dependencies:
        """The dependencies behind one file knob (every frame, or as ``frame_map`` says)."""
        written = self.path(node, knob)
        if written is None:
            return Dependencies()
        return file_dependencies(
            self.ctx,
            _tidy(written),
            self.source(node, knob),
            frame_map=frame_map,
            relative_to=self.project_url,
            views=self.views,
        )

    # -- the Root --------------------------------------------------------------------------

    def _views(self) -> tuple[str, ...]:
        raw = self.root.knobs.get("views", "")
        if not raw.strip():
            return ("main",)
        scanner = Scanner(raw, self.script.url)
        names: list[str] = []
        try:
            for words in scanner.commands(0, len(raw)):
                if words[0].braced:
                    for word in words:
                        item = Scanner(word.text, self.script.url).commands(0, len(word.text))
                        first = next(item, None)
                        if first:
                            names.append(first[0].text)
                else:
                    names.append(words[0].text)
        except SceneParseError:
            raise SceneParseError(
                f"{self.script.url}:{self.root.line}:1: the Root's views knob is not a TCL list"
            ) from None
        return tuple(dict.fromkeys(n for n in names if n)) or ("main",)

    def _project_url(self) -> str:
        raw = self.root.knobs.get("project_directory", "")
        if not raw.strip():
            return self.ctx.scene_folder_url
        try:
            folder = substitute(raw, self.tcl(self.root)).strip()
            return join_url(self.ctx.map(folder), ".") if folder else self.ctx.scene_folder_url
        except NotEvaluable as exc:
            why = f"{exc.why}; relative paths resolved against the script's folder instead"
        except ValueError as exc:
            why = f"{exc}; relative paths resolved against the script's folder instead"
        self.out.unresolved.append(Unresolved(f"{self.prefix}Root.project_directory", raw, why))
        return self.ctx.scene_folder_url

    def _ocio(self) -> None:
        knobs = self.root.knobs
        config = knobs.get("OCIO_config", "").strip()
        if config == "custom":
            knob = "customOCIOConfigPath"
        elif "/" in config or "\\" in config or config.lower().endswith(".ocio"):
            knob = "OCIO_config"
        else:
            return
        written = self.path(self.root, knob)
        if written:
            self.out.extend(
                ocio_config_dependencies(
                    self.ctx,
                    written,
                    self.source(self.root, knob),
                    self.environ,
                    relative_to=self.project_url,
                )
            )

    # -- the whole script ------------------------------------------------------------------

    def resolve(self) -> Dependencies:
        self._ocio()
        for node in self.script.nodes:
            handler = _handlers.get(node.cls)
            if handler is None or node.disabled():
                continue
            self.out.extend(handler(self, node))
        return self.out


def _tidy(path: str) -> str:
    """``a/b/../c`` -> ``a/c`` in absolute paths and URLs: TCL-built paths are often written
    that way, and object keys have no ``..``."""
    if "/." not in path:
        return path
    if is_url(path):
        return join_url(path, ".")
    if path.startswith("/") and not path.startswith("//"):
        return posixpath.normpath(path)
    return path


def _root_name(ctx: ResolveContext) -> str:
    """What ``[value root.name]`` gives on the farm: the script's path as the artist wrote it
    when the path map knows it, else the local path (``file://``) or the URL itself."""
    mapped = ctx.path_map.to_scene_path(ctx.scene_url)
    if mapped is not None:
        return mapped
    if split_url(ctx.scene_url)[0] == "file":
        return local_path_of(ctx.scene_url).as_posix()
    return ctx.scene_url


# -- frame mapping ---------------------------------------------------------------------------


def _whole_frame(value: float) -> int:
    """A frame number as Nuke's Read uses it: rounded down; absurd values are refused."""
    if not math.isfinite(value) or abs(value) > MAX_FRAME:
        raise NotEvaluable(f"{value} is not a usable frame number")
    return math.floor(value)


def held_frame(raw: int, first: int, last: int, before: str, after: str) -> int | None:
    """The file frame Nuke reads for ``raw`` given the node's range and before/after modes;
    None when the mode is ``black``."""
    if first <= raw <= last:
        return raw
    mode = before if raw < first else after
    length = last - first + 1
    if mode == "hold":
        return first if raw < first else last
    if mode == "loop":
        return first + (raw - first) % length
    if mode == "bounce":
        if length == 1:
            return first
        period = 2 * (length - 1)
        step = (raw - first) % period
        return first + (step if step < length else period - step)
    return None


def read_frame_map(resolver: ScriptResolver, node: Node) -> dict[int, list[int]]:
    """Render frame -> file frame for a Read-like node, inverted: {file frame: [render frames]}.
    Raises NotEvaluable when a knob it needs cannot be evaluated."""

    def lookup(ref: str) -> str:
        return resolver.lookup(ref, node)

    first = resolver.frame_number(node, "first", "1")
    last = resolver.frame_number(node, "last", "1")
    first, last = min(first, last), max(first, last)
    before = resolver.choice(node, "before", _HOLD_MODES)
    after = resolver.choice(node, "after", _HOLD_MODES)
    mode = resolver.choice(node, "frame_mode", _FRAME_MODES)
    frame_text = node.knobs.get("frame", "").strip()
    if frame_text.startswith("{") and frame_text.endswith("}"):
        frame_text = frame_text[1:-1].strip()
    mapping: dict[int, list[int]] = {}
    expression = compile_expression(frame_text) if mode == "expression" and frame_text else None
    shift = 0 if mode == "expression" else resolver.frame_number(node, "frame", "0")
    for frame in resolver.ctx.frames:
        if expression is not None:
            raw = _whole_frame(expression.evaluate(lookup, frame))
        elif mode == "startat":
            raw = frame - shift + first
        elif mode == "offset":
            raw = frame - shift
        else:
            raw = frame
        file_frame = held_frame(raw, first, last, before, after)
        if file_frame is not None:
            mapping.setdefault(file_frame, []).append(frame)
    return mapping


# -- one function per node class -------------------------------------------------------------


@_handles("Read", "DeepRead")
def _read(resolver: ScriptResolver, node: Node) -> Dependencies:
    try:
        frame_map = read_frame_map(resolver, node)
    except NotEvaluable as exc:
        written = resolver.path(node, "file")
        if written is not None and not has_frame_token(written):
            return resolver.files(node, "file")  # one file (a movie): the frame is irrelevant
        raw = " ".join(f"{k} {node.knobs[k]}" for k in _READ_DEFAULTS if k in node.knobs)
        why = f"cannot work out which file frames it reads: {exc.why}"
        return Dependencies([], [Unresolved(resolver.source(node, "file"), raw, why)])
    if not frame_map:
        return Dependencies()
    out = resolver.files(node, "file", frame_map)
    if resolver.proxy_mode:
        out.extend(resolver.files(node, "proxy", frame_map))
    return out


@_handles("ReadGeo", "ReadGeo2", "OCIOFileTransform", "AudioRead")
def _plain_file(resolver: ScriptResolver, node: Node) -> Dependencies:
    return resolver.files(node, "file")


@_handles(
    "Camera", "Camera2", "Camera3", "Camera4",
    "Axis", "Axis2", "Axis3", "Axis4",
    "Light", "Light2", "Light3", "Light4",
    "OCIOCDLTransform",
)  # fmt: skip
def _read_from_file(resolver: ScriptResolver, node: Node) -> Dependencies:
    if not node.flag("read_from_file"):
        return Dependencies()
    return resolver.files(node, "file")


@_handles("Vectorfield")
def _vectorfield(resolver: ScriptResolver, node: Node) -> Dependencies:
    return resolver.files(node, "vfield_file")


@_handles("Precomp", "LiveGroup")
def _referenced_script(resolver: ScriptResolver, node: Node) -> Dependencies:
    out = resolver.files(node, "file")
    written = resolver.path(node, "file")
    if written is None or (node.cls == "LiveGroup" and not written):
        return out
    source = resolver.source(node, "file")
    ctx = resolver.ctx
    try:
        url = ctx.map(written, relative_to=resolver.project_url)
    except ValueError as exc:
        out.unresolved.append(Unresolved(source, written, str(exc)))
        return out
    if url in resolver.visited or len(resolver.visited) > MAX_PRECOMP_DEPTH:
        out.unresolved.append(Unresolved(source, written, "the script includes itself"))
        return out
    try:
        local = ctx.fetch(url)
        data = local.read_bytes()
    except (JitrenderError, OSError, ValueError) as exc:
        why = f"cannot read the referenced script: {exc}"
        out.unresolved.append(Unresolved(source, written, why))
        return out
    nested = _resolve_script(
        ctx.with_scene(url, local),
        data,
        resolver.environ,
        resolver.visited | {url},
        f"{resolver.prefix}{node.path}.",
    )
    out.extend(nested)
    return out


def _resolve_script(
    ctx: ResolveContext,
    data: bytes,
    environ: Mapping[str, str],
    visited: frozenset[str],
    prefix: str,
) -> Dependencies:
    script = parse_script(decode_script(data, ctx.scene_url), ctx.scene_url)
    return ScriptResolver(ctx, script, environ, visited, prefix).resolve()


@register("nuke", ".nk", ".nknc")
def resolve_nuke(ctx: ResolveContext) -> Dependencies:
    """Every file the context's frames of a Nuke script read, merged one entry per URL."""
    try:
        data = ctx.scene_file.read_bytes()
    except OSError as exc:
        raise SceneParseError(f"{ctx.scene_url}:1:1: cannot read the script: {exc}") from None
    found = _resolve_script(ctx, data, dict(os.environ), frozenset({ctx.scene_url}), "")
    return found.merged()


__all__ = ["ScriptResolver", "held_frame", "read_frame_map", "resolve_nuke"]
