"""The lazy FUSE view (``jitrender run --mount``). Runs where /dev/fuse, libfuse and mfusepy
are usable; skipped, saying which is missing, elsewhere."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from jitrender.agent import hooks_dir
from jitrender.job import load_job
from jitrender.mount import Mount, fuse_problem, start_mount
from jitrender.paths import PathMap, rule_from
from jitrender.run import RunOptions, run_job
from tests.hooks.conftest import RunningAgent, show_agent

__all__ = ["show_agent"]  # the fixture, shared with the plugin tests

PROBLEM = fuse_problem()
needs_fuse = pytest.mark.skipif(PROBLEM is not None, reason=f"FUSE not usable: {PROBLEM}")


@pytest.fixture
def mounted(show_agent: RunningAgent, tmp_path: Path) -> Iterator[tuple[Path, RunningAgent]]:
    where = tmp_path / "mnt" / "show"
    path_map = PathMap([rule_from(str(where), f"file://{show_agent.bucket}")])
    mount: Mount = start_mount(where, path_map, show_agent.agent.inputs)
    try:
        yield where, show_agent
    finally:
        mount.stop()
    assert not os.path.ismount(where)


@needs_fuse
def test_the_mount_lists_storage_and_fetches_only_files_that_are_opened(
    mounted: tuple[Path, RunningAgent],
) -> None:
    where, running = mounted
    assert sorted(os.listdir(where)) == ["seq", "tex"]
    assert sorted(os.listdir(where / "seq"))[0] == "plate.0001.exr"
    assert (where / "tex" / "wood.png").stat().st_size == len(b"wood-bytes")
    assert running.fetched == []  # listing and stat fetch nothing
    assert (where / "seq" / "plate.0003.exr").read_bytes() == b"plate 3"
    assert [u.rsplit("/", 1)[1] for u in running.fetched] == ["plate.0003.exr"]
    assert not (where / "tex" / "gone.png").exists()
    with pytest.raises(OSError):
        (where / "tex" / "new.png").write_bytes(b"x")


@needs_fuse
def test_run_with_mount_lets_a_plain_command_read_studio_paths(tmp_path: Path) -> None:
    bucket = tmp_path / "bucket"
    (bucket / "tex").mkdir(parents=True)
    (bucket / "tex" / "note.txt").write_text("read through FUSE")
    where = tmp_path / "mnt" / "show"
    job = {
        "frames": "1",
        "path_map": [{"from": str(where), "to": f"file://{bucket}"}],
        "stages": [
            {
                "name": "copy",
                "command": ["cp", str(where / "tex" / "note.txt"), "{outputs}/note.{frame}.txt"],
            }
        ],
        "outputs": {"to": f"file://{tmp_path / 'out'}", "files": ["note.*.txt"]},
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    options = RunOptions(cache_dir=tmp_path / "cache", mount=where)
    report = run_job(load_job(job_file), options)
    assert report.status == "succeeded", report.error
    assert (tmp_path / "out" / "note.1.txt").read_text() == "read through FUSE"
    assert report.misses == 1
    assert not os.path.ismount(where)


def test_run_without_usable_fuse_says_so_and_still_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jitrender.mount

    monkeypatch.setattr(jitrender.mount, "fuse_problem", lambda: "/dev/fuse does not exist")
    bucket = tmp_path / "bucket"
    (bucket / "tex").mkdir(parents=True)
    (bucket / "tex" / "note.txt").write_text("prefetched")
    job = {
        "frames": "1",
        "path_map": [{"from": "/mnt/show", "to": f"file://{bucket}"}],
        "deps": ["/mnt/show/tex/note.txt"],
        "stages": [
            {
                "name": "copy",
                "command": [
                    sys.executable,
                    "-c",
                    "import shutil, sys; shutil.copy(sys.argv[1], sys.argv[2])",
                    "{inputs}/file/_" + str(bucket) + "/tex/note.txt",
                    "{outputs}/note.{frame}.txt",
                ],
            }
        ],
        "outputs": {"to": f"file://{tmp_path / 'out'}", "files": ["note.*.txt"]},
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    events: list[tuple[str, dict[str, object]]] = []

    class Recorder:
        def event(self, kind: str, **fields: object) -> None:
            events.append((kind, fields))

        def totals(self, files: int, bytes_: int, frames: int) -> None:
            return None

        def close(self) -> None:
            return None

    options = RunOptions(cache_dir=tmp_path / "cache", mount=tmp_path / "mnt", progress=Recorder())
    report = run_job(load_job(job_file), options)
    assert report.status == "succeeded", report.error
    warnings = [str(f.get("message")) for kind, f in events if kind == "warning"]
    assert any("/dev/fuse does not exist" in w and "prefetching" in w for w in warnings)
    assert hooks_dir().is_dir()


@needs_fuse
def test_the_mount_leaves_the_runs_signal_handlers_in_place(
    show_agent: RunningAgent, tmp_path: Path
) -> None:
    import signal

    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGPIPE)}
    where = tmp_path / "view"
    path_map = PathMap([rule_from("/mnt/show", f"file://{show_agent.bucket}")])
    mount = start_mount(where, path_map, show_agent.agent.inputs)
    try:
        assert sorted(os.listdir(where)) == ["file"]  # not a source prefix: the inputs/ layout
        during = {s: signal.getsignal(s) for s in before}
    finally:
        mount.stop()
    assert during == before
    assert {s: signal.getsignal(s) for s in before} == before
