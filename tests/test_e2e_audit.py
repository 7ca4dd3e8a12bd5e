"""``jitrender run`` of real public .blend files (the corpus, ../shared/corpus/blend: files
nobody on the team wrote) against fake-gcs-server, rendered by the ``blender`` engine with the
real ``bpy``: what a user meets. Each scene is uploaded with stand-ins for the files it names
(a tiny PNG, a tiny Radiance HDR) and decoys it does not need.

Regressions found by that audit:

- a Blender 2.7x file whose image only its default texture-paint brush uses (glTF-Blender-IO's
  ``04_lenna.blend``: ``04_crate.png`` -> ``//Lenna.png``, used by the brush ``TexDraw``'s
  texture) failed every frame with 65 ("does not exist") although no render reads that image
  and the resolver rightly lists nothing; with the file in the bucket, the Blender plugin
  fetched it anyway (bytes fetched above bytes needed);
- a ``per: chunk`` render marked its frames done only when the whole chunk's process ended:
  ``frame_end`` events, ``status`` and the done markers lagged the uploads by the chunk's
  length, and a run SIGKILLed mid-chunk had marked none of the frames it had uploaded.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, cli, gcs_client, put_object

pytest.importorskip("bpy")
pytestmark = [pytest.mark.blender, pytest.mark.slow]

CORPUS = ROOT / ".." / "shared" / "corpus" / "blend" / "blends"
SCENES = "gltf/tests/scenes"


def corpus_blend(path: str) -> bytes:
    """The corpus file ``path`` (its bucket path), unpacked; skips without the corpus."""
    packed = CORPUS / f"{path}.gz"
    if not packed.is_file():
        pytest.skip(f"no Blender corpus at {CORPUS.resolve()} (../shared/corpus is absent)")
    return gzip.decompress(packed.read_bytes())


def png(width: int = 16, height: int = 16, rgb: tuple[int, int, int] = (200, 100, 50)) -> bytes:
    raw = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def hdr(width: int = 8, height: int = 4) -> bytes:
    head = b"#?RADIANCE\nFORMAT=32-bit_rle_rgbe\n\n-Y %d +X %d\n" % (height, width)
    return head + bytes([128, 128, 128, 129]) * (width * height)


def write_job(
    folder: Path, bucket: str, name: str, scene: str, frames: str, extra: str = ""
) -> Path:
    job = folder / f"{name}.yaml"
    job.write_text(
        f"name: {name}\n"
        f"scene: {bucket}/{scene}\n"
        f"frames: {frames}\n"
        "stages:\n"
        "  - name: render\n"
        "    per: chunk\n"
        "    engine: blender\n"
        f"    args: {{output: '{name}.####.png', format: PNG, engine: CYCLES, samples: 1,\n"
        f"           resolution: [32, 18], threads: 1{extra}}}\n"
        "outputs:\n"
        f"  to: {bucket}/out/{name}/\n"
        f"  files: ['{name}.####.png']\n"
    )
    return job


def env_for(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "JITRENDER_CACHE_DIR": str(tmp_path / "cache")}


def run_job(job: Path, tmp_path: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    report = tmp_path / f"{job.stem}.{time.monotonic_ns()}.json"
    done = cli("run", str(job), "--progress", "plain", "--report", str(report), *args,
               cwd=tmp_path, env=env_for(tmp_path), timeout=60)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(report.read_text()), done.stderr


def outputs_in_bucket(bucket: str, name: str) -> list[str]:
    """The job's outputs in the bucket (its _jitrender/ bookkeeping left out)."""
    blobs = gcs_client().list_blobs(bucket[len("gs://") :], prefix=f"out/{name}/")  # type: ignore[attr-defined]
    return sorted(b.name for b in blobs if "/_jitrender/" not in b.name)


def expected(name: str, frames: range) -> list[str]:
    return [f"out/{name}/{name}.{f:04d}.png" for f in frames]


