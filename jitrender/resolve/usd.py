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

_UDIM = re.compile(r"<UDIM>", re.IGNORECASE)
_FORMAT_ARGS = ":SDF_FORMAT_ARGS:"
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
    # Layers tried to see whether a search path finds them, not yet recorded by ``fetch``.
    pending: set[str] = field(default_factory=set)
    listed: dict[str, set[str]] = field(default_factory=dict)  # folder URL -> names in it
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

    def target(
        self, written: str, layer: Any, variables: dict[str, Any] | None, search: str | None = None
    ) -> str | None:
        """The URL an asset path authored in ``layer`` names (``None``: inside a package, or
        nothing). ``search``: ``"layer"`` or ``"asset"`` to look a search path up as USD's
        default resolver does where it does not exist next to ``layer`` (:meth:`searched`)."""
        path = _without_format_args(_evaluate(written, variables))
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
        url = self.ctx.map(path, relative_to=url_dirname(base))
        if search is not None and _is_search_path(path):
            return self.searched(path, url, fetch=search == "layer")
        return url

    def searched(self, path: str, url: str, *, fetch: bool) -> str:
        """ArDefaultResolver's search paths: an asset path that is relative but not
        file-relative (``sub/a.usd``, not ``./sub/a.usd``) and does not exist anchored to its
        layer (``url``) is looked for in the stage's resolver context -- the root layer's
        folder -- then in ``PXR_AR_DEFAULT_SEARCH_PATH``; the first that exists is read.
        ``url`` where none does (reported missing as written). ``fetch``: a layer (fetched to
        see, as it will be read); else a file checked in its folder's listing."""
        if _UDIM.search(path) or self.exists(url, fetch=fetch):
            return url
        for folder in self._search_folders():
            try:
                candidate = self.ctx.map(path, relative_to=folder)
            except ValueError:
                continue
            if candidate != url and self.exists(candidate, fetch=fetch):
                return candidate
        return url

    def _search_folders(self) -> list[str]:
        folders = [self.ctx.scene_folder_url]
        env = self.ctx.env.get("PXR_AR_DEFAULT_SEARCH_PATH")
        if env is None:
            env = os.environ.get("PXR_AR_DEFAULT_SEARCH_PATH", "")
        for entry in env.split(os.pathsep):
            if not entry.strip():
                continue
            try:
                folders.append(self.ctx.map(entry.strip().rstrip("/") or "/"))
            except ValueError:
                continue
        return folders

    def exists(self, url: str, *, fetch: bool) -> bool:
        """Whether ``url`` exists in storage: a layer is fetched (kept for ``fetch``), another
        file is looked up in its folder's listing."""
        if url in self.tried:
            return self.tried[url]
        if fetch:
            self.pending.add(url)  # (fetch records it, found or not, when it is the one read)
            return self._get(url)
        if "[" in url:
            url = url.split("[", 1)[0]
        return posixpath.basename(split_url(url)[2]) in self.names(url_dirname(url))

    def names(self, folder: str) -> set[str]:
        """The names of the objects directly in ``folder`` (listed once per resolve)."""
        found = self.listed.get(folder)
        if found is None:
            found = self.listed[folder] = set(self.ctx.names_in_folder(folder))
        return found

    def _get(self, url: str) -> bool:
        """Fetch ``url`` once into the resolve folder; whether it exists."""
        try:
            local = self.ctx.fetch(url)
        except (MissingDependencyError, FileNotFoundError):
            self.tried[url] = False
            return False
        self.tried[url] = True
        self.url_of_local[str(Path(local).resolve())] = url
        self.url_of_local[str(local)] = url
        self.local_of_url[url] = str(local)
        return True

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
        if url in self.tried and url not in self.pending:
            if frames is not None:
                self.add(written, url, source, frames)
            if anchored is not None and self.tried[url] and anchored not in self.aliases:
                return self._alias(anchored, url)  # the same layer named another way
            return False
        self.add(written, url, source, frames)
        if url in self.pending:  # tried by a search-path lookup: new to composition
            self.pending.discard(url)
            if not self.tried[url]:
                return False
        elif not self._get(url):
            return False
        if anchored is not None:
            self._alias(anchored, url)
        if url.lower().endswith(".mtlx"):
            self._materialx(url, Path(self.local_of_url[url]), frames)
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
        inherited from enclosing elements), and the documents its top-level ``xi:include``
        elements include (MaterialX reads them, relative to the including document, when USD
        loads it), each with its own files."""
        try:
            root = _parse_materialx(local)
        except ElementTree.ParseError as exc:
            self.out.unresolved.append(Unresolved(url, "", f"MaterialX does not parse: {exc}"))
            return
        folder = url_dirname(url)
        for child in root:
            href = child.get("href")
            if isinstance(child.tag, str) and child.tag.endswith("}include") and href:
                try:
                    included = self.ctx.map(href, relative_to=folder)
                except ValueError as exc:
                    self.out.unresolved.append(Unresolved(url, href, str(exc)))
                else:
                    self.fetch(included, href, f"{url} xi:include", frames)

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

        walk(root, "")


def _parse_materialx(local: Path) -> ElementTree.Element:
    """A MaterialX document's root element. MaterialX's own reader ignores XML namespaces, so
    documents often use ``xi:include`` without declaring ``xmlns:xi``: such prefixes are
    declared here before parsing rather than failing the document."""
    try:
        return ElementTree.parse(local).getroot()
    except ElementTree.ParseError:
        text = local.read_text(encoding="utf-8", errors="replace")
    prefixes = set(re.findall(r"</?([A-Za-z_][\w.-]*):[A-Za-z_]", text))
    prefixes |= set(re.findall(r"\s([A-Za-z_][\w.-]*):[A-Za-z_][\w.-]*\s*=", text))
    declared = set(re.findall(r"xmlns:([A-Za-z_][\w.-]*)\s*=", text))
    missing = sorted(prefixes - declared - {"xml", "xmlns"})
    start = re.search(r"<[A-Za-z_][\w.:-]*", text)
    if not missing or start is None:
        raise ElementTree.ParseError("unbound prefix")
    declarations = "".join(f' xmlns:{name}="urn:undeclared:{name}"' for name in missing)
    patched = text[: start.end()] + declarations + text[start.end() :]
    return ElementTree.fromstring(patched)


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
            sublayers = list(layer.subLayerPaths)
            own = variables
            if any(_is_expression(written) for written in sublayers):
                own = _layer_variables(stage, layer, variables)
            for written in sublayers:
                new |= _arc(state, written, layer, own, f"layer {_name(layer)} subLayers")
        for prim in _all_prims(stage):
            for spec in prim.GetPrimStack():
                # Layers do not change between rounds: each spec's arcs are read once.
                key = f"{spec.layer.identifier}<{spec.path}>"
                if key in state.scanned:
                    continue
                state.scanned.add(key)
                references = spec.referenceList.GetAddedOrExplicitItems()
                payloads = spec.payloadList.GetAddedOrExplicitItems()
                own = variables
                if any(_is_expression(arc.assetPath) for arc in (*references, *payloads)):
                    own = _spec_variables(prim, spec, variables)
                for ref in references:
                    source = f"layer {prim.GetPath()} references"
                    new |= _arc(state, ref.assetPath, spec.layer, own, source)
                for payload in payloads:
                    source = f"layer {prim.GetPath()} payload"
                    new |= _arc(state, payload.assetPath, spec.layer, own, source)
            new |= _clips(state, prim, None)
        if not new:
            return stage
        del stage
    raise SceneParseError(f"{state.ctx.scene_url}: composition did not settle")


def _arc(
    state: _Resolve, written: str, layer: Any, variables: dict[str, Any] | None, source: str
) -> bool:
    if not written:
        return False
    try:
        url = state.target(written, layer, variables, search="layer")
    except ValueError as exc:
        state.out.unresolved.append(Unresolved(source, written, str(exc)))
        return False
    if url is None:
        return False
    anchored = _anchored(written, layer, variables)
    return state.fetch(url, written, source, None, anchored)


def _without_format_args(path: str) -> str:
    """The file an asset path names: Sdf's ``file.usd:SDF_FORMAT_ARGS:key=value`` opens
    ``file.usd`` with those arguments for its file format."""
    return path.split(_FORMAT_ARGS, 1)[0]


def _is_search_path(path: str) -> bool:
    """ArDefaultResolver's search path: relative, and not file-relative (``./``, ``../``)."""
    return bool(path) and not (
        path.startswith(("/", "./", "../", "\\"))
        or is_url(path)
        or "[" in path
        or re.match(r"[A-Za-z]:[\\/]", path) is not None
    )


