"""USD stages (``.usd``, ``.usda``, ``.usdc``, ``.usdz``), composed by usd-core.

The stage is opened with ``Usd.Stage.Open`` from the resolve folder, where every layer sits
under its own name at its bucket-relative place (``ctx.fetch``). Layers are fetched just in
time: after each open, the arcs the composed prims author (sublayers, references, payloads —
on the prim stacks, so only *selected* variants count) and the value clips active at the
requested frames that are not local yet are fetched, and the stage is opened again, until
composition asks for nothing new. Then, per requested frame (a USD time code), the
dependencies are what the composed stage reads:

- every layer it uses (``GetUsedLayers``): needed by every frame;
- the value clip each clip set activates at the frame (clip metadata composed key by key by
  USD, layer offsets and scales applied to its times; template clips only for files that exist
  in storage; incomplete clip sets ignored, as USD ignores them), and the clip manifest;
- the value of every asset-valued attribute at the frame's time code, as USD resolves it
  (time samples, clips, ``${VAR}`` expressions evaluated with the stage's variables),
  ``<UDIM>`` tiles 1001–1100 that exist in storage, and ``pkg.usdz[inner]`` as the package;
- MaterialX documents named by arcs or attributes, and the ``filename`` inputs they name.

A layer or asset that does not exist is a dependency with ``exists: false``; it never aborts
the resolve. Dependencies on layers carry ``source`` values starting with ``layer``/``clip``
so a caller can tell the bytes the resolve itself fetched.
"""

from __future__ import annotations

import contextlib
import math
import os
import posixpath
import re
import sys
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from pxr import Sdf, Tf, Usd

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import MissingDependencyError, SceneParseError
from jitrender.paths import is_url, split_url, url_dirname, workspace_relpath
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext

_HASHES = re.compile(r"#+")
_UDIM = re.compile(r"<UDIM>", re.IGNORECASE)
_ASSET_TYPES = (Sdf.ValueTypeNames.Asset, Sdf.ValueTypeNames.AssetArray)
# Enough rounds for any real arc chain; a cycle cannot loop because each round must fetch.
_MAX_ROUNDS = 200
_EXPLICIT_KEYS = ("assetPaths", "primPath", "active")
_TEMPLATE_KEYS = (
    "templateAssetPath",
    "templateStartTime",
    "templateEndTime",
    "templateStride",
    "primPath",
)


