"""A killed run leaves nothing the next run or ``jitrender cache prune`` does not reclaim: the
agent's socket folder in ``$TMPDIR`` is removed once its run is gone, and small uploads
(done markers) never go through a temp file there."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitrender.storage import GCSStore, LocalStore, crc32c_of_bytes
from tests.conftest import cli
from tests.renderjobs import jitrender_env, make_job, start_run, wait_for


@pytest.fixture
def short_tmpdir() -> Iterator[Path]:
    """A private ``$TMPDIR`` with a short path (agent sockets must fit ~107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="jrt", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("cache", ["same", "deleted"])
def test_a_killed_runs_agent_folder_is_reclaimed_by_cache_prune(
    tmp_path: Path, local_bucket: str, short_tmpdir: Path, cache: str
) -> None:
    """``deleted``: the killed run's cache folder is gone too (a throwaway cache, a wiped
    disk); any other cache's prune reclaims the folder instead of reading it forever."""
    job = make_job(tmp_path / "job", local_bucket, "1-2", texture_size=2000)
    env = jitrender_env(job, TMPDIR=str(short_tmpdir), RENDER_SLEEP="30")
    proc = start_run(job, env=env)
    wait_for(lambda: bool(job.phases("start")), timeout=60)
    proc.kill()  # kill -9: nothing of jitrender's own cleanup runs
    proc.wait(timeout=10)
    for started in job.phase_dir.glob("start.*"):  # the orphaned renderer, too
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(started.name.split(".")[2]), signal.SIGKILL)
    leftovers = list(short_tmpdir.glob("jitrender-agent-*"))
    assert len(leftovers) == 1, leftovers
    if cache == "deleted":
        shutil.rmtree(env["JITRENDER_CACHE_DIR"])
        env = env | {"JITRENDER_CACHE_DIR": str(tmp_path / "another-cache")}
    pruned = cli("cache", "prune", "--json", env=env, timeout=60)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["dead_agent_folders_removed"] == 1
    assert list(short_tmpdir.glob("jitrender-agent-*")) == []


def test_small_uploads_use_no_temp_file(
    tmp_path: Path, local_bucket: str, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_temp_files(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("a temp file in $TMPDIR: a kill here would leave it")

    monkeypatch.setattr(tempfile, "NamedTemporaryFile", no_temp_files)
    for store, bucket in ((LocalStore(), local_bucket), (GCSStore(), gcs_bucket)):
        url = f"{bucket}/markers/1.json"
        assert store.put_bytes_if_absent(b"{}", url, {"k": "v"}).outcome == "created"
        assert store.put_bytes_if_absent(b"{}", url).outcome == "identical"
        assert store.put_bytes_if_absent(b"{ }", url).outcome == "conflict"
        assert store.read_bytes(url) == b"{}"
        info = store.stat(url)  # written in one go, tagged as from a file: checksum, metadata
        assert info is not None and info.crc32c == crc32c_of_bytes(b"{}")
        assert info.metadata.get("k") == "v"
    assert [p.name for p in (tmp_path / "bucket" / "markers").iterdir()] == ["1.json"]


def test_the_next_run_removes_this_nodes_dead_upload_parts_and_leaves_other_nodes(
    tmp_path: Path, local_bucket: str
) -> None:
    """Killed uploads to a file:// bucket leave hidden part files next to their objects. The
    next run's first write into that folder removes the parts of this node's dead processes
    (named ``<pid>@<host>``, or ``<pid>`` alone as older versions named them), and keeps a live
    process's and another node's (a bucket on NFS is shared: only that node can tell whether
    its writer is gone). The folder is read once for all names, not once per write."""
    import socket
    import subprocess

    from tests.renderjobs import run

    job = make_job(tmp_path / "job", local_bucket, "1-3")
    renders = Path(local_bucket.removeprefix("file://"), "renders")
    renders.mkdir(parents=True)
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid no process has now
    host = socket.gethostname().replace(".", "_")
    parts = {
        "mine_dead": f".frame.0001.txt.{dead.pid}@{host}.0badc0de.jitrender-part",
        "legacy_dead": f".frame.0009.txt.{dead.pid}.0badc0de.src.jitrender-part",
        "mine_live": f".frame.0002.txt.{os.getpid()}@{host}.0badc0de.jitrender-part",
        "other_node": f".frame.0003.txt.{dead.pid}@elsewhere_example.0badc0de.jitrender-part",
    }
    for name in parts.values():
        (renders / name).write_bytes(b"partial")
    code, out, _ = run(job)
    assert code == 0, out
    left = {key for key, name in parts.items() if (renders / name).exists()}
    assert left == {"mine_live", "other_node"}
    assert sorted(p.name for p in renders.glob("frame.*")) == [
        "frame.0001.txt", "frame.0002.txt", "frame.0003.txt"]  # fmt: skip