def _anchored(written: str, layer: Any, variables: dict[str, Any] | None) -> str | None:
    """The path composition opens for an arc ``written`` in ``layer`` (Sdf's own anchoring): a
    node path, None for a URL, a package's inner file or a path left relative (an anonymous
    layer's)."""
    path = _evaluate(written, variables)
    if not path or is_url(path) or "[" in path or _FORMAT_ARGS in path:
        return None
    anchored = str(layer.ComputeAbsolutePath(path))
    return anchored if anchored.startswith("/") and "[" not in anchored else None


def _name(layer: Any) -> str:
    return str(layer.realPath or layer.identifier).rsplit("/", 1)[-1]


def _is_expression(written: str) -> bool:
    return written.startswith("`") and written.endswith("`")


def _node_variables(node: Any) -> dict[str, Any]:
    """The expression variables a prim index node's layer stack evaluates paths with (Pcp
    composes the root layer's ``expressionVariables`` of each referenced layer stack under
    those of the layer stack that references it)."""
    return dict(node.layerStack.expressionVariables.GetVariables())


def _spec_variables(prim: Any, spec: Any, fallback: dict[str, Any]) -> dict[str, Any]:
    """The expression variables of the layer stack that holds ``spec`` in ``prim``'s index."""
    identifier = spec.layer.identifier
    for node in _nodes(prim.GetPrimIndex().rootNode):
        if node.path == spec.path and any(
            layer.identifier == identifier for layer in node.layerStack.layers
        ):
            return _node_variables(node)
    return fallback


