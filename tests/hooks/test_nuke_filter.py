"""The Nuke plugin's filename filter, against a running agent.

Nuke itself cannot run on these machines, so the filter function is called directly, the way
Nuke calls a function given to ``nuke.addFilenameFilter``; registration is tested with a
stand-in ``nuke`` module (see that test's docstring).
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.hooks.conftest import HOOKS, RunningAgent, at_once


@pytest.fixture
def nuke_plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.syspath_prepend(str(HOOKS / "nuke"))
    module = importlib.import_module("jitrender_nuke")
    yield module
    module.reset(None)


def test_mapped_paths_come_back_local_and_are_fetched_once(
    nuke_plugin: Any, show_agent: RunningAgent
) -> None:
    nuke_plugin.reset(show_agent.socket)
    local = nuke_plugin.filename_filter("/mnt/show/tex/wood.png")
    assert local != "/mnt/show/tex/wood.png" and Path(local).read_bytes() == b"wood-bytes"
    assert nuke_plugin.filename_filter("/mnt/show/tex/wood.png") == local
    assert show_agent.agent.stats.resolved == 1  # the second answer came from the process cache


def test_unmapped_paths_pass_through_untouched(nuke_plugin: Any, show_agent: RunningAgent) -> None:
    nuke_plugin.reset(show_agent.socket)
    assert nuke_plugin.filename_filter("/home/artist/ref.jpg") == "/home/artist/ref.jpg"
    assert nuke_plugin.filename_filter("") == ""
    assert nuke_plugin.filename_filter(None) is None


def test_sequence_patterns_are_mapped_without_fetching(
    nuke_plugin: Any, show_agent: RunningAgent
) -> None:
    nuke_plugin.reset(show_agent.socket)
    for pattern in ("/mnt/show/seq/plate.####.exr", "/mnt/show/seq/plate.%04d.exr"):
        local = nuke_plugin.filename_filter(pattern)
        assert local.startswith(str(show_agent.inputs)) and local.endswith(pattern[14:])
    assert show_agent.fetched == []


def test_a_missing_object_raises_an_error_naming_the_file(
    nuke_plugin: Any, show_agent: RunningAgent
) -> None:
    nuke_plugin.reset(show_agent.socket)
    with pytest.raises(RuntimeError, match=r"tex/gone\.exr.*does not exist"):
        nuke_plugin.filename_filter("/mnt/show/tex/gone.exr")


def test_without_an_agent_every_path_passes_through(
    nuke_plugin: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JITRENDER_SOCKET", raising=False)
    nuke_plugin.reset(None)
    assert nuke_plugin.filename_filter("/mnt/show/tex/wood.png") == "/mnt/show/tex/wood.png"
    nuke_plugin.reset(str(tmp_path / "no-agent.sock"))  # set but nobody listening
    assert nuke_plugin.filename_filter("/mnt/show/tex/wood.png") == "/mnt/show/tex/wood.png"


def test_concurrent_requests_from_threads_each_get_the_file_fetched_once(
    nuke_plugin: Any, show_agent: RunningAgent
) -> None:
    nuke_plugin.reset(show_agent.socket)
    paths = [f"/mnt/show/seq/plate.{n:04d}.exr" for n in range(1, 6)] + ["/mnt/show/tex/wood.png"]
    results = at_once(30, lambda i: nuke_plugin.filename_filter(paths[i % len(paths)]))
    for index, local in enumerate(results):
        assert Path(local).name == Path(paths[index % len(paths)]).name and Path(local).is_file()
    assert sorted(show_agent.store.downloads.values()) == [1] * 6


def test_init_py_registers_the_filter_with_nuke(
    show_agent: RunningAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs ``hooks/nuke/init.py`` as Nuke would on start-up, with a stand-in ``nuke`` module:
    a fake that only records ``addFilenameFilter`` calls, because Nuke cannot run here."""
    registered: list[Callable[[str], str]] = []
    stand_in = types.ModuleType("nuke")
    stand_in.addFilenameFilter = registered.append  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nuke", stand_in)
    monkeypatch.setenv("JITRENDER_SOCKET", show_agent.socket)
    monkeypatch.syspath_prepend(str(HOOKS / "nuke"))
    monkeypatch.delitem(sys.modules, "jitrender_nuke", raising=False)
    init_source = (HOOKS / "nuke" / "init.py").read_text()
    exec(compile(init_source, str(HOOKS / "nuke" / "init.py"), "exec"), {"__name__": "init"})
    assert len(registered) == 1
    local = registered[0]("/mnt/show/tex/metal.png")
    assert Path(local).read_bytes() == b"metal"
    sys.modules["jitrender_nuke"].reset(None)


def test_nuke_engine_runs_nuke_x_with_the_plugin_first_on_nuke_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jitrender.engines import StageCall, Workspace, engine_named

    binary = tmp_path / "bin" / "nuke"
    binary.parent.mkdir()
    binary.write_text("#!/bin/sh\nexit 0\n")
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}:/usr/bin:/bin")
    monkeypatch.setenv("NUKE_PATH", "/studio/nuke")
    workspace = Workspace(tmp_path / "ws", tmp_path / "ws" / "inputs" / "comp.nk")
    call = StageCall("comp", (1, 2, 3, 7), workspace, {"write": "Write1"})
    invocation = engine_named("nuke")(call)
    assert invocation.argv == [
        str(binary), "-x", "-X", "Write1", "-F", "1-3", "-F", "7", str(workspace.scene)
    ]  # fmt: skip
    assert invocation.env["NUKE_PATH"] == f"{HOOKS / 'nuke'}:/studio/nuke"
