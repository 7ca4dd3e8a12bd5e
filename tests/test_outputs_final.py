"""Only final outputs reach the bucket, and every frame must produce one: through
``jitrender run`` against fake-gcs-server, with real stage processes."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.renderjobs import RenderJob, bucket_objects, make_job, run

# A checkpointing renderer (RenderMan, Karma, V-Ray style): rewrites each frame's image in
# place three times as it refines, closing it after each pass, in one process for the chunk.
CHECKPOINTS = r"""
import pathlib, sys, time
out = pathlib.Path(sys.argv[2])
for f in sys.argv[1].split(","):
    for npass in (1, 2, 3):
        (out / f"beauty.{int(f):04d}.exr").write_bytes(f"frame {f} pass {npass} of 3".encode())
        time.sleep(0.4)  # longer than any 'closed a while ago' heuristic
"""

# A stage that appends a line to its log and closes it after each line.
APPEND_LOG = r"""
import pathlib, sys, time
log = pathlib.Path(sys.argv[2]) / f"log.{int(sys.argv[1]):04d}.txt"
for line in range(4):
    with open(log, "a") as handle:
        handle.write(f"line {line}\n")
    time.sleep(0.4)
"""

# Writes every pass in place, then crashes: none of it is final.
CRASH_IN_PLACE = r"""
import pathlib, sys, time
out = pathlib.Path(sys.argv[2])
for f in sys.argv[1].split(","):
    (out / f"beauty.{int(f):04d}.exr").write_bytes(b"pass 1 of 3")
    time.sleep(0.4)
sys.exit("renderer crashed")
"""


def _stage(script: str, per: str = "chunk") -> dict[str, object]:
    frames = "{frame_list}" if per == "chunk" else "{frame}"
    return {
        "name": "render",
        "per": per,
        "command": [
            sys.executable,
            "-c",
            script.replace("{", "{{").replace("}", "}}"),
            frames,
            "{outputs}",
        ],
    }


def _job(tmp: Path, bucket: str, frames: str, stage: dict[str, object], files: str) -> RenderJob:
    """The one-stage job whose outputs matching ``files`` go to ``<bucket>/renders``."""
    outputs = {"to": f"{bucket}/renders", "files": [files]}
    return make_job(tmp / "job", bucket, frames, extra={"stages": [stage], "outputs": outputs})


def test_checkpointing_renderer_lands_only_its_final_pass(gcs_bucket: str, tmp_path: Path) -> None:
    job = _job(tmp_path, gcs_bucket, "1-2", _stage(CHECKPOINTS), "beauty.####.exr")
    code, out, report = run(job)
    assert code == 0, out
    objects = bucket_objects(gcs_bucket, "renders/")
    for frame in (1, 2):
        assert (
            objects[f"renders/beauty.{frame:04d}.exr"][1] == f"frame {frame} pass 3 of 3".encode()
        )
    assert report["frames"]["done"] == [1, 2]


def test_log_closed_after_every_line_lands_whole(gcs_bucket: str, tmp_path: Path) -> None:
    job = _job(tmp_path, gcs_bucket, "1", _stage(APPEND_LOG, per="frame"), "log.####.txt")
    code, out, _ = run(job)
    assert code == 0, out
    log = bucket_objects(gcs_bucket, "renders/")["renders/log.0001.txt"][1]
    assert log == b"".join(f"line {n}\n".encode() for n in range(4))


def test_crashed_renderer_in_place_files_never_upload(gcs_bucket: str, tmp_path: Path) -> None:
    job = _job(tmp_path, gcs_bucket, "1-2", _stage(CRASH_IN_PLACE), "beauty.####.exr")
    code, out, report = run(job)
    assert code == 65, out
    assert report["frames"]["failed"] == [1, 2]
    assert bucket_objects(gcs_bucket, "renders/") == {}


def test_stage_writing_nothing_fails_65_and_writes_no_marker(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """The default ``outputs.files`` (``**/*``) and a stage that writes nothing: each frame
    fails, naming the frame and the patterns; no marker lets a rerun skip it."""
    stage = {"name": "render", "command": [sys.executable, "-c", "pass"]}
    job = make_job(
        tmp_path / "job", gcs_bucket, "1-3",
        extra={"stages": [stage], "outputs": {"to": f"{gcs_bucket}/renders"}},
    )  # fmt: skip
    code, out, report = run(job)
    assert code == 65, out
    assert "frame 1" in out and "wrote no output matching outputs.files (**/*)" in out
    assert report["frames"]["failed"] == [1, 2, 3]
    assert bucket_objects(gcs_bucket, "renders/") == {}