@dataclass
class _Resolve:
    """One resolve: where local files are, what was fetched, and the answer so far."""

    ctx: ResolveContext
    root: Path | None
    url_of_local: dict[str, str] = field(default_factory=dict)
    local_of_url: dict[str, str] = field(default_factory=dict)
    tried: dict[str, bool] = field(default_factory=dict)  # url -> exists
    scanned: set[str] = field(default_factory=set)  # layers and prim specs whose arcs are read
    # (prim path, frame) -> the clip layers its clip sets activate there
    active_clips: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    # Layers fetched for arcs that name a node path outside the resolve folder (an absolute
    # path that path_map maps): each one's bytes in memory under that path (kept alive here),
    # where composition looks for it.
    aliases: dict[str, Any] = field(default_factory=dict)
    alias_of_url: dict[str, Any] = field(default_factory=dict)  # a fetched layer's first alias
    # Template clip sets on such a node path: (prim path, clip set) -> the template in the
    # resolve folder, set in each stage's session layer (USD keeps only template clips that
    # resolve on disk, which an in-memory alias does not).
    templates: dict[tuple[str, str], str] = field(default_factory=dict)
    out: Dependencies = field(default_factory=Dependencies)

    # -- local files <-> URLs -------------------------------------------------------------

    def url_of(self, local: str) -> str | None:
        """The URL of a local file below the resolve folder (a package's inner path: the
        package)."""
        local = local.split("[", 1)[0]
        known = self.url_of_local.get(local)
        if known is not None:
            return known
        rel = self._below_root(local)
        if rel is None or len(rel.parts) < 2:
            return None
        scheme, netloc, rest = rel.parts[0], rel.parts[1], "/".join(rel.parts[2:])
        return f"{scheme}://{'' if netloc == '_' else netloc}/{rest}"

    def target(self, written: str, layer: Any, variables: dict[str, Any]) -> str | None:
        """The URL an asset path authored in ``layer`` names (``None``: inside a package, or
        nothing)."""
        path = _evaluate(written, variables)
        if not path:
            return None
        if "[" in layer.identifier and not (is_url(path) or path.startswith(("/", "../"))):
            return None  # a package's own file: the package is the dependency
        if is_url(path) or path.startswith("/"):
            local = self.url_of(path) if path.startswith("/") else None
            return local or self.ctx.map(path)
        base = self.url_of(layer.realPath) if layer.realPath else None
        if base is None:
            base = self.ctx.scene_url
        return self.ctx.map(path, relative_to=url_dirname(base))

    def fetch(
        self,
        url: str,
        written: str,
        source: str,
        frames: Sequence[int] | None,
        anchored: str | None = None,
    ) -> bool:
        """Fetch a layer (once); record it as a dependency. True when it was new and exists.
        ``anchored``: the path composition asks for (the arc's path anchored to its layer), to
        which the layer is aliased where it is a node path outside the resolve folder."""
        if url in self.tried:
            if frames is not None:
                self.add(written, url, source, frames)
            if anchored is not None and self.tried[url] and anchored not in self.aliases:
                return self._alias(anchored, url)  # the same layer named another way
            return False
        self.add(written, url, source, frames)
        try:
            local = self.ctx.fetch(url)
        except (MissingDependencyError, FileNotFoundError):
            self.tried[url] = False
            return False
        self.tried[url] = True
        self.url_of_local[str(Path(local).resolve())] = url
        self.url_of_local[str(local)] = url
        self.local_of_url[url] = str(local)
        if anchored is not None:
            self._alias(anchored, url)
        if url.lower().endswith(".mtlx"):
            self._materialx(url, Path(local), frames)
        return True

    def _alias(self, anchored: str, url: str) -> bool:
        """Give the fetched layer of ``url`` the identifier ``anchored`` (a node path such as
        ``/mnt/show/asset.usd`` that path_map mapped to ``url``): an in-memory layer holding
        its content, which Sdf's registry hands composition for that path, so the layer is
        composed (its own arcs and values read, anchored where its author meant) instead of
        being an unresolved arc. True when one was made."""
        if anchored in self.aliases or self._below_root(anchored) is not None:
            return False
        local = self.local_of_url.get(url)
        try:
            source = Sdf.Layer.FindOrOpen(local) if local else None
            if source is None:
                return False
            alias = Sdf.Layer.Find(anchored) or Sdf.Layer.New(source.GetFileFormat(), anchored)
            alias.TransferContent(source)
        except Tf.ErrorException:
            return False  # (a package, a format that cannot be made in memory): as before
        self.aliases[anchored] = alias
        self.alias_of_url.setdefault(url, alias)
        self.url_of_local[anchored] = url
        return True

    def _below_root(self, path: str) -> PurePosixPath | None:
        """``path`` relative to the resolve folder, or None where it is not below it (where
        composition does not find the file as it is)."""
        if self.root is None:
            return None
        try:
            return PurePosixPath(Path(path).resolve().relative_to(self.root).as_posix())
        except ValueError:
            return None

    def add(self, written: str, url: str, source: str, frames: Sequence[int] | None) -> None:
        narrowed = tuple(sorted(set(frames))) if frames is not None else None
        self.out.deps.append(Dependency(written, url, narrowed, source))

    def asset(self, written: str, url: str, source: str, frames: Sequence[int] | None) -> None:
        """A non-layer asset: its UDIM tiles, a MaterialX document, or the file itself (a
        package's inner file: the package)."""
        if url.endswith("]") and "[" in url:
            url = url.split("[", 1)[0]
        if _UDIM.search(url):
            for tile in self._tiles(url):
                self.add(written, tile, source, frames)
            return
        if url.lower().endswith(".mtlx"):
            self.fetch(url, written, source, frames)
            return
        self.add(written, url, source, frames)

    def _tiles(self, url: str) -> list[str]:
        """The tiles of ``url`` that exist in storage, 1001–1100 as USD reads them."""
        scheme, netloc, path = split_url(url)
        folder = f"{scheme}://{netloc}{posixpath.dirname(path)}".rstrip("/")
        name = posixpath.basename(path)
        if not _UDIM.search(name):
            return [url]
        head, tail = _UDIM.split(name, maxsplit=1)
        names = set(self.ctx.names_in_folder(folder))
        found = [
            f"{folder}/{head}{t}{tail}" for t in range(1001, 1101) if f"{head}{t}{tail}" in names
        ]
        # No tile at all: the set is missing (the pattern itself is reported, and stats absent).
        return found or [url]

    def _materialx(self, url: str, local: Path, frames: Sequence[int] | None) -> None:
        """A MaterialX document: the files its ``filename`` inputs name (``fileprefix``
        inherited from enclosing elements)."""
        try:
            tree = ElementTree.parse(local)
        except ElementTree.ParseError as exc:
            self.out.unresolved.append(Unresolved(url, "", f"MaterialX does not parse: {exc}"))
            return
        folder = url_dirname(url)

        def walk(element: ElementTree.Element, prefix: str) -> None:
            prefix = prefix + element.get("fileprefix", "")
            if element.get("type") == "filename" and element.get("value"):
                written = prefix + str(element.get("value"))
                try:
                    target = self.ctx.map(written, relative_to=folder)
                except ValueError as exc:
                    self.out.unresolved.append(Unresolved(url, written, str(exc)))
                else:
                    self.asset(written, target, f"{url} {element.get('name', '')}", frames)
            for child in element:
                walk(child, prefix)

        walk(tree.getroot(), "")


