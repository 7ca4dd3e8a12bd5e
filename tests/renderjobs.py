"""Helpers for tests that run ``jitrender run`` as a real process against fake-gcs-server:
a job with per-frame and shared dependencies, a fake renderer whose phases the test can
watch and steer through environment variables, and bucket inspection."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import cli, gcs_client, put_object

# The fake renderer: reads its inputs, says where it is (files in $PHASE_DIR), may sleep,
# fail or write a half file, and writes its output to a temp name then renames (the safe way).
RENDERER = r"""
import os, pathlib, signal, sys, time, zlib
frame = int(sys.argv[1]); inputs = pathlib.Path(sys.argv[2]); outputs = pathlib.Path(sys.argv[3])
if os.environ.get("IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
phase = pathlib.Path(os.environ["PHASE_DIR"])
attempt = len(list(phase.glob(f"start.{frame}.*")))
(phase / f"start.{frame}.{os.getpid()}").write_text("")
flaky = {int(f) for f in os.environ.get("FLAKY_FRAMES", "").split(",") if f}
if frame in flaky and attempt == 0:
    print(f"renderer: frame {frame} flaked: driver hiccup", flush=True)
    sys.exit(4)
wanted = ("lut.bin", f"tex.{frame:04d}.bin")
data = b"".join(p.read_bytes() for p in sorted(inputs.rglob("*")) if p.name in wanted)
if str(frame) in os.environ.get("CRASH_FRAMES", "").split(","):
    os.kill(os.getpid(), signal.SIGKILL)  # as the OOM killer does
if str(frame) in os.environ.get("GPU_ERROR_FRAMES", "").split(","):
    print("renderer: CUDA error: an illegal memory access was encountered", flush=True)
    sys.exit(1)
fail = {int(f) for f in os.environ.get("FAIL_FRAMES", "").split(",") if f}
if frame in fail:
    print(f"renderer: frame {frame} exploded: out of cheese", flush=True)
    sys.exit(3)
sleeps = dict(p.split(":") for p in os.environ.get("SLEEP_FRAMES", "").split(",") if p)
time.sleep(float(sleeps.get(str(frame), os.environ.get("RENDER_SLEEP", "0"))))
body = f"frame {frame} crc {zlib.crc32(data)} len {len(data)}\n".encode() * 64
body = os.environ.get("OUTPUT_TAG", "").encode() + body
out = outputs / f"frame.{frame:04d}.txt"
tmp = outputs / f".frame.{frame:04d}.txt.tmp"
tmp.write_bytes(body)
os.replace(tmp, out)
(phase / f"done.{frame}.{os.getpid()}").write_text("")
"""


# A module's line of ``-X importtime`` (PYTHONPROFILEIMPORTTIME) on a process's stderr. Not
# anchored to a line's start: a line another thread was writing may hold one (seen once in a
# loaded whole-suite run, where typer's line was not found).
IMPORTED = re.compile(r"import time:\s+\d+ \|\s+\d+ \|[ ]*([\w.]+)")


def imported_modules(output: str) -> set[str]:
    """The modules a ``jitrender`` process run with ``PYTHONPROFILEIMPORTTIME=1`` imported."""
    names = set(IMPORTED.findall(output))
    assert "jitrender.errors" in names, output[-2000:]  # the variable reached the process
    return names


def expected_output(frame: int, deps: bytes) -> bytes:
    import zlib

    return f"frame {frame} crc {zlib.crc32(deps)} len {len(deps)}\n".encode() * 64


@dataclass
class RenderJob:
    """A job file in ``tmp`` whose frames each need one texture and a shared LUT."""

    root: Path
    bucket: str
    frames: list[int]
    job_file: Path
    phase_dir: Path
    cache_dir: Path
    texture_size: int

    def frame_inputs(self, frame: int) -> bytes:
        """The bytes the renderer reads for ``frame`` (its inputs, sorted by path)."""
        return shared_lut(self.texture_size) + texture(frame, self.texture_size)

    @property
    def outputs_url(self) -> str:
        return f"{self.bucket}/renders"

    def output_url(self, frame: int) -> str:
        return f"{self.outputs_url}/frame.{frame:04d}.txt"

    def phases(self, kind: str) -> list[int]:
        """Frames whose renderer reached ``kind`` (``start`` or ``done``), once per process."""
        return sorted(int(p.name.split(".")[1]) for p in self.phase_dir.glob(f"{kind}.*"))

    def clear_phases(self) -> None:
        for path in self.phase_dir.iterdir():
            path.unlink()


def texture(frame: int, size: int) -> bytes:
    return (f"tex{frame:04d}".encode() * (size // 7 + 1))[:size]


def shared_lut(size: int) -> bytes:
    return (b"lut-" * (size // 4 + 1))[:size]


def make_job(
    root: Path,
    bucket: str,
    frames: str = "1-6",
    *,
    texture_size: int = 20_000,
    name: str = "shot",
    retries_frame: int = 0,
    storage_attempts: int = 8,
    extra: Mapping[str, Any] | None = None,
    upload: bool = True,
) -> RenderJob:
    """Write the renderer, the job file and (unless ``upload`` is false) its dependencies."""
    from jitrender.sequences import parse_frames

    root.mkdir(parents=True, exist_ok=True)
    frame_list = parse_frames(frames)
    if upload:
        put_object(f"{bucket}/assets/lut.bin", shared_lut(texture_size))
        for frame in frame_list:
            put_object(f"{bucket}/assets/tex.{frame:04d}.bin", texture(frame, texture_size))
    renderer = root / "renderer.py"
    renderer.write_text(RENDERER)
    phase_dir = root / "phases"
    phase_dir.mkdir(exist_ok=True)
    job: dict[str, Any] = {
        "name": name,
        "frames": frames,
        "deps": [f"{bucket}/assets/lut.bin", f"{bucket}/assets/tex.####.bin"],
        "stages": [
            {
                "name": "render",
                "command": [sys.executable, str(renderer), "{frame}", "{inputs}", "{outputs}"],
            }
        ],
        "outputs": {"to": f"{bucket}/renders", "files": ["frame.####.txt"]},
        "retries": {"frame": retries_frame, "storage": storage_attempts},
    }
    if extra:
        job.update(extra)
    job_file = root / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    return RenderJob(root, bucket, frame_list, job_file, phase_dir, root / "cache", texture_size)


def jobs_on_one_node(root: Path, bucket: str, frames: Mapping[str, str]) -> list[RenderJob]:
    """One job per ``name: frames`` (below ``root / name``, named ``name``), all sharing one
    node's cache (``root / "node-cache"``), as jobs that land on the same node do."""
    jobs = []
    for name, job_frames in frames.items():
        job = make_job(root / name, bucket, job_frames, name=name)
        job.cache_dir = root / "node-cache"
        jobs.append(job)
    return jobs


def node_health(job: RenderJob, *args: str) -> tuple[int, dict[str, Any]]:
    """``jitrender health --json ARGS`` on ``job``'s node: (exit code, the state it prints)."""
    out = job_cli(job, "health", "--json", *args)
    return out.returncode, json.loads(out.stdout)


def jitrender_env(job: RenderJob, **overrides: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PHASE_DIR": str(job.phase_dir),
            "JITRENDER_CACHE_DIR": str(job.cache_dir),
            "JITRENDER_PREEMPTION_WATCH": "off",  # no metadata-server lookups from tests
            # No task heartbeats (tests/test_status.py turns them on): these tests count every
            # object below _jitrender/ as a done marker.
            "JITRENDER_HEARTBEAT_INTERVAL": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    for key in ("BATCH_TASK_INDEX", "BATCH_TASK_COUNT", "GCE_METADATA_HOST"):
        env.pop(key, None)
    env.update(overrides)
    return env


def job_cli(
    job: RenderJob, *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``jitrender ARGS`` (:func:`tests.conftest.cli`) in ``job``'s environment."""
    return cli(*args, env=jitrender_env(job, **env), timeout=timeout)


def start_run(
    job: RenderJob,
    *args: str,
    env: Mapping[str, str] | None = None,
    report: str = "report.json",
    pass_fds: tuple[int, ...] = (),
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "jitrender.cli",
        "run",
        str(job.job_file),
        "--progress",
        "plain",
        "--report",
        str(job.root / report),
        *args,
    ]
    return subprocess.Popen(
        argv,
        env=dict(env if env is not None else jitrender_env(job)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        pass_fds=pass_fds,
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def run(
    job: RenderJob, *args: str, env: Mapping[str, str] | None = None, report: str = "report.json"
) -> tuple[int, str, dict[str, Any]]:
    code, out = finish(start_run(job, *args, env=env, report=report))
    report_path = job.root / report
    data = json.loads(report_path.read_text()) if report_path.exists() else {}
    return code, out, data


def rendered(root: Path, bucket: str, frames: str = "1-6", **kwargs: Any) -> RenderJob:
    """:func:`make_job`, run once to success (the start of every resume and rerun test)."""
    job = make_job(root, bucket, frames, **kwargs)
    code, out, _ = run(job)
    assert code == 0, out
    return job


def wait_for(what: Callable[[], bool], timeout: float = 60, step: float = 0.02) -> None:
    """Poll ``what`` until true; AssertionError after ``timeout`` s (generous: a loaded
    machine runs several test workers; a met condition returns at once)."""
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a condition")
        time.sleep(step)


def bucket_objects(
    bucket: str, prefix: str = "", *, logs: bool = False
) -> dict[str, tuple[int, bytes]]:
    """``name -> (generation, bytes)`` of every object below ``prefix``; the runs' own logs
    (``_jitrender/<hash>/logs/``) only with ``logs``."""
    name = bucket[len("gs://") :]
    client: Any = gcs_client()
    found = {}
    for blob in client.list_blobs(name, prefix=prefix):
        if not logs and "/_jitrender/" in f"/{blob.name}" and "/logs/" in blob.name:
            continue
        found[blob.name] = (int(blob.generation), blob.download_as_bytes())
    return found


def cache_verify(job: RenderJob) -> dict[str, int]:
    out = cli("cache", "verify", "--json", env=jitrender_env(job))
    assert out.returncode == 0, out.stderr
    result: dict[str, int] = json.loads(out.stdout)
    return result


def assert_exactly_once(job: RenderJob, before: dict[str, tuple[int, bytes]]) -> None:
    """Every frame has one whole output and one marker, nothing else is in the outputs
    prefix, and every object that existed ``before`` the rerun still has its generation."""
    after = bucket_objects(job.bucket, "renders/")
    outputs = {f"renders/frame.{f:04d}.txt" for f in job.frames}
    markers = {n for n in after if n.startswith("renders/_jitrender/")}
    assert set(after) == outputs | markers, sorted(after)
    assert sorted(int(n.rsplit(".", 2)[1]) for n in markers) == job.frames
    for frame in job.frames:
        data = after[f"renders/frame.{frame:04d}.txt"][1]
        assert data == expected_output(frame, job.frame_inputs(frame))
    for name, (generation, _data) in before.items():
        assert after[name][0] == generation, f"{name} was overwritten"


@contextlib.contextmanager
def descriptors_taken(through: int = 1030) -> Iterator[list[int]]:
    """Descriptors 3 (or the lowest free) to ``through`` held open (the descriptor limit raised
    for them), so that the next one opened, here or in a child given them, is past it: where
    select() refuses descriptors past 1,023. Skips where the hard limit is too low."""
    import resource

    import pytest

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < through + 200:
        pytest.skip(f"the descriptor limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, through + 200), hard))
    taken = [os.open(os.devnull, os.O_RDONLY)]
    try:
        while taken[-1] < through:
            taken.append(os.dup(taken[0]))
        yield taken
    finally:
        for fd in taken:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