def _layer_variables(stage: Any, layer: Any, fallback: dict[str, Any]) -> dict[str, Any]:
    """The expression variables of the layer stack ``layer`` is in (its sublayer paths are
    evaluated with them): the stage's own for its root layer stack."""
    identifier = layer.identifier
    if any(member.identifier == identifier for member in stage.GetLayerStack(True)):
        return fallback
    for prim in _all_prims(stage):
        for node in _nodes(prim.GetPrimIndex().rootNode):
            if any(member.identifier == identifier for member in node.layerStack.layers):
                return _node_variables(node)
    return fallback


def _stage_variables(stage: Any) -> dict[str, Any]:
    variables: dict[str, Any] = dict(stage.GetRootLayer().expressionVariables)
    session = stage.GetSessionLayer()
    if session is not None:
        variables.update(dict(session.expressionVariables))
    return variables


def _evaluate(written: str, variables: dict[str, Any] | None) -> str:
    """An asset path as USD reads it: a ``\\`...\\``` expression evaluated with the stage's
    variables; ``variables`` None: taken literally (USD evaluates no expression in value
    clips' asset paths, templates or manifests)."""
    if variables is None or not _is_expression(written):
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


_ANCHOR = "_anchor"  # (not a USD key) the layer a clip set's asset paths are anchored to


def _clip_keys(prim: Any) -> dict[str, dict[str, _ClipKey]]:
    """Clip sets on ``prim`` as USD composes them (Usd_ComputeClipSetDefinitionsForPrimIndex):
    in each node of its prim index, strong to weak, the sets its layer stack's ``clips`` name
    that its ``clipSets`` list op keeps (``delete clipSets`` drops one there), each key from
    the strongest opinion; ``_ANCHOR``: the strongest layer authoring ``assetPaths`` or
    ``templateAssetPath`` (the one USD anchors the set's asset paths to). A set with no
    anchor is ignored, as USD ignores it."""
    sets: dict[str, dict[str, _ClipKey]] = {}
    for node in _nodes(prim.GetPrimIndex().rootNode):
        if node.isInert or not node.hasSpecs:
            continue
        stack = node.layerStack
        layers, offsets = list(stack.layers), list(stack.layerOffsets)
        to_root = node.mapToRoot.timeOffset
        in_node: dict[str, dict[str, _ClipKey]] = {}
        kept: list[str] = []
        for index in reversed(range(len(layers))):  # weak to strong
            layer = layers[index]
            spec = layer.GetPrimAtPath(node.path)
            if spec is None:
                continue
            offset = to_root * (offsets[index] if index < len(offsets) else Sdf.LayerOffset())
            if spec.HasInfo("clips"):
                names = []
                for name, keys in dict(spec.GetInfo("clips")).items():
                    if not name or not isinstance(keys, dict):
                        continue
                    composed = in_node.setdefault(name, {})
                    for key, value in keys.items():
                        composed[key] = _ClipKey(value, layer, offset)
                    if "assetPaths" in keys or "templateAssetPath" in keys:
                        composed[_ANCHOR] = _ClipKey(None, layer, offset)
                    names.append(name)
                kept += [name for name in sorted(names) if name not in kept]
            if spec.HasInfo("clipSets"):
                kept = list(spec.GetInfo("clipSets").ApplyOperations(kept))
        for name, keys in in_node.items():
            if name in kept:
                composed = sets.setdefault(name, {})
                for key, value in keys.items():
                    composed.setdefault(key, value)
    return {name: keys for name, keys in sets.items() if _ANCHOR in keys}