@register("usd", ".usd", ".usda", ".usdc", ".usdz")
def resolve_usd(ctx: ResolveContext) -> Dependencies:
    """The files a USD scene's requested frames read (see the module docstring)."""
    state = _Resolve(ctx, _resolve_root(ctx))
    state.url_of_local[str(Path(ctx.scene_file).resolve())] = ctx.scene_url
    state.tried[ctx.scene_url] = True
    with _usd_warnings_silenced():
        stage = _compose(state)
        _used_layers(state, stage)
        _assets(state, stage)
    return state.out.merged()


@contextlib.contextmanager
def _usd_warnings_silenced() -> Iterator[None]:
    """usd-core prints a warning for every arc whose layer is not fetched yet (each round of
    composition) and for every MaterialX arc; what they mean is in the answer (``missing``),
    so they are kept off the user's stderr. Python errors still raise as exceptions."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _resolve_root(ctx: ResolveContext) -> Path | None:
    """The folder that mirrors storage (``<root>/<scheme>/<bucket>/<path>``), if the scene is
    laid out so."""
    local = Path(ctx.scene_file).resolve()
    try:
        rel = workspace_relpath(ctx.scene_url)
    except ValueError:
        return None
    parts = local.parts
    if len(parts) <= len(rel.parts) or tuple(parts[-len(rel.parts) :]) != rel.parts:
        return None
    return Path(*parts[: -len(rel.parts)])


def _open(state: _Resolve) -> Any:
    scene = str(state.ctx.scene_file)
    try:
        layer = Sdf.Layer.FindOrOpen(scene)
        if layer is None:
            raise SceneParseError(f"{state.ctx.scene_url}: not a USD layer USD can read")
        layer.Reload()  # Sdf keeps layers per process: pick up files changed since
        stage = Usd.Stage.Open(layer, Usd.Stage.LoadAll)
        if state.templates:
            with Usd.EditContext(stage, stage.GetSessionLayer()):
                for (prim_path, clip_set), template in state.templates.items():
                    prim = stage.GetPrimAtPath(prim_path)
                    if prim:
                        Usd.ClipsAPI(prim).SetClipTemplateAssetPath(template, clip_set)
        return stage
    except Tf.ErrorException as exc:
        raise SceneParseError(f"{state.ctx.scene_url}: malformed USD layer: {_why(exc)}") from None


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    quoted = re.search(r" : '(.*)'$", text)
    what = quoted.group(1) if quoted else text
    return what if len(what) < 300 else what[:297] + "..."


def _compose(state: _Resolve) -> Any:
    """Open the stage, fetching what composition asks for, until it asks for nothing new."""
    for _ in range(_MAX_ROUNDS):
        stage = _open(state)
        variables = _stage_variables(stage)
        new = False
        for layer in stage.GetUsedLayers(False):
            if layer.identifier in state.scanned:
                continue
            state.scanned.add(layer.identifier)
            for written in layer.subLayerPaths:
                new |= _arc(state, written, layer, variables, f"layer {_name(layer)} subLayers")
        for prim in _all_prims(stage):
            for spec in prim.GetPrimStack():
                # Layers do not change between rounds: each spec's arcs are read once.
                key = f"{spec.layer.identifier}<{spec.path}>"
                if key in state.scanned:
                    continue
                state.scanned.add(key)
                for ref in spec.referenceList.GetAddedOrExplicitItems():
                    source = f"layer {prim.GetPath()} references"
                    new |= _arc(state, ref.assetPath, spec.layer, variables, source)
                for payload in spec.payloadList.GetAddedOrExplicitItems():
                    source = f"layer {prim.GetPath()} payload"
                    new |= _arc(state, payload.assetPath, spec.layer, variables, source)
            new |= _clips(state, prim, variables)
        if not new:
            return stage
        del stage
    raise SceneParseError(f"{state.ctx.scene_url}: composition did not settle")


def _arc(state: _Resolve, written: str, layer: Any, variables: dict[str, Any], source: str) -> bool:
    if not written:
        return False
    try:
        url = state.target(written, layer, variables)
    except ValueError as exc:
        state.out.unresolved.append(Unresolved(source, written, str(exc)))
        return False
    if url is None:
        return False
    anchored = _anchored(written, layer, variables)
    return state.fetch(url, written, source, None, anchored)


def _anchored(written: str, layer: Any, variables: dict[str, Any]) -> str | None:
    """The path composition opens for an arc ``written`` in ``layer`` (Sdf's own anchoring): a
    node path, None for a URL, a package's inner file or a path left relative (an anonymous
    layer's)."""
    path = _evaluate(written, variables)
    if not path or is_url(path) or "[" in path:
        return None
    anchored = str(layer.ComputeAbsolutePath(path))
    return anchored if anchored.startswith("/") and "[" not in anchored else None


def _name(layer: Any) -> str:
    return str(layer.realPath or layer.identifier).rsplit("/", 1)[-1]


def _stage_variables(stage: Any) -> dict[str, Any]:
    variables: dict[str, Any] = dict(stage.GetRootLayer().expressionVariables)
    session = stage.GetSessionLayer()
    if session is not None:
        variables.update(dict(session.expressionVariables))
    return variables


def _evaluate(written: str, variables: dict[str, Any]) -> str:
    """An asset path as USD reads it: a ``\\`...\\``` expression evaluated with the stage's
    variables."""
    if not (written.startswith("`") and written.endswith("`")):
        return written
    result = Sdf.VariableExpression(written).Evaluate(variables)
    value = result.value
    if result.errors or not isinstance(value, str):
        raise ValueError(f"expression does not evaluate: {'; '.join(result.errors)}")
    return value


def _all_prims(stage: Any) -> Iterator[Any]:
    yield from stage.TraverseAll()
    for prototype in stage.GetPrototypes():
        yield from Usd.PrimRange(prototype, Usd.PrimAllPrimsPredicate)


# -- value clips ------------------------------------------------------------------------


@dataclass(frozen=True)
class _ClipKey:
    """One clip-set key as composed: its value, the layer that authored it and that layer's
    offset to stage time."""

    value: Any
    layer: Any
    offset: Any


def _clip_keys(prim: Any) -> dict[str, dict[str, _ClipKey]]:
    """Clip sets authored on ``prim``: each key from the strongest spec that authors it."""
    sets: dict[str, dict[str, _ClipKey]] = {}
    for spec, offset in prim.GetPrimStackWithLayerOffsets():
        if not spec.HasInfo("clips"):
            continue
        for name, keys in dict(spec.GetInfo("clips")).items():
            composed = sets.setdefault(name, {})
            for key, value in dict(keys).items():
                composed.setdefault(key, _ClipKey(value, spec.layer, offset))
    return sets


def _clips(state: _Resolve, prim: Any, variables: dict[str, Any]) -> bool:
    """Fetch the clip each clip set activates at each requested frame, and its manifest."""
    if not prim.HasMetadata("clips"):
        return False
    new = False
    for name, keys in _clip_keys(prim).items():
        source = f"clip {prim.GetPath()} clips[{name}]"
        if "templateAssetPath" in keys:
            if not all(k in keys for k in _TEMPLATE_KEYS):
                continue  # incomplete: USD ignores the set
            chosen = _template_active(state, keys, variables, source)
        else:
            if not all(k in keys for k in _EXPLICIT_KEYS):
                continue
            chosen = _explicit_active(state, keys, variables, source)
        if not chosen:
            continue
        manifest = keys.get("manifestAssetPath")
        if manifest is not None and manifest.value.path:
            new |= _arc(state, manifest.value.path, manifest.layer, variables, source)
        # The layer that authored the clips' paths: an absolute one (a show mount that
        # path_map maps) is aliased as layers are, so USD's clips open it and its values count.
        template = "templateAssetPath" in keys
        authored = keys["templateAssetPath" if template else "assetPaths"].layer
        anchored = None
        for (written, url), frames in chosen.items():
            anchored = _anchored(written, authored, variables)
            new |= state.fetch(url, written, source, frames, anchored)
            for frame in frames:
                state.active_clips.setdefault((str(prim.GetPath()), frame), []).append(url)
        if template and anchored is not None:  # (all its clips are in one folder: the last's)
            _template_in_resolve_folder(state, prim, name, keys, variables, anchored, url)
    return new


def _template_in_resolve_folder(
    state: _Resolve,
    prim: Any,
    clip_set: str,
    keys: dict[str, _ClipKey],
    variables: dict[str, Any],
    anchored: str,
    url: str,
) -> None:
    """Where a template clip set names a node path outside the resolve folder (a mapped show
    mount), have USD read its clips where they were fetched: the template's file name in the
    folder of the clip fetched for ``url``. Only fetched clips exist there, and among them the
    one active at each requested frame is the one the full set activates (each requested
    frame's clip was fetched)."""
    if state._below_root(anchored) is not None:
        return  # composition finds the clips as they are
    template = _evaluate(str(getattr(keys["templateAssetPath"].value, "path", "")), variables)
    local = state.local_of_url.get(url)
    name = template.rsplit("/", 1)[-1]
    if not local or "#" not in name or state._below_root(local) is None:
        return
    state.templates[str(prim.GetPath()), clip_set] = posixpath.join(posixpath.dirname(local), name)


def _active_at(starts: Sequence[tuple[float, int]], frame: float) -> int:
    """USD's rule: the last clip whose start is at or before the time, else the first."""
    index = starts[0][1]
    for time, clip in starts:
        if time <= frame:
            index = clip
    return index


def _explicit_active(
    state: _Resolve, keys: dict[str, _ClipKey], variables: dict[str, Any], source: str
) -> dict[tuple[str, str], list[int]]:
    paths = keys["assetPaths"]
    active = keys["active"]
    starts = sorted((float(active.offset * float(a[0])), int(a[1])) for a in active.value)
    chosen: dict[tuple[str, str], list[int]] = {}
    if not starts:
        return chosen
    for frame in state.ctx.frames:
        index = _active_at(starts, frame)
        if not 0 <= index < len(paths.value):
            continue
        written = paths.value[index].path
        try:
            url = state.target(written, paths.layer, variables)
        except ValueError as exc:
            state.out.unresolved.append(Unresolved(source, written, str(exc)))
            continue
        if url is not None:
            chosen.setdefault((written, url), []).append(frame)
    return chosen


def _template_active(
    state: _Resolve, keys: dict[str, _ClipKey], variables: dict[str, Any], source: str
) -> dict[tuple[str, str], list[int]]:
    """Template clips: one per stride from start to end, kept only where the file exists in
    storage (as USD keeps only those it can resolve), active from its time plus the offset."""
    template = keys["templateAssetPath"]
    start = float(keys["templateStartTime"].value)
    end = float(keys["templateEndTime"].value)
    stride = float(keys["templateStride"].value)
    active_offset = (
        float(keys["templateActiveOffset"].value) if "templateActiveOffset" in keys else 0.0
    )
    chosen: dict[tuple[str, str], list[int]] = {}
    written_template = str(getattr(template.value, "path", template.value))
    if stride <= 0 or end < start:
        return chosen
    try:
        url_template = state.target(written_template, template.layer, variables)
    except ValueError as exc:
        state.out.unresolved.append(Unresolved(source, written_template, str(exc)))
        return chosen
    if url_template is None:
        return chosen
    folder = url_dirname(url_template)
    names = set(state.ctx.names_in_folder(folder))
    clips: list[tuple[float, str, str]] = []
    count = math.floor((end - start) / stride + 1e-9)
    for step in range(count + 1):
        time = start + step * stride
        url = _fill_template(url_template, time)
        if url.rsplit("/", 1)[-1] in names:
            clips.append(
                (
                    float(template.offset * (time + active_offset)),
                    _fill_template(written_template, time),
                    url,
                )
            )
    if not clips:
        return chosen
    starts = [(t, i) for i, (t, _, _) in enumerate(clips)]
    for frame in state.ctx.frames:
        _, written, url = clips[_active_at(starts, frame)]
        chosen.setdefault((written, url), []).append(frame)
    return chosen


def _fill_template(template: str, time: float) -> str:
    """``clip.###.usd`` -> ``clip.012.usd``; ``clip.###.##.usd`` also fills the sub-frame."""
    runs = list(_HASHES.finditer(template))
    if not runs:
        return template
    if len(runs) > 1:
        whole, fraction = runs[-2], runs[-1]
        width = len(fraction.group(0))
        scaled = round(time * 10**width)
        integer, decimal = divmod(scaled, 10**width)
        return (
            template[: whole.start()]
            + str(integer).zfill(len(whole.group(0)))
            + template[whole.end() : fraction.start()]
            + str(decimal).zfill(width)
            + template[fraction.end() :]
        )
    run = runs[-1]
    return (
        template[: run.start()] + str(round(time)).zfill(len(run.group(0))) + template[run.end() :]
    )


# -- what the composed stage reads ------------------------------------------------------


def _used_layers(state: _Resolve, stage: Any) -> None:
    for layer in stage.GetUsedLayers(False):
        if layer.anonymous or not layer.realPath:
            continue
        url = state.url_of(layer.realPath)
        if url is not None:
            state.add(_name(layer), url, f"layer used by {state.ctx.scene_url}", None)


def _assets(state: _Resolve, stage: Any) -> None:
    """Every asset-valued attribute at each requested frame, as the composed stage reads it."""
    variables = _stage_variables(stage)
    frames = state.ctx.frames
    for prim in _rendered_prims(stage):
        for attr in prim.GetAttributes():
            if attr.GetTypeName() not in _ASSET_TYPES:
                continue
            if attr.ValueMightBeTimeVarying():
                for frame in frames:
                    _attribute_value(state, attr, Usd.TimeCode(frame), [frame], variables)
            elif frames:
                _attribute_value(state, attr, Usd.TimeCode(frames[0]), None, variables)


def _rendered_prims(stage: Any) -> Iterator[Any]:
    predicate = Usd.PrimIsActive & Usd.PrimIsLoaded
    yield from stage.Traverse(predicate)
    for prototype in stage.GetPrototypes():
        yield from Usd.PrimRange(prototype, predicate)


def _attribute_value(
    state: _Resolve, attr: Any, time: Any, frames: Sequence[int] | None, variables: dict[str, Any]
) -> None:
    source = str(attr.GetPath())
    value = attr.Get(time)
    values = [value] if isinstance(value, Sdf.AssetPath) else list(value or [])
    for item in values:
        if not isinstance(item, Sdf.AssetPath) or not item.path:
            continue
        written = item.path
        if item.resolvedPath and not _UDIM.search(item.path):
            url = state.url_of(item.resolvedPath)
            if url is not None:
                state.asset(written, url, source, frames)
                continue
        layer = _value_layer(state, attr, time)
        try:
            url = state.target(item.evaluatedPath or written, layer, variables) if layer else None
        except ValueError as exc:
            state.out.unresolved.append(Unresolved(source, written, str(exc)))
            continue
        if url is None and layer is None:
            state.out.unresolved.append(Unresolved(source, written, "no layer authors this value"))
            continue
        if url is not None:
            state.asset(written, url, source, frames)


def _value_layer(state: _Resolve, attr: Any, time: Any) -> Any:
    """The layer whose opinion gives the attribute's value at ``time`` (the anchor of a
    relative asset path)."""
    info = attr.GetResolveInfo(time)
    kind = info.GetSource()
    if kind == Usd.ResolveInfoSourceValueClips:
        layer = _clip_layer(state, attr.GetPrim(), time)
        if layer is not None:
            return layer
    for spec in attr.GetPropertyStack(time):
        if kind == Usd.ResolveInfoSourceDefault and spec.HasDefaultValue():
            return spec.layer
        if kind == Usd.ResolveInfoSourceTimeSamples and spec.layer.GetNumTimeSamplesForPath(
            spec.path
        ):
            return spec.layer
    stack = attr.GetPropertyStack(time)
    return stack[0].layer if stack else None


def _clip_layer(state: _Resolve, prim: Any, time: Any) -> Any:
    """The clip layer active at ``time`` for the nearest prim (itself or an ancestor) with
    clips: the anchor of relative asset paths authored inside clips."""
    frame = int(time.GetValue())
    while prim and not prim.IsPseudoRoot():
        for url in state.active_clips.get((str(prim.GetPath()), frame), []):
            local = state.local_of_url.get(url)
            layer = Sdf.Layer.Find(local) if local else None
            if layer is None:  # a clip named by a mapped node path: the alias USD opened
                layer = state.alias_of_url.get(url)
            if layer is not None:
                return layer
        prim = prim.GetParent()
    return None
