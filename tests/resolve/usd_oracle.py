"""What usd-core itself reads for a USD case, per frame: the oracle the USD corpus tests
compare `jitrender deps` against. It opens the stage from a full local copy of the bucket
(every layer, every stand-in file, every decoy) and asks USD, not jitrender's resolver."""

from __future__ import annotations

import gzip
import re
import shutil
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path

from pxr import Sdf, Usd, UsdShade

CORPUS = Path(__file__).resolve().parents[2] / ".." / "shared" / "corpus" / "usd"
PLACEHOLDER = b"jitrender stand-in for a file the corpus does not store.\n" + b"\0" * 4
LAYER_SUFFIXES = (".usd", ".usda", ".usdc", ".usdz")
_PROBE = "jitrenderProbe_"


@dataclass(frozen=True)
class Case:
    name: str
    scene: str
    frames: tuple[int, ...]


@dataclass
class Expected:
    """Per frame: the files (bucket-relative) usd-core reads; and those it asks for that do
    not exist."""

    needed: dict[int, set[str]] = field(default_factory=dict)
    missing: set[str] = field(default_factory=set)


def cases() -> list[Case]:
    text = (CORPUS / "SOURCES.md").read_text()
    found = []
    for match in re.finditer(
        r"^## (\S+)\n- .*?scene `([^`]+)`, frames \[([^\]]*)\]", text, re.MULTILINE
    ):
        frames = tuple(int(f) for f in match.group(3).split(","))
        found.append(Case(match.group(1), match.group(2), frames))
    return found


def build_bucket(case: Case, dest: Path) -> None:
    """The case's layers (gzipped ones unpacked), a stand-in for every non-layer file any
    layer names (all variants, all samples: the unselected ones are decoys), UDIM tiles with a
    decoy outside 1001-1100, and template clips one stride past the template's end (decoys)."""
    src = CORPUS / "cases" / case.name / "files"
    for path in src.rglob("*"):
        if not path.is_file():
            continue
        rel = path.relative_to(src).as_posix()
        out = dest / (rel[:-3] if rel.endswith(".gz") else rel)
        out.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".gz"):
            out.write_bytes(gzip.decompress(path.read_bytes()))
        else:
            shutil.copyfile(path, out)
    for layer_file in sorted(dest.rglob("*")):
        if layer_file.suffix in (".usd", ".usda", ".usdc"):
            _stand_ins(layer_file)
        elif layer_file.suffix == ".mtlx":
            for texture in materialx_files(layer_file):
                _write_stand_in(texture)


