"""USD layers (``.usd``, ``.usda``, ``.usdc``, ``.usdz``), read with Sdf, never composed.

Each layer is opened on its own (``Sdf.Layer.FindOrOpen``) and its specs are walked: sublayers,
references and payloads (each fetched and walked in turn, once), asset-valued attributes
(default and time samples; ``<UDIM>`` tiles that exist), and value clips — explicit
(``assetPaths`` + ``active``) and template (``templateAssetPath`` with start/end/stride) —
for exactly the requested frames (USD time codes). Relative asset paths are relative to the
layer that authored them; nothing is looked up on the local disk. Inside a ``.usdz`` the
package's own files belong to the package, which is the dependency.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pxr import Sdf, Tf

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import MissingDependencyError, SceneParseError
from jitrender.paths import is_url, url_basename, url_dirname
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext, file_dependencies

_HASHES = re.compile(r"#+")
# Adds the dependencies behind one asset path for some frames (None: every frame).
_AssetSink = Callable[[str, str, "Sequence[int] | None"], None]


@dataclass
class _Walk:
    """State of one resolve: the dependencies so far and the layers already walked."""

    out: Dependencies = field(default_factory=Dependencies)
    walked: set[str] = field(default_factory=set)


@register("usd", ".usd", ".usda", ".usdc", ".usdz")
def resolve_usd(ctx: ResolveContext) -> Dependencies:
    """The files a USD scene's requested frames need (see the module docstring)."""
    walk = _Walk(walked={ctx.scene_url})
    _walk_layer(ctx, ctx.scene_url, ctx.scene_file, walk)
    return walk.out.merged()


def _open(url: str, local: Path) -> Any:
    try:
        layer = Sdf.Layer.FindOrOpen(str(local))
        if layer is not None:
            # Sdf keeps layers open per process: pick up a file changed since it was read.
            layer.Reload()
    except Tf.ErrorException as exc:
        raise SceneParseError(f"{url}: malformed USD layer: {_why(exc)}") from None
    if layer is None:
        raise SceneParseError(f"{url}: not a USD layer USD can read")
    return layer


def _why(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    # Sdf's message is "Error in '<function>' at line N in file <source> : '<what>'".
    quoted = re.search(r" : '(.*)'$", text)
    what = quoted.group(1) if quoted else text
    return what if len(what) < 300 else what[:297] + "..."


def _walk_layer(ctx: ResolveContext, url: str, local: Path, walk: _Walk) -> None:
    layer = _open(url, local)
    in_package = url.lower().endswith(".usdz")
    folder = url_dirname(url)
    name = url_basename(url)
    layers: list[tuple[str, str]] = []

    def asset(written: str, source: str, frames: Sequence[int] | None = None) -> None:
        """One asset path, needed by ``frames`` (``None``: every frame)."""
        if _inside_package(written, in_package):
            return
        if "`" in written or "${" in written:
            walk.out.unresolved.append(
                Unresolved(source, written, "USD variable expression: needs the stage's variables")
            )
            return
        found = file_dependencies(ctx, written, source, relative_to=folder)
        if frames is not None:
            narrowed = tuple(sorted(frames))
            found.deps = [replace(dep, frames=narrowed) for dep in found.deps]
        walk.out.extend(found)

    def sublayer_or_arc(written: str, source: str) -> None:
        if written and not _inside_package(written, in_package):
            layers.append((written, source))

    for written in layer.subLayerPaths:
        sublayer_or_arc(written, f"{name}:subLayers")

    paths: list[Any] = []
    layer.Traverse(Sdf.Path.absoluteRootPath, paths.append)
    for path in paths:
        spec = layer.GetObjectAtPath(path)
        if isinstance(spec, Sdf.PrimSpec):
            for ref in spec.referenceList.GetAddedOrExplicitItems():
                sublayer_or_arc(ref.assetPath, f"{path}.references")
            for payload in spec.payloadList.GetAddedOrExplicitItems():
                sublayer_or_arc(payload.assetPath, f"{path}.payload")
            if spec.HasInfo("clips"):
                for clip_set, clip in dict(spec.GetInfo("clips")).items():
                    _clips(ctx, dict(clip), f"{path}.clips[{clip_set}]", asset)
        elif isinstance(spec, Sdf.AttributeSpec) and spec.typeName in (
            Sdf.ValueTypeNames.Asset,
            Sdf.ValueTypeNames.AssetArray,
        ):
            source = str(path)
            if spec.HasDefaultValue():
                for written in _asset_strings(spec.default):
                    asset(written, source)
            times = sorted(layer.ListTimeSamplesForPath(path))
            for time, frames in _held_samples(times, ctx.frames).items():
                for written in _asset_strings(layer.QueryTimeSample(path, time)):
                    asset(written, source, frames)

    for written, source in layers:
        _follow(ctx, written, source, folder, walk)


def _follow(ctx: ResolveContext, written: str, source: str, folder: str, walk: _Walk) -> None:
    """A sublayer, reference or payload: a dependency of every frame, walked in turn."""
    found = file_dependencies(ctx, written, source, relative_to=folder)
    walk.out.unresolved.extend(found.unresolved)
    for dep in found.deps:
        if dep.url in walk.walked:
            walk.out.deps.append(dep)
            continue
        walk.walked.add(dep.url)
        try:
            local = ctx.fetch(dep.url)
        except (MissingDependencyError, FileNotFoundError):
            local = None
        if local is None or not Path(local).is_file():
            walk.out.deps.append(Dependency(dep.path, dep.url, dep.frames, source, exists=False))
            continue
        walk.out.deps.append(dep)
        _walk_layer(ctx, dep.url, Path(local), walk)


def _inside_package(written: str, in_package: bool) -> bool:
    """In a .usdz, a plain relative path names a file in the package itself."""
    if not in_package or not written:
        return False
    return not (is_url(written) or written.startswith(("/", "../")))


def _asset_strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, Sdf.AssetPath):
        return [value.path] if value.path else []
    if isinstance(value, str):
        return [value] if value else []
    if isinstance(value, Iterable):
        return [s for item in value for s in _asset_strings(item)]
    return []


