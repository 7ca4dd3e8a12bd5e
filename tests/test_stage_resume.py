"""Resume at stage granularity, one attempt per frame: a retried post stage does not render
again, a rerun after SIGKILL mid-chunk renders only the frames not in the bucket, and every
post output describes the render the bucket holds (fake-gcs-server, real processes)."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path
from typing import Any

from tests.conftest import gcs_client
from tests.renderjobs import (
    RenderJob,
    bucket_objects,
    jitrender_env,
    make_job,
    run,
    start_run,
    wait_for,
)

# Renders frames (one process for the chunk, or one per frame), each to a temp name renamed
# into place; the bytes are random (renders are not bit-exact). Sleeps SLOW_FRAME's seconds
# before that frame.
RENDER = r"""
import os, pathlib, sys, time
out, phase = pathlib.Path(sys.argv[2]), pathlib.Path(os.environ["PHASE_DIR"])
slow = os.environ.get("SLOW_FRAME", "")
for f in [int(x) for x in sys.argv[1].split(",")]:
    (phase / f"render.{f}.{os.getpid()}").write_text("")
    if str(f) == slow:
        time.sleep(60)
    tmp = out / f".frame.{f:04d}.png.tmp"
    tmp.write_bytes(os.urandom(64))
    tmp.rename(out / f"frame.{f:04d}.png")
    time.sleep(0.2)