def _write_stand_in(path: Path) -> None:
    if "<UDIM>" in path.name:
        for tile in ("1001", "1002", "1011", "1101"):
            _write_stand_in(path.with_name(path.name.replace("<UDIM>", tile)))
        return
    if path.exists() or path.suffix.lower() in LAYER_SUFFIXES or "[" in str(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(PLACEHOLDER)


def _stand_ins(layer_file: Path) -> None:
    layer = Sdf.Layer.FindOrOpen(str(layer_file))
    if layer is None:
        return
    folder = layer_file.parent

    def named(value: object) -> None:
        items = [value] if isinstance(value, Sdf.AssetPath) else list(value or [])
        for item in items:
            written = item.path if isinstance(item, Sdf.AssetPath) else None
            if written and "`" not in written and "://" not in written:
                _write_stand_in(
                    (folder / written).resolve() if not written.startswith("/") else Path(written)
                )

    def visit(path: Sdf.Path) -> None:
        spec = layer.GetObjectAtPath(path)
        if isinstance(spec, Sdf.AttributeSpec) and spec.typeName in (
            Sdf.ValueTypeNames.Asset,
            Sdf.ValueTypeNames.AssetArray,
        ):
            if spec.HasDefaultValue():
                named(spec.default)
            for time in layer.ListTimeSamplesForPath(path):
                named(layer.QueryTimeSample(path, time))
        elif isinstance(spec, Sdf.PrimSpec) and spec.HasInfo("clips"):
            for clip in dict(spec.GetInfo("clips")).values():
                clip = dict(clip)
                template = clip.get("templateAssetPath")
                if template and "templateEndTime" in clip and "templateStride" in clip:
                    decoy_time = float(clip["templateEndTime"]) + float(clip["templateStride"])
                    _decoy_clip(folder, str(template), decoy_time)

    layer.Traverse(Sdf.Path.absoluteRootPath, visit)


def _decoy_clip(folder: Path, template: str, time: float) -> None:
    runs = list(re.finditer(r"#+", template))
    if not runs:
        return
    if len(runs) > 1:
        width = len(runs[-1].group(0))
        integer, decimal = divmod(round(time * 10**width), 10**width)
        name = (
            template[: runs[-2].start()]
            + str(integer).zfill(len(runs[-2].group(0)))
            + template[runs[-2].end() : runs[-1].start()]
            + str(decimal).zfill(width)
            + template[runs[-1].end() :]
        )
    else:
        run = runs[0]
        name = (
            template[: run.start()]
            + str(round(time)).zfill(len(run.group(0)))
            + template[run.end() :]
        )
    target = (folder / name).resolve()
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("#usda 1.0\n")


def materialx_files(document: Path) -> list[Path]:
    """The files a MaterialX document's ``filename`` inputs name (``fileprefix`` applied)."""
    found = []

    def walk(element: ElementTree.Element, prefix: str) -> None:
        prefix += element.get("fileprefix", "")
        if element.get("type") == "filename" and element.get("value"):
            found.append((document.parent / (prefix + str(element.get("value")))).resolve())
        for child in element:
            walk(child, prefix)

    walk(ElementTree.parse(document).getroot(), "")
    return found


def expected(bucket: Path, case: Case, scratch: Path) -> Expected:
    """Open ``case.scene`` from a copy of ``bucket`` (clip layers get probe attributes there)
    and collect, per frame: used layers, the clip each clip set makes USD read (found by a
    probe value authored into every clip: a string, held, never interpolated across clips),
    manifests, asset attribute values at the time code, UDIM tiles, MaterialX documents and
    their textures."""
    probe_root = scratch / "probed"
    shutil.copytree(bucket, probe_root)
    clip_ids = _write_probes(probe_root / case.scene)
    out = Expected()
    for frame in case.frames:
        stage = Usd.Stage.Open(str(probe_root / case.scene), Usd.Stage.LoadAll)
        needed: set[str] = set()

        def keep(local: str, needed: set[str] = needed) -> None:
            path = Path(local.split("[", 1)[0]).resolve()
            if path.is_relative_to(probe_root.resolve()):
                needed.add(path.relative_to(probe_root.resolve()).as_posix())

        for layer in stage.GetUsedLayers(False):
            if layer.realPath:
                keep(layer.realPath)
        time = Usd.TimeCode(frame)
        for prim in stage.TraverseAll():
            for spec in prim.GetPrimStack():
                for item in [
                    *spec.referenceList.GetAddedOrExplicitItems(),
                    *spec.payloadList.GetAddedOrExplicitItems(),
                ]:
                    if item.assetPath and "`" not in item.assetPath:
                        _non_layer_arc(spec.layer.ComputeAbsolutePath(item.assetPath), keep, out)
            api = Usd.ClipsAPI(prim)
            for name in dict(api.GetClips()):
                probe = prim.GetAttribute(_PROBE + name)
                if probe and probe.Get(time) is not None:
                    keep(clip_ids[int(probe.Get(time))])
                    manifest = api.GetClipManifestAssetPath(name)
                    if manifest and manifest.resolvedPath:
                        keep(manifest.resolvedPath)
        for prim in _rendered(stage):
            for attr in prim.GetAttributes():
                if attr.GetTypeName() not in (
                    Sdf.ValueTypeNames.Asset,
                    Sdf.ValueTypeNames.AssetArray,
                ) or attr.GetName().startswith(_PROBE):
                    continue
                value = attr.Get(time)
                for item in [value] if isinstance(value, Sdf.AssetPath) else list(value or []):
                    _asset_value(stage, attr, time, item, keep, out)
        out.needed[frame] = needed - {case.scene}
        del stage
    out.missing = {m for m in out.missing if not any(m in n for n in out.needed.values())}
    return out


def _rendered(stage: Usd.Stage) -> list[Usd.Prim]:
    predicate = Usd.PrimIsActive & Usd.PrimIsLoaded
    prims = list(stage.Traverse(predicate))
    for prototype in stage.GetPrototypes():
        prims.extend(Usd.PrimRange(prototype, predicate))
    return prims


def _non_layer_arc(path: str, keep: object, out: Expected) -> None:
    """An arc USD cannot open as a layer (a MaterialX document) is still read."""
    target = Path(path)
    if target.suffix.lower() != ".mtlx":
        return
    if target.is_file():
        keep(str(target))  # type: ignore[operator]
        for texture in materialx_files(target):
            _file_or_tiles(str(texture), keep, out)
    else:
        out.missing.add(target.name)


def _file_or_tiles(path: str, keep: object, out: Expected) -> None:
    if "<UDIM>" in path:
        for tile in range(1001, 1101):
            candidate = path.replace("<UDIM>", str(tile))
            if Path(candidate).is_file():
                keep(candidate)  # type: ignore[operator]
    elif Path(path.split("[", 1)[0]).is_file():
        keep(path)  # type: ignore[operator]
    else:
        out.missing.add(Path(path).name)


def _asset_value(
    stage: Usd.Stage,
    attr: Usd.Attribute,
    time: Usd.TimeCode,
    item: object,
    keep: object,
    out: Expected,
) -> None:
    if not isinstance(item, Sdf.AssetPath) or not item.path:
        return
    if UsdShade.UdimUtils.IsUdimIdentifier(item.evaluatedPath or item.path):
        layer = None
        for spec in attr.GetPropertyStack(time):
            layer = spec.layer
            break
        if layer is not None:
            for tile, _ in UsdShade.UdimUtils.ResolveUdimTilePaths(
                item.evaluatedPath or item.path, layer
            ):
                keep(tile)  # type: ignore[operator]
        return
    if item.resolvedPath:
        if item.resolvedPath.lower().endswith(".mtlx"):
            _non_layer_arc(item.resolvedPath, keep, out)
        else:
            keep(item.resolvedPath)  # type: ignore[operator]
    else:
        out.missing.add(Path(item.evaluatedPath or item.path).name)


def _write_probes(scene: Path) -> dict[int, str]:
    """Author ``jitrenderProbe_<set> = id`` into every clip a clip set may use (and declare it
    in the manifest and a session-free override in the root layer): the probe's value at a
    time code says which clip USD reads there, with USD's own offsets, active and times."""
    stage = Usd.Stage.Open(str(scene), Usd.Stage.LoadAll)
    ids: dict[str, int] = {}
    edits: list[tuple[str, str, str, str]] = []  # clip file, clip prim path, set, stage prim
    manifests: list[tuple[str, str, str]] = []
    for prim in stage.TraverseAll():
        api = Usd.ClipsAPI(prim)
        for name in dict(api.GetClips()):
            clip_prim = api.GetClipPrimPath(name)
            if not clip_prim:
                continue
            for asset in api.ComputeClipAssetPaths(name):
                if asset.resolvedPath:
                    ids.setdefault(asset.resolvedPath, len(ids))
                    edits.append((asset.resolvedPath, clip_prim, name, str(prim.GetPath())))
            manifest = api.GetClipManifestAssetPath(name)
            if manifest and manifest.resolvedPath:
                manifests.append((manifest.resolvedPath, clip_prim, name))
    del stage
    root = Sdf.Layer.FindOrOpen(str(scene))
    for clip_file, clip_prim, name in dict.fromkeys((e[0], e[1], e[2]) for e in edits):
        layer = Sdf.Layer.FindOrOpen(clip_file)
        spec = Sdf.CreatePrimInLayer(layer, clip_prim)
        attr = spec.attributes.get(_PROBE + name) or Sdf.AttributeSpec(
            spec, _PROBE + name, Sdf.ValueTypeNames.String
        )
        layer.SetTimeSample(attr.path, -1e9, str(ids[clip_file]))
        layer.SetTimeSample(attr.path, 1e9, str(ids[clip_file]))
        layer.Save()
    for manifest_file, clip_prim, name in manifests:
        layer = Sdf.Layer.FindOrOpen(manifest_file)
        spec = Sdf.CreatePrimInLayer(layer, clip_prim)
        if not spec.attributes.get(_PROBE + name):
            Sdf.AttributeSpec(spec, _PROBE + name, Sdf.ValueTypeNames.String)
        layer.Save()
    for _, _, name, stage_prim in edits:
        spec = Sdf.CreatePrimInLayer(root, stage_prim)
        if not spec.attributes.get(_PROBE + name):
            Sdf.AttributeSpec(spec, _PROBE + name, Sdf.ValueTypeNames.String)
    if edits:
        root.Save()
    return {index: path for path, index in ids.items()}
