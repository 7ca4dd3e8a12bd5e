"""The agent: a real Unix socket server over a real cache and a local bucket."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import yaml

from jitrender.agent import AgentClient, AgentError, hooks_dir
from jitrender.deps import Dependency
from jitrender.job import load_job
from jitrender.run import RunOptions, run_job
from tests.hooks.conftest import (
    CLIENT_STAGE,
    RunningAgent,
    at_once,
    make_bucket,
    show_agent,
    start_test_agent,
)

__all__ = ["show_agent"]  # the fixture, shared with the plugin tests


def ask(agent: RunningAgent, message: dict[str, object]) -> dict[str, object]:
    return AgentClient(agent.socket).request(message)


def test_resolve_maps_a_studio_path_fetches_it_and_links_it_into_the_workspace(
    show_agent: RunningAgent,
) -> None:
    answer = ask(show_agent, {"op": "resolve", "path": "/mnt/show/tex/wood.png"})
    assert answer["ok"] is True
    local = Path(str(answer["local"]))
    assert local.read_bytes() == b"wood-bytes"
    assert local == show_agent.inputs / "file" / "_" / str(show_agent.bucket).lstrip("/") / (
        "tex/wood.png"
    )
    assert answer["url"] == f"file://{show_agent.bucket}/tex/wood.png"
    again = ask(show_agent, {"op": "resolve", "path": "/mnt/show/tex/wood.png"})
    assert again == answer
    assert show_agent.store.downloads == {answer["url"]: 1}


def test_resolve_of_a_missing_object_says_missing_and_names_the_url(
    show_agent: RunningAgent,
) -> None:
    answer = ask(show_agent, {"op": "resolve", "path": "/mnt/show/tex/gone.png"})
    assert answer["ok"] is False and answer["code"] == "missing"
    assert "tex/gone.png" in str(answer["error"]) and "does not exist" in str(answer["error"])
    try:
        AgentClient(show_agent.socket).resolve("/mnt/show/tex/gone.png")
    except AgentError as exc:
        assert exc.code == "missing"
    else:
        raise AssertionError("resolve of a missing object did not raise")


def test_unmapped_paths_and_bad_requests_get_clear_codes(show_agent: RunningAgent) -> None:
    assert ask(show_agent, {"op": "resolve", "path": "/etc/passwd"})["code"] == "unmapped"
    assert ask(show_agent, {"op": "fly"})["code"] == "bad_request"
    assert ask(show_agent, {"op": "frame", "frame": "7"})["code"] == "bad_request"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(show_agent.socket)
        sock.sendall(b"this is not json\n")
        assert json.loads(sock.makefile("rb").readline())["code"] == "bad_request"
    assert ask(show_agent, {"op": "ping"})["ok"] is True  # still serving


def test_many_threads_asking_at_once_fetch_each_object_once(show_agent: RunningAgent) -> None:
    paths = ["/mnt/show/tex/wood.png", "/mnt/show/tex/metal.png", "/mnt/show/seq/plate.0003.exr"]
    client = AgentClient(show_agent.socket)
    answers = at_once(24, lambda i: client.resolve(paths[i % len(paths)]))
    assert len(answers) == 24 and len(set(answers)) == 3
    assert sorted(show_agent.store.downloads.values()) == [1, 1, 1]


def test_frame_next_prefetches_that_frame_and_the_next_ones_deps_only(tmp_path: Path) -> None:
    files = {f"seq/plate.{n:04d}.exr": f"plate {n}".encode() for n in range(1, 6)}
    root = tmp_path / "bucket"
    deps = [
        Dependency(f"/mnt/show/seq/plate.{n:04d}.exr", f"file://{root}/seq/plate.{n:04d}.exr", (n,))
        for n in range(1, 6)
    ]
    running = start_test_agent(tmp_path, files, deps)
    try:
        assert ask(running, {"op": "frame", "frame": 2}) == {"ok": True, "queued": 2}
        deadline = time.monotonic() + 5
        while len(running.fetched) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert sorted(u.rsplit("/", 1)[1] for u in running.fetched) == [
            "plate.0002.exr",
            "plate.0003.exr",
        ]
        assert ask(running, {"op": "frame", "frame": 2})["queued"] == 0  # already there
    finally:
        running.agent.stop()


def test_frame_with_wait_answers_the_frames_files_once_local_and_names_the_missing(
    tmp_path: Path,
) -> None:
    """What the Blender plugin asks before each frame instead of deriving file numbers."""
    root = tmp_path / "bucket"
    deps = [
        Dependency("/mnt/show/tex/wood.png", f"file://{root}/tex/wood.png", None, "IMwood"),
        Dependency("/mnt/show/seq/p.0002.exr", f"file://{root}/seq/p.0002.exr", (2,), "IMp"),
        Dependency("/mnt/show/seq/p.0003.exr", f"file://{root}/seq/p.0003.exr", (3,), "IMp"),
    ]
    running = start_test_agent(tmp_path, {"tex/wood.png": b"w", "seq/p.0002.exr": b"2"}, deps)
    try:
        answer = ask(running, {"op": "frame", "frame": 2, "wait": True})
        local = {Path(f["local"]).name: Path(f["local"]).read_bytes() for f in answer["files"]}
        assert local == {"wood.png": b"w", "p.0002.exr": b"2"}
        (missing,) = ask(running, {"op": "frame", "frame": 3, "wait": True})["files"][1:]
        assert missing["source"] == "IMp" and missing["path"] == "/mnt/show/seq/p.0003.exr"
        assert missing["error"].endswith("seq/p.0003.exr: does not exist in storage")
        assert "local" not in missing
    finally:
        running.agent.stop()


def test_prefetch_returns_at_once_and_the_files_arrive(show_agent: RunningAgent) -> None:
    started = time.monotonic()
    answer = ask(show_agent, {"op": "prefetch", "paths": ["/mnt/show/tex/metal.png", "/x"]})
    assert answer == {"ok": True, "queued": 1}
    assert time.monotonic() - started < 0.05  # the store sleeps 0.05 s per download
    local = AgentClient(show_agent.socket).resolve("/mnt/show/tex/metal.png")
    assert Path(local).read_bytes() == b"metal"
    assert show_agent.store.downloads == {f"file://{show_agent.bucket}/tex/metal.png": 1}


def test_workspace_paths_and_folder_listings(show_agent: RunningAgent) -> None:
    mapped = ask(show_agent, {"op": "map", "path": "/mnt/show/seq/plate.####.exr"})
    assert str(mapped["local"]).endswith("/seq/plate.####.exr") and not show_agent.fetched
    # A scene's "//" paths point into the workspace mirror once the scene is local.
    inside = str(mapped["local"]).replace("####", "0004")
    answer = ask(show_agent, {"op": "resolve", "path": inside})
    assert answer["ok"] is True and Path(inside).read_bytes() == b"plate 4"
    listing = ask(show_agent, {"op": "list", "path": "/mnt/show"})
    assert listing["names"] == ["seq", "tex"]


def test_session_file_and_socket_are_private_and_describe_the_mapping(
    show_agent: RunningAgent,
) -> None:
    env = show_agent.agent.env()
    session = json.loads(Path(env["JITRENDER_SESSION"]).read_text())
    assert session["socket"] == env["JITRENDER_SOCKET"] == show_agent.socket
    assert session["rules"][0]["source"] == "/mnt/show"
    assert session["inputs"] == str(show_agent.inputs)
    assert stat.S_IMODE(os.stat(show_agent.socket).st_mode) == 0o600


def test_run_gives_stages_an_agent_that_fetches_what_the_resolver_did_not_predict(
    tmp_path: Path,
) -> None:
    files = {"tex/late.txt": b"fetched on request", "tex/unused.txt": b"never asked for"}
    bucket = make_bucket(tmp_path / "bucket", files)
    script = tmp_path / "stage.py"
    script.write_text(
        CLIENT_STAGE + "local = jitrender_client.Resolver().local('/mnt/show/tex/late.txt')\n"
        "out = os.path.join(os.environ['JITRENDER_OUTPUTS'], 'out.' + sys.argv[2] + '.txt')\n"
        "open(out, 'w').write(open(local).read())\n"
    )
    job = {
        "frames": "1-2",
        "path_map": [{"from": "/mnt/show", "to": f"file://{bucket}"}],
        "stages": [
            {
                "name": "read",
                "command": [sys.executable, str(script), str(hooks_dir()), "{frame}"],
            }
        ],
        "outputs": {"to": f"file://{tmp_path / 'out'}", "files": ["out.*.txt"]},
    }
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump(job))
    report = run_job(load_job(job_file), RunOptions(cache_dir=tmp_path / "cache"))
    assert report.status == "succeeded", report.error
    assert (tmp_path / "out" / "out.2.txt").read_text() == "fetched on request"
    assert (report.misses, report.hits) == (1, 0)  # one fetch, shared by both frames


def test_importing_the_run_loads_no_plugin_code() -> None:
    """``import jitrender.run`` has no side effect: the hooks' client loads on first use."""
    check = "import sys, jitrender.run; assert '_jitrender_hook_client' not in sys.modules"
    subprocess.run([sys.executable, "-c", check], check=True, timeout=60)
