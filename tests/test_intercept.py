"""The Python-level interceptor, against a running agent over a local bucket."""

from __future__ import annotations

import builtins
import os
from pathlib import Path

import pytest

from jitrender.intercept import intercepted
from tests.hooks.conftest import RunningAgent, show_agent

__all__ = ["show_agent"]  # the fixture, shared with the plugin tests


def test_mapped_paths_read_stat_exist_and_list_through_the_agent(
    show_agent: RunningAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JITRENDER_SOCKET", show_agent.socket)
    monkeypatch.setenv("JITRENDER_SESSION", show_agent.agent.env()["JITRENDER_SESSION"])
    real_open = builtins.open
    with intercepted() as state:
        assert state is not None
        with open("/mnt/show/tex/wood.png", "rb") as handle:
            assert handle.read() == b"wood-bytes"
        assert Path("/mnt/show/seq/plate.0002.exr").read_bytes() == b"plate 2"
        assert os.stat("/mnt/show/tex/metal.png").st_size == len(b"metal")
        assert os.path.exists("/mnt/show/tex/metal.png")
        assert os.path.exists("/mnt/show/seq")  # a folder: objects exist below it
        assert not os.path.exists("/mnt/show/tex/gone.png")
        assert os.listdir("/mnt/show/tex") == ["metal.png", "wood.png"]
        with pytest.raises(FileNotFoundError), open("/mnt/show/tex/gone.png"):
            pass
        with pytest.raises(PermissionError), open("/mnt/show/tex/new.png", "w"):
            pass
        assert os.path.exists(__file__)  # everything else is untouched
    assert builtins.open is real_open
    fetched = sorted(u.rsplit("/", 1)[1] for u in show_agent.fetched)
    assert fetched == ["metal.png", "plate.0002.exr", "wood.png"]  # never the other plates


def test_without_an_agent_nothing_is_patched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JITRENDER_SOCKET", raising=False)
    real_open = builtins.open
    with intercepted() as state:
        assert state is None and builtins.open is real_open
        assert not os.path.exists("/mnt/show/tex/wood.png")