def _nodes(node: Any) -> Iterator[Any]:
    """A prim index's nodes, strong to weak."""
    yield node
    for child in node.children:
        yield from _nodes(child)


def _clips(state: _Resolve, prim: Any, variables: dict[str, Any] | None) -> bool:
    """Fetch the clip each clip set activates at each requested frame, and its manifest."""
    if not prim.HasMetadata("clips"):
        return False
    new = False
    for name, keys in _clip_keys(prim).items():
        source = f"clip {prim.GetPath()} clips[{name}]"
        if "assetPaths" not in keys and "templateAssetPath" in keys:
            if not all(k in keys for k in _TEMPLATE_KEYS):
                continue  # incomplete: USD ignores the set
            chosen = _template_active(state, keys, variables, source)
        else:
            if not all(k in keys for k in _EXPLICIT_KEYS):
                continue
            chosen = _explicit_active(state, keys, variables, source)
        if not chosen:
            continue
        # The layer the set's paths (clips, manifest) are anchored to: an absolute one (a show
        # mount that path_map maps) is aliased as layers are, so USD's clips open it and its
        # values count.
        authored = keys[_ANCHOR].layer
        manifest = keys.get("manifestAssetPath")
        if manifest is not None and str(getattr(manifest.value, "path", "")):
            new |= _arc(state, manifest.value.path, authored, variables, source)
        template = "assetPaths" not in keys
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
    variables: dict[str, Any] | None,
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


def _valid_prim_path(keys: dict[str, _ClipKey]) -> bool:
    """USD's check of a clip set's ``primPath``: an absolute prim path."""
    text = keys["primPath"].value
    if not isinstance(text, str) or not text or not Sdf.Path.IsValidPathString(text):
        return False
    path = Sdf.Path(text)
    return bool(path.IsAbsolutePath() and path.IsPrimPath())


def _valid_explicit(keys: dict[str, _ClipKey]) -> bool:
    """USD's validation of an explicit clip set (Usd_ClipSet::New): a set that fails it is not
    used at all -- an empty asset path, an ``active`` index out of range, two clips active at
    one time, or more than two ``times`` entries at one stage time."""
    paths = list(keys["assetPaths"].value or [])
    active = list(keys["active"].value or [])
    if not _valid_prim_path(keys) or any(not str(getattr(p, "path", "")) for p in paths):
        return False
    if any(not 0 <= int(a[1]) < len(paths) for a in active):
        return False
    if len({float(a[0]) for a in active}) != len(active):
        return False
    times = keys.get("times")
    stage_times = [float(t[0]) for t in (times.value or [])] if times is not None else []
    return all(stage_times.count(t) <= 2 for t in set(stage_times))


def _explicit_active(
    state: _Resolve, keys: dict[str, _ClipKey], variables: dict[str, Any] | None, source: str
) -> dict[tuple[str, str], list[int]]:
    paths = keys["assetPaths"]
    active = keys["active"]
    chosen: dict[tuple[str, str], list[int]] = {}
    if not _valid_explicit(keys):
        return chosen  # USD rejects the whole set
    starts = sorted((float(active.offset * float(a[0])), int(a[1])) for a in active.value)
    if not starts:
        return chosen
    for frame in state.ctx.frames:
        index = _active_at(starts, frame)
        written = paths.value[index].path
        try:
            url = state.target(written, keys[_ANCHOR].layer, variables, search="layer")
        except ValueError as exc:
            state.out.unresolved.append(Unresolved(source, written, str(exc)))
            continue
        if url is not None:
            chosen.setdefault((written, url), []).append(frame)
    return chosen