def test_checkpoints_go_to_their_own_prefix_and_only_the_final_pass_to_the_outputs(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """``outputs.checkpoints`` (opt-in): each pass closed while the renderer runs is copied
    there (the latest replacing the earlier); the output URL still gets the final pass only."""
    outputs = {
        "to": f"{gcs_bucket}/renders",
        "files": ["beauty.####.exr"],
        "checkpoints": f"{gcs_bucket}/checkpoints",
    }
    job = make_job(
        tmp_path / "job",
        gcs_bucket,
        "1",
        extra={"stages": [_stage(CHECKPOINTS)], "outputs": outputs},
    )
    code, out, _ = run(job)
    assert code == 0, out
    assert bucket_objects(gcs_bucket, "renders/")["renders/beauty.0001.exr"][1] == (
        b"frame 1 pass 3 of 3"
    )
    checkpoint = bucket_objects(gcs_bucket, "checkpoints/")["checkpoints/beauty.0001.exr"][1]
    assert checkpoint.startswith(b"frame 1 pass ")


# The stage's frame as a shell writes it at 4 digits (jitrender fills {frame}).
FRAME4 = "$(printf %04d {frame})"


def _outputs(bucket: str) -> dict[str, tuple[int, bytes]]:
    """The renders below ``r/`` in the bucket, without jitrender's own markers and logs."""
    return {n: v for n, v in bucket_objects(bucket, "r/").items() if "/_jitrender/" not in n}


def _shell_job(root: Path, bucket: str, script: str, files: list[str]) -> RenderJob:
    import yaml

    job = make_job(root, bucket, "1-2", extra={"outputs": {"to": f"{bucket}/r", "files": files}})
    body = yaml.safe_load(job.job_file.read_text())
    body["stages"] = [{"name": "render", "command": ["sh", "-c", script]}]
    job.job_file.write_text(yaml.safe_dump(body))
    return job


def test_frame_tokens_in_a_folder_and_the_file_name_are_one_frame(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """``f####/r.####.exr`` (a folder per frame, as many renderers write): each frame's file
    is uploaded under its name. Only the file name's token was read as the frame before, so
    the folder's ``####`` never matched and every such job failed, uploading nothing."""
    script = f"d=$JITRENDER_OUTPUTS/f{FRAME4}; mkdir -p $d; echo {{frame}} > $d/r.{FRAME4}.exr"
    job = _shell_job(tmp_path / "job", gcs_bucket, script, ["f####/r.####.exr"])
    code, out, report = run(job)
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    landed = _outputs(gcs_bucket)
    assert landed["r/f0001/r.0001.exr"][1] == b"1\n" and landed["r/f0002/r.0002.exr"][1] == b"2\n"


def test_an_output_padded_otherwise_is_not_taken_for_the_frames_and_the_error_says_so(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A renderer writing ``r.1.exr`` for ``r.####.exr``: the frame fails (as before) and the
    error names what it wrote; that file is not uploaded (it was, as frame 1's output, though
    the frame failed)."""
    script = "echo x > $JITRENDER_OUTPUTS/r.{frame}.exr"
    job = _shell_job(tmp_path / "job", gcs_bucket, script, ["r.####.exr"])
    code, out, _ = run(job)
    assert code == 65, out
    assert "did not write outputs/r.0001.exr (it wrote r.1.exr: the frame number padded" in out
    assert list(_outputs(gcs_bucket)) == []


def test_a_frame_token_pattern_with_a_glob_asks_each_frame_for_at_least_one_file(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """``aov_*.####.exr`` (a file per AOV, names the renderer picks): each frame's files are
    uploaded and the frame is done; a rerun skips it. Its expected file was the literal
    ``aov_*.0001.exr`` before, so such jobs always failed. A frame that writes none of them
    fails naming the pattern."""
    script = f"for a in diffuse spec; do echo $a > $JITRENDER_OUTPUTS/aov_$a.{FRAME4}.exr; done"
    job = _shell_job(tmp_path / "job", gcs_bucket, script, ["aov_*.####.exr"])
    code, out, report = run(job)
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    assert set(_outputs(gcs_bucket)) == {
        f"r/aov_{a}.000{f}.exr" for a in ("diffuse", "spec") for f in (1, 2)
    }
    code, out, report = run(job, report="again.json")
    assert code == 0 and report["frames"]["skipped_already_done"] == [1, 2], out
    script = "echo x > $JITRENDER_OUTPUTS/other.txt"
    job = _shell_job(tmp_path / "job2", gcs_bucket, script, ["aov_*.####.exr", "other.txt"])
    code, out, _ = run(job)
    assert code == 65 and "wrote no output matching aov_*.####.exr for frame 1" in out, out


def test_a_pattern_written_with_dot_slash_is_the_name_it_means(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """``./r.####.exr`` passed validation but matched no file (compared as written), so no
    output was ever uploaded and every frame failed."""
    script = f"echo {{frame}} > $JITRENDER_OUTPUTS/r.{FRAME4}.exr"
    job = _shell_job(tmp_path / "job", gcs_bucket, script, ["./r.####.exr"])
    code, out, report = run(job)
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    assert bucket_objects(gcs_bucket, "r/")["r/r.0002.exr"][1] == b"2\n"


def test_udim_tiles_in_a_frame_pattern_are_the_tiles_the_frame_wrote(
    gcs_bucket: str, tmp_path: Path
) -> None:
    """A bake writing ``bake.####.<UDIM>.exr``: each frame's tiles are uploaded and the frame
    is done. ``<UDIM>`` was taken literally (expected ``bake.0001.<UDIM>.exr``), so such jobs
    always failed."""
    script = f"for t in 1001 1002; do echo $t > $JITRENDER_OUTPUTS/bake.{FRAME4}.$t.exr; done"
    job = _shell_job(tmp_path / "job", gcs_bucket, script, ["bake.####.<UDIM>.exr"])
    code, out, report = run(job)
    assert code == 0 and report["frames"]["done"] == [1, 2], out
    assert set(_outputs(gcs_bucket)) == {
        f"r/bake.000{f}.{t}.exr" for f in (1, 2) for t in (1001, 1002)
    }