"""

# Describes the frame's render; fails the first time for the frames in FLAKY_POST.
POST = r"""
import os, pathlib, sys, zlib
f, out, phase = int(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(os.environ["PHASE_DIR"])
attempt = len(list(phase.glob(f"post.{f}.*")))
(phase / f"post.{f}.{os.getpid()}").write_text("")
if str(f) in os.environ.get("FLAKY_POST", "").split(",") and attempt == 0:
    sys.exit("post: flaked")
crc = zlib.crc32((out / f"frame.{f:04d}.png").read_bytes())
(out / f"post.{f:04d}.json").write_text('{"render_crc32": %d}' % crc)
"""


def _job(root: Path, bucket: str, frames: str, render_per: str) -> RenderJob:
    arg = "{frame_list}" if render_per == "chunk" else "{frame}"
    stages = [
        {"name": "render", "per": render_per,
         "command": [sys.executable, "-c", RENDER.replace("{", "{{").replace("}", "}}"), arg,
                     "{outputs}"]},
        {"name": "post",
         "command": [sys.executable, "-c", POST.replace("{", "{{").replace("}", "}}"),
                     "{frame}", "{outputs}"]},
    ]  # fmt: skip
    outputs = {"to": f"{bucket}/renders", "files": ["frame.####.png", "post.####.json"]}
    return make_job(
        root, bucket, frames, retries_frame=1, extra={"stages": stages, "outputs": outputs}
    )


def _phases(job: RenderJob, kind: str) -> list[int]:
    return sorted(int(p.name.split(".")[1]) for p in job.phase_dir.glob(f"{kind}.*"))


def _describes_stored_render(bucket: str, frames: list[int]) -> None:
    objects = bucket_objects(bucket, "renders/")
    for frame in frames:
        render = objects[f"renders/frame.{frame:04d}.png"][1]
        post = json.loads(objects[f"renders/post.{frame:04d}.json"][1])
        assert post["render_crc32"] == zlib.crc32(render), frame


def test_retried_post_stage_does_not_render_again(gcs_bucket: str, tmp_path: Path) -> None:
    job = _job(tmp_path / "job", gcs_bucket, "1-3", "frame")
    env = jitrender_env(job, FLAKY_POST="2")
    code, out, report = run(job, env=env)
    assert code == 0, out
    assert _phases(job, "render") == [1, 2, 3]  # one render per frame
    assert _phases(job, "post") == [1, 2, 2, 3]  # frame 2's post ran twice
    assert report["frames"]["done"] == [1, 2, 3]
    _describes_stored_render(gcs_bucket, [1, 2, 3])


def test_sigkill_mid_chunk_then_rerun_renders_only_the_rest(
    gcs_bucket: str, tmp_path: Path
) -> None:
    job = _job(tmp_path / "job", gcs_bucket, "1-10", "chunk")
    proc = start_run(job, env=jitrender_env(job, SLOW_FRAME="6"))
    marker = "/stage.render.4.json"  # frame 5 landed, so the renderer was done with frame 4
    wait_for(
        lambda: any(n.endswith(marker) for n in bucket_objects(gcs_bucket, "renders/")),
        timeout=60, step=0.2,
    )  # fmt: skip
    proc.kill()
    proc.wait(timeout=10)
    before = bucket_objects(gcs_bucket, "renders/")
    assert "renders/frame.0005.png" in before and "renders/frame.0006.png" not in before
    job.clear_phases()
    code, out, report = run(job, report="rerun.json")
    assert code == 0, out
    assert _phases(job, "render") == [5, 6, 7, 8, 9, 10]  # 1-4 came back from the bucket
    assert _phases(job, "post") == list(range(1, 11))
    after = bucket_objects(gcs_bucket, "renders/")
    for frame in range(1, 6):  # stored renders were never replaced
        name = f"renders/frame.{frame:04d}.png"
        assert after[name] == before[name]
    _describes_stored_render(gcs_bucket, list(range(1, 11)))
    assert report["frames"]["done"] == list(range(1, 11))


# Renders one frame of 8 MiB random bytes and exits at once: its upload is still running
# when the next stage starts.
BIG_RENDER = r"""
import os, pathlib, sys
f, out, phase = int(sys.argv[1]), pathlib.Path(sys.argv[2]), pathlib.Path(os.environ["PHASE_DIR"])
(phase / f"render.{f}.{os.getpid()}").write_text("")
tmp = out / f".frame.{f:04d}.png.tmp"
tmp.write_bytes(os.urandom(8 << 20))
tmp.rename(out / f"frame.{f:04d}.png")
"""

# Copies the frame's render at once (a shell starts in milliseconds): a stage that reads the
# render before the uploader has settled it shows in its output.
COPY = (
    'f=$(printf %04d "$1"); cat "$2/frame.$f.png" > "$2/.copy.tmp"'
    ' && mv "$2/.copy.tmp" "$2/copy.$f.bin"'
)


def test_rerun_after_kill_before_stage_marker_derives_from_the_stored_render(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A kill after a render's upload but before its stage marker: the rerun renders again,
    the bucket keeps the first render, and the next stage copies the stored one."""
    stages = [
        {"name": "render",
         "command": [sys.executable, "-c", BIG_RENDER.replace("{", "{{").replace("}", "}}"),
                     "{frame}", "{outputs}"]},
        {"name": "copy", "command": ["sh", "-c", COPY, "sh", "{frame}", "{outputs}"]},
    ]  # fmt: skip
    outputs = {"to": f"{gcs_bucket}/renders", "files": ["frame.####.png", "copy.####.bin"]}
    job = make_job(
        tmp_path / "job", gcs_bucket, "1-4", extra={"stages": stages, "outputs": outputs}
    )
    code, out, _ = run(job)
    assert code == 0, out
    # What a kill between the render's upload and its stage marker leaves: the render alone.
    name = gcs_bucket[len("gs://") :]
    client: Any = gcs_client()
    for blob in list(client.list_blobs(name, prefix="renders/")):
        base = blob.name.rpartition("/")[2]
        marker = base.startswith(("frame.", "stage.")) and base.endswith(".json")
        if marker or base.startswith("copy."):
            blob.delete()
    before = bucket_objects(gcs_bucket, "renders/")
    assert sorted(n for n in before if "/_jitrender/" not in n) == [
        f"renders/frame.{f:04d}.png" for f in range(1, 5)
    ]
    job.clear_phases()
    code, out, report = run(job, report="rerun.json")
    assert code == 0, out
    assert _phases(job, "render") == [1, 2, 3, 4]  # no stage marker: rendered again
    after = bucket_objects(gcs_bucket, "renders/")
    for frame in range(1, 5):
        render = f"renders/frame.{frame:04d}.png"
        assert after[render] == before[render]  # the first render stays
        assert after[f"renders/copy.{frame:04d}.bin"][1] == before[render][1], frame
    assert report["frames"]["done"] == [1, 2, 3, 4]
