"""``jitrender deps`` on the public .blend corpus lists exactly what Blender reads.

32 .blend files nobody on this project wrote (blender-asset-tracer's and glTF-Blender-IO's test
files, saved by Blender 2.78 to 5.1; ``../shared/corpus/blend``) are unpacked into a bucket with
stand-ins for everything they reference (``blend_corpus.py``: textures, UDIM tiles and decoy
tiles, sequence frames beyond the strips, caches per frame). What each case's frames read was
derived once with real Blender 5.0.1 under strace (``blend_corpus_oracle.py``; pinned in
``data/blend_corpus_expected.json``, because running bpy per case here would take a minute), and
each test runs ``jitrender deps SCENE --frames F --json`` in a subprocess on the bucket.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import gcs_client
from tests.resolve import blend_corpus

EXPECTED = json.loads(
    (Path(__file__).with_name("data") / "blend_corpus_expected.json").read_text("utf-8")
)["cases"]
CASES = {case.name: case for case in blend_corpus.CASES}
# Cases also run against fake-gcs-server (every case runs on file://): one of each kind.
GCS_CASES = ("particle", "udim_gltf", "image_sequencer", "doubly_linked", "ocean", "font")


def needed(case: str) -> set[str]:
    """Files Blender read to render the case's frames: those opened while a frame was set and
    rendered, and the libraries opened when the file was.

    Files opened only while the file loaded (Blender evaluates the scene at its saved current
    frame when it opens it: a cache or Alembic file of that frame) are not what the requested
    frames need; they are left out here and counted apart in the closing note."""
    read: dict[str, list[str]] = EXPECTED[case]["read"]
    return {
        rel
        for rel, phases in read.items()
        if rel.endswith(".blend") or any(p.startswith("frame-") for p in phases)
    }


def not_found(case: str) -> set[str]:
    """Files Blender asked for that are not in the bucket and that it cannot render without:
    libraries. (Blender also probes for optional files, such as an ocean cache's foam and
    normal maps that were not baked; those are not dependencies.)"""
    return {rel for rel in EXPECTED[case]["not_found"] if rel.endswith(".blend")}


@pytest.fixture(scope="module")
def bucket_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not blend_corpus.CORPUS.is_dir():
        pytest.skip(f"the public corpus is not here: {blend_corpus.CORPUS}")
    root = tmp_path_factory.mktemp("blend-corpus") / "bucket"
    blend_corpus.build_bucket(root)
    return root


@pytest.fixture(scope="module")
def gcs_corpus(gcs_server: str, bucket_root: Path) -> str:
    """The same bucket on fake-gcs-server, for the cases in ``GCS_CASES``."""
    name = f"blend-corpus-{uuid.uuid4().hex[:8]}"
    bucket: Any = gcs_client().create_bucket(name)  # type: ignore[attr-defined]
    for path in sorted(bucket_root.rglob("*")):
        if path.is_file():
            bucket.blob(path.relative_to(bucket_root).as_posix()).upload_from_filename(str(path))
    return f"gs://{name}"


def deps(bucket_url: str, scene: str, frames: str, cache: Path) -> dict[str, Any]:
    """``jitrender deps`` of one scene (bucket-relative), the way a user runs it; the JSON."""
    done = subprocess.run(
        [
            sys.executable, "-m", "jitrender.cli", "deps",
            f"{bucket_url}/{scene}", "--frames", frames, "--json",
            "--path-map", f"{blend_corpus.AUTHOR_ROOT}={bucket_url}",
            "--path-map", f"{blend_corpus.FONT_ROOT}={bucket_url}/{blend_corpus.FONT_FOLDER}",
            "--cache-dir", str(cache),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def relative(document: dict[str, Any], bucket_url: str) -> tuple[set[str], set[str]]:
    """The bucket-relative paths of the listed files that exist, and of the missing ones."""
    prefix = bucket_url + "/"
    found, missing = set(), set()
    for dep in document["deps"]:
        assert dep["url"].startswith(prefix), dep
        (found if dep["exists"] else missing).add(dep["url"][len(prefix) :])
    return found, missing


def check(document: dict[str, Any], bucket_url: str, case: str) -> None:
    found, missing = relative(document, bucket_url)
    assert found == needed(case)
    assert missing == not_found(case)
    assert document["unresolved"] == []


@pytest.mark.parametrize("case", list(CASES))
def test_deps_lists_what_blender_reads_for_the_frames_and_nothing_else(
    case: str, bucket_root: Path, tmp_path: Path
) -> None:
    url = f"file://{bucket_root}"
    check(deps(url, CASES[case].scene, CASES[case].frames, tmp_path / "cache"), url, case)


@pytest.mark.parametrize("case", GCS_CASES)
def test_the_same_on_a_gcs_bucket(case: str, gcs_corpus: str, tmp_path: Path) -> None:
    document = deps(gcs_corpus, CASES[case].scene, CASES[case].frames, tmp_path / "cache")
    check(document, gcs_corpus, case)


def test_every_corpus_file_is_a_case_and_has_an_expectation() -> None:
    if not blend_corpus.CORPUS.is_dir():
        pytest.skip(f"the public corpus is not here: {blend_corpus.CORPUS}")
    scenes = {
        p.relative_to(blend_corpus.CORPUS / "blends").as_posix()[: -len(".gz")]
        for p in (blend_corpus.CORPUS / "blends").rglob("*.blend.gz")
    }
    assert scenes == {case.scene for case in blend_corpus.CASES}
    assert set(EXPECTED) == set(CASES)


def small_bucket(root: Path, scene: str, files: dict[str, bytes]) -> str:
    """A bucket with one corpus scene (uncompressed, as Blender also reads it) and ``files``."""
    import zstandard

    packed = blend_corpus.CORPUS / "blends" / f"{scene}.gz"
    if not packed.is_file():
        pytest.skip(f"the public corpus is not here: {blend_corpus.CORPUS}")
    data = gzip.decompress(packed.read_bytes())
    if data.startswith(b"\x28\xb5\x2f\xfd"):  # Blender 5 saves zstd-compressed files
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    for rel, content in {scene: data, **files}.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(content)
    return f"file://{root}"


def test_a_udim_tile_in_the_image_list_but_not_in_storage_is_missing_and_decoys_are_not_listed(
    tmp_path: Path,
) -> None:
    scene = f"{blend_corpus.GLTF}/scenes/33_udim.blend"
    # the image's tiles are 1001, 1002, 1011 and 1012; 1012 is absent, 1003/1013 are decoys
    tiles = {f"{blend_corpus.GLTF}/scenes/test.{t}.png": b"tile" for t in (1001, 1002, 1011)}
    decoys = {f"{blend_corpus.GLTF}/scenes/test.{t}.png": b"decoy" for t in (1003, 1013)}
    url = small_bucket(tmp_path / "bucket", scene, {**tiles, **decoys})
    document = deps(url, scene, "1", tmp_path / "cache")
    found, missing = relative(document, url)
    mine = {rel for rel in found | missing if "/test." in rel}
    assert mine == {f"{blend_corpus.GLTF}/scenes/test.{t}.png" for t in (1001, 1002, 1011, 1012)}
    assert f"{blend_corpus.GLTF}/scenes/test.1012.png" in missing
    assert {m["url"] for m in document["missing"]} >= {
        f"{url}/{blend_corpus.GLTF}/scenes/test.1012.png"
    }
    assert document["unresolved"] == []


def test_a_dangling_bakes_pointer_is_one_unresolved_entry_not_a_failed_file(
    tmp_path: Path,
) -> None:
    """38_pointcloud_GN.blend (Blender 5.1) leaves a Geometry Nodes modifier's ``bakes`` pointer
    dangling with ``bakes_num`` 0, which Blender ignores (the corpus case above: no entry at
    all). With ``bakes_num`` patched to 1 the pointer is read and dangles: that modifier is
    reported unresolved and the command still succeeds."""
    from blender_asset_tracer import blendfile
    from blender_asset_tracer.blendfile import iterators

    scene = f"{blend_corpus.GLTF}/scenes/38_pointcloud_GN.blend"
    url = small_bucket(tmp_path / "bucket", scene, {})
    path = tmp_path / "bucket" / scene
    bfile = blendfile.BlendFile(path)
    try:
        cube = next(b for b in bfile.find_blocks_from_code(b"OB") if b.id_name == b"OBCube")
        modifier = next(iter(iterators.modifiers(cube)))
        assert modifier[b"bakes_num"] == 0
        offset = modifier.abs_offset((b"bakes_num",))[0]
    finally:
        bfile.close()
    data = bytearray(path.read_bytes())
    data[offset : offset + 4] = (1).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    document = deps(url, scene, "1", tmp_path / "cache")
    assert [u["source"] for u in document["unresolved"]] == ["OB:Cube.modifiers[0]"]
    assert "does not read" in document["unresolved"][0]["why"]
