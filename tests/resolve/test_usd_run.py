"""`jitrender run` of USD jobs end to end on fake-gcs-server, on corpus cases: a command
stage opens the workspace's stage with usd-core and reads everything its frames read (layers,
clips, asset values at the frame, UDIM tiles, MaterialX textures). It finds all of it local,
and the run fetched nothing else (the bucket holds decoys: unselected variants, other frames'
clips, tiles outside 1001-1100)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import put_object
from tests.renderjobs import RenderJob, bucket_objects, jitrender_env, run

pytest.importorskip("pxr.Usd")
from tests.resolve.usd_oracle import CORPUS, build_bucket, cases

if not (CORPUS / "SOURCES.md").is_file():
    pytest.skip(f"the USD corpus is not at {CORPUS}", allow_module_level=True)

# The stage: what a USD renderer reads for each of its frames, checked to be local.
READER = r"""
import json, pathlib, sys
import xml.etree.ElementTree as ET
from pxr import Sdf, Usd, UsdShade
scene, frames, outputs, inputs = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4]
present = sorted(str(p.relative_to(inputs)) for p in pathlib.Path(inputs).rglob("*") if p.is_file())
(outputs / "inputs.json").write_text(json.dumps(present))
bad = 0
for frame in [int(f) for f in frames.split(",")]:
    stage = Usd.Stage.Open(scene, Usd.Stage.LoadAll)
    read, absent = set(), set()
    def local(path):
        path = path.split("[", 1)[0]
        (read if pathlib.Path(path).is_file() else absent).add(path)
    def mtlx(doc):
        def walk(e, prefix):
            prefix += e.get("fileprefix", "")
            if e.get("type") == "filename" and e.get("value"):
                local(str(pathlib.Path(doc).parent / (prefix + e.get("value"))))
            for c in e:
                walk(c, prefix)
        walk(ET.parse(doc).getroot(), "")
    for prim in stage.TraverseAll():
        for spec in prim.GetPrimStack():
            for item in [*spec.referenceList.GetAddedOrExplicitItems(),
                         *spec.payloadList.GetAddedOrExplicitItems()]:
                if item.assetPath.endswith(".mtlx"):
                    doc = spec.layer.ComputeAbsolutePath(item.assetPath)
                    local(doc)
                    if pathlib.Path(doc).is_file():
                        mtlx(doc)
        for attr in prim.GetAttributes():
            value = attr.Get(Usd.TimeCode(frame))
            if attr.GetTypeName() not in (Sdf.ValueTypeNames.Asset, Sdf.ValueTypeNames.AssetArray):
                continue
            for item in [value] if isinstance(value, Sdf.AssetPath) else list(value or []):
                if not item.path:
                    continue
                if UsdShade.UdimUtils.IsUdimIdentifier(item.evaluatedPath or item.path):
                    layer = attr.GetPropertyStack(Usd.TimeCode(frame))[0].layer
                    pattern = item.evaluatedPath or item.path
                    tiles = UsdShade.UdimUtils.ResolveUdimTilePaths(pattern, layer)
                    for tile, _ in tiles:
                        local(tile)
                    if not tiles:
                        absent.add(item.path)
                elif item.resolvedPath:
                    local(item.resolvedPath)
                else:
                    absent.add(item.path)
    read.update(l.realPath for l in stage.GetUsedLayers(True) if l.realPath)
    base = pathlib.Path(inputs).resolve()
    rel = sorted(str(pathlib.Path(p).resolve().relative_to(base)) for p in read)
    record = {"read": rel, "absent": sorted(absent)}
    (outputs / f"reads.{frame:04d}.json").write_text(json.dumps(record))
    bad += len(absent)
sys.exit(3 if bad else 0)
"""

RUN_CASES = ("wg_vehicles", "ou_clips_tmpl_offsets", "ou_shade_udim")
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", RUN_CASES)
def test_usd_job_runs_with_every_file_its_frames_read_local_and_nothing_else_fetched(
    name: str, gcs_bucket: str, tmp_path: Path
) -> None:
    case = next(c for c in cases() if c.name == name)
    source = tmp_path / "source"
    build_bucket(case, source)
    for path in source.rglob("*"):
        if path.is_file():
            put_object(f"{gcs_bucket}/{path.relative_to(source).as_posix()}", path.read_bytes())
    root = tmp_path / "job"
    root.mkdir()
    reader = root / "reader.py"
    reader.write_text(READER)
    frames = ",".join(map(str, case.frames))
    job_file = root / "job.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {
                "name": name,
                "scene": f"{gcs_bucket}/{case.scene}",
                "frames": frames,
                "stages": [
                    {
                        "name": "render",
                        "per": "chunk",
                        "command": [
                            sys.executable,
                            str(reader),
                            "{scene}",
                            "{frame_list}",
                            "{outputs}",
                            "{inputs}",
                        ],
                    }
                ],
                "outputs": {
                    "to": f"{gcs_bucket}/renders/{name}",
                    "files": ["reads.####.json", "inputs.json"],
                },
            }
        )
    )
    job = RenderJob(root, gcs_bucket, list(case.frames), job_file, root, root / "cache", 0)
    code, out, report = run(job, env=jitrender_env(job))
    assert code == 0, out[-3000:]
    written = bucket_objects(gcs_bucket, f"renders/{name}/")
    scheme_root = f"gs/{gcs_bucket[len('gs://') :]}/"
    read: set[str] = set()
    for frame in case.frames:
        reads = json.loads(written[f"renders/{name}/reads.{frame:04d}.json"][1])
        assert reads["absent"] == [], f"frame {frame} read files that are not local"
        read.update(reads["read"])
    present = set(json.loads(written[f"renders/{name}/inputs.json"][1]))
    # Everything in the workspace's inputs is something a frame read (the scene included).
    assert present - read == set()
    assert {p for p in read if p.startswith(scheme_root)} <= present
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"]