def test_real_scene_with_linked_libraries_renders_once_and_resumes(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """21_scene.blend links C.blend, which links B.blend, which links A.blend (a linked
    camera: `camera:` names it, the scene sets none). Decoys beside them stay in the bucket."""
    for name in ("21_scene", "A", "B", "C", "04_lenna"):
        put_object(f"{gcs_bucket}/{SCENES}/{name}.blend", corpus_blend(f"{SCENES}/{name}.blend"))
    job = write_job(tmp_path, gcs_bucket, "s21", f"{SCENES}/21_scene.blend", "1-2",
                    ", camera: Camera")  # fmt: skip
    code, report, stderr = run_job(job, tmp_path)
    assert code == 0, stderr
    assert report["frames"]["done"] == [1, 2]
    assert report["deps"]["count"] == 4  # the scene and its three libraries, no decoy
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"] > 0
    assert outputs_in_bucket(gcs_bucket, "s21") == expected("s21", range(1, 3))

    code, report, stderr = run_job(job, tmp_path)
    assert code == 0, stderr
    assert report["frames"]["skipped_already_done"] == [1, 2]
    assert report["cache"]["bytes_fetched"] == 0
    status = cli("status", str(job), "--json", cwd=tmp_path, env=env_for(tmp_path))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["complete"] is True
    assert outputs_in_bucket(gcs_bucket, "s21") == expected("s21", range(1, 3))


def test_missing_texture_is_65_with_one_line_before_rendering(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """The UDIM tiles v01_UDIM_BAT_debugging.blend reads are not in the bucket."""
    scene = "bam/blender-asset-tracer/tests/blendfiles/udim/v01_UDIM_BAT_debugging.blend"
    put_object(f"{gcs_bucket}/{scene}", corpus_blend(scene))
    job = write_job(tmp_path, gcs_bucket, "udim", scene, "1")
    code, report, stderr = run_job(job, tmp_path)
    assert code == 65
    errors = [line for line in stderr.splitlines() if line.startswith("jitrender: error:")]
    assert len(errors) == 1 and "cube_UDIM.color.1001.png" in errors[0], stderr
    assert report["status"] == "failed" and report["timings"]["render_s"] == 0
    assert outputs_in_bucket(gcs_bucket, "udim") == []


@pytest.mark.parametrize("decoy", [False, True], ids=["file-absent", "file-present"])
def test_image_only_a_brush_uses_is_neither_needed_nor_fetched(
    gcs_bucket: str, tmp_path: Path, decoy: bool
) -> None:
    """04_lenna.blend (saved by Blender 2.78): image '04_crate.png' (//Lenna.png) is used only
    by the texture of the default texture-paint brush; the crate's material reads no image.
    Before: exit 65 'does not exist' without the file; with it, the plugin fetched it."""
    scene = f"{SCENES}/04_lenna.blend"
    put_object(f"{gcs_bucket}/{scene}", corpus_blend(scene))
    if decoy:
        put_object(f"{gcs_bucket}/{SCENES}/Lenna.png", png(64, 64))
    job = write_job(tmp_path, gcs_bucket, "lenna", scene, "1-2")
    code, report, stderr = run_job(job, tmp_path)
    assert code == 0, stderr
    assert report["frames"]["done"] == [1, 2]
    assert report["deps"]["count"] == 1  # the scene alone
    assert report["cache"]["bytes_fetched"] == report["deps"]["bytes_needed"]
    assert outputs_in_bucket(gcs_bucket, "lenna") == expected("lenna", range(1, 3))


def upload_sphere(bucket: str) -> str:
    """01_textured_sphere.blend, its three textures, its world's HDR and its linked library
    (pbr_node/glTF2.blend), with decoy textures beside them."""
    scene = f"{SCENES}/01_textured_sphere.blend"
    put_object(f"{bucket}/{scene}", corpus_blend(scene))
    library = "gltf/tests/pbr_node/glTF2.blend"
    put_object(f"{bucket}/{library}", corpus_blend(library))
    put_object(f"{bucket}/gltf/tests/environments/field.hdr", hdr())
    for kind in ("BaseColor", "Normal", "OcclusionRoughnessMetallic", "Decoy"):
        put_object(f"{bucket}/{SCENES}/01_Textured_Sphere_{kind}.png", png())
    return scene


def test_chunk_frames_are_done_as_they_land_and_survive_sigkill(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """One Blender renders frames 1-8 as a chunk: each frame is marked (frame_end, its done
    marker) as soon as its file is uploaded, not when the chunk ends; a run SIGKILLed after
    frame 2 is done leaves frames 1 and 2 done for the retry, which renders only the rest."""
    scene = upload_sphere(gcs_bucket)
    job = write_job(tmp_path, gcs_bucket, "sphere", scene, "1-8")
    job.write_text(job.read_text().replace("samples: 1,", "samples: 8,"))
    log = tmp_path / "killed.jsonl"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jitrender.cli", "run", str(job), "--progress", "json"],
            cwd=tmp_path, env=env_for(tmp_path), stdout=subprocess.DEVNULL, stderr=stderr,
        )  # fmt: skip
        deadline = time.monotonic() + 40
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline and proc.poll() is None:
            events = [json.loads(line) for line in log.read_text().splitlines() if line]
            if any(e["kind"] == "frame_end" and e.get("frame") == 2 for e in events):
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    ends = [e for e in events if e["kind"] == "frame_end"]
    assert [e["frame"] for e in ends][:2] == [1, 2], events
    assert not any(e["kind"] == "stage_end" for e in events)  # still rendering frame 3 or so
    done_markers = [
        b.name
        for b in gcs_client().list_blobs(
            gcs_bucket[len("gs://") :], prefix="out/sphere/_jitrender/"
        )  # type: ignore[attr-defined]
        if b.name.rsplit("/", 1)[-1].startswith("frame.")
    ]
    assert {"frame.1.json", "frame.2.json"} <= {n.rsplit("/", 1)[-1] for n in done_markers}

    code, report, stderr = run_job(job, tmp_path)
    assert code == 0, stderr
    assert {1, 2} <= set(report["frames"]["skipped_already_done"])
    assert sorted(report["frames"]["done"] + report["frames"]["skipped_already_done"]) == list(
        range(1, 9)
    )
    assert outputs_in_bucket(gcs_bucket, "sphere") == expected("sphere", range(1, 9))