def _template_active(
    state: _Resolve, keys: dict[str, _ClipKey], variables: dict[str, Any] | None, source: str
) -> dict[tuple[str, str], list[int]]:
    """Template clips: one per stride from start to end, kept only where the file exists in
    storage (as USD keeps only those it can resolve), active from its time plus the offset."""
    template = keys["templateAssetPath"]
    anchor = keys[_ANCHOR]
    start = float(keys["templateStartTime"].value)
    end = float(keys["templateEndTime"].value)
    stride = float(keys["templateStride"].value)
    active_offset = (
        float(keys["templateActiveOffset"].value) if "templateActiveOffset" in keys else 0.0
    )
    chosen: dict[tuple[str, str], list[int]] = {}
    written_template = str(getattr(template.value, "path", template.value))
    if stride <= 0 or end < start or not _valid_prim_path(keys):
        return chosen
    try:
        url_template = state.target(written_template, anchor.layer, variables)
    except ValueError as exc:
        state.out.unresolved.append(Unresolved(source, written_template, str(exc)))
        return chosen
    if url_template is None:
        return chosen
    names = state.names(url_dirname(url_template))
    # A search-path template: each clip not next to its layer is looked for as USD's default
    # resolver looks (the root layer's folder, then PXR_AR_DEFAULT_SEARCH_PATH).
    path = _without_format_args(_evaluate(written_template, variables))
    searched: list[str] = []
    if _is_search_path(path) and "[" not in anchor.layer.identifier:
        for search_folder in state._search_folders():
            with contextlib.suppress(ValueError):
                searched.append(state.ctx.map(path, relative_to=search_folder))
    clips: list[tuple[float, str, str]] = []
    if _fill_template(written_template, start) is None or abs(active_offset) > stride:
        return chosen  # USD derives no clips from it
    count = math.floor((end - start) / stride + 1e-9)
    for step in range(count + 1):
        time = start + step * stride
        url = _fill_template(url_template, time) or ""
        found = url.rsplit("/", 1)[-1] in names
        for other in searched if not found else []:
            candidate = _fill_template(other, time) or ""
            if candidate.rsplit("/", 1)[-1] in state.names(url_dirname(candidate)):
                url, found = candidate, True
                break
        if found:
            written = _fill_template(written_template, time) or written_template
            clips.append((float(anchor.offset * (time + active_offset)), written, url))
    if not clips:
        return chosen
    starts = [(t, i) for i, (t, _, _) in enumerate(clips)]
    for frame in state.ctx.frames:
        _, written, url = clips[_active_at(starts, frame)]
        chosen.setdefault((written, url), []).append(frame)
    return chosen


def _fill_template(template: str, time: float) -> str | None:
    """A template clip's path at ``time``, as USD derives it (_DeriveClipInfo): the file name
    is split at dots; one part made only of ``#`` takes the integer part of the time
    (truncated, ``%0Nd``), a second one right after it the decimals (``%.Nf``). None: not a
    template USD accepts (no such part, more than two, or two apart)."""
    path, args, rest = template.partition(_FORMAT_ARGS)
    folder, slash, name = path.rpartition("/")
    parts = [part for part in name.split(".") if part]
    hashes = [i for i, part in enumerate(parts) if set(part) == {"#"}]
    if len(hashes) not in (1, 2) or (len(hashes) == 2 and hashes[1] != hashes[0] + 1):
        return None
    parts[hashes[0]] = f"{int(time):0{len(parts[hashes[0]])}d}"
    if len(hashes) == 2:
        decimals = f"{time:.{len(parts[hashes[1]])}f}"
        parts[hashes[1]] = decimals[decimals.find(".") + 1 :]
    return folder + slash + ".".join(parts) + args + rest


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
            url = (
                state.target(item.evaluatedPath or written, layer, variables, search="asset")
                if layer
                else None
            )
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