def _held_samples(times: Sequence[float], frames: Iterable[int]) -> dict[float, list[int]]:
    """Sample time -> the frames that hold it (asset values are held, never interpolated: the
    last sample at or before the frame, or the first sample before the first)."""
    held: dict[float, list[int]] = {}
    if not times:
        return held
    for frame in frames:
        before = [t for t in times if t <= frame]
        held.setdefault(before[-1] if before else times[0], []).append(frame)
    return held


def _clips(
    ctx: ResolveContext,
    clip: dict[str, Any],
    source: str,
    asset: _AssetSink,
) -> None:
    """One clip set: the clip file active at each requested frame, and the manifest."""
    manifest = clip.get("manifestAssetPath")
    for written in _asset_strings(manifest):
        asset(written, source, None)
    template = _asset_strings(clip.get("templateAssetPath"))
    if template:
        _template_clips(ctx, clip, template[0], source, asset)
        return
    paths = _asset_strings(clip.get("assetPaths"))
    active = sorted((float(a[0]), int(a[1])) for a in clip.get("active", []))
    if not paths:
        return
    if not active:
        active = [(0.0, 0)]
    by_clip: dict[int, list[int]] = {}
    for frame in ctx.frames:
        before = [index for time, index in active if time <= frame]
        by_clip.setdefault(before[-1] if before else active[0][1], []).append(frame)
    for index, frames in sorted(by_clip.items()):
        if 0 <= index < len(paths):
            asset(paths[index], source, frames)


def _template_clips(
    ctx: ResolveContext,
    clip: dict[str, Any],
    template: str,
    source: str,
    asset: _AssetSink,
) -> None:
    start = float(clip.get("templateStartTime", 0.0))
    end = float(clip.get("templateEndTime", start))
    stride = float(clip.get("templateStride", 1.0))
    offset = float(clip.get("templateActiveOffset", 0.0))
    if stride <= 0 or end < start:
        asset(template, source, None)
        return
    times = []
    time = start
    while time <= end + 1e-9:
        times.append(time)
        time += stride
    by_time: dict[float, list[int]] = {}
    for frame in ctx.frames:
        before = [t for t in times if t + offset <= frame]
        by_time.setdefault(before[-1] if before else times[0], []).append(frame)
    for time, frames in sorted(by_time.items()):
        asset(_fill_template(template, time), source, frames)


def _fill_template(template: str, time: float) -> str:
    """``clip.###.usd`` -> ``clip.012.usd``; ``clip.###.##.usd`` also fills the sub-frame."""
    runs = list(_HASHES.finditer(template))
    if not runs:
        return template
    whole = int(time)
    parts = [str(whole).zfill(len(runs[0].group(0)))]
    if len(runs) > 1:
        width = len(runs[1].group(0))
        parts.append(str(round((time - whole) * 10**width)).zfill(width))
    out, last = [], 0
    for run, text in zip(runs, parts, strict=False):
        out.append(template[last : run.start()] + text)
        last = run.end()
    return "".join(out) + template[last:]
