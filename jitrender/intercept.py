"""Route a Python tool's file access for mapped paths through the run's agent.

::

    with jitrender.intercept.intercepted():
        tool.main()   # open("/mnt/show/tex/a.png") reads the fetched local copy

Inside the block ``open`` (builtin and ``io.open``), ``os.stat``, ``os.path.exists`` and
``os.listdir`` see mapped studio paths (``/mnt/show/...``) as if the bucket were mounted there:
a file is fetched on first access (once, however many threads ask), a folder lists what is in
storage below it. Paths outside the mapped prefixes, and everything when no agent runs
(``JITRENDER_SOCKET`` unset), behave as usual. Reading only: opening a mapped path for
writing raises ``PermissionError``. The patches are process-wide while the block runs; nest
freely, but do not start it concurrently from two threads.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from jitrender.agent import SESSION_ENV, AgentClient, AgentError, AgentUnavailable

_WRITE_MODES = set("wax+")


class Interceptor:
    """The rerouting state: which prefixes are mapped and what the agent answered."""

    def __init__(self, client: AgentClient, prefixes: list[str]) -> None:
        self.client = client
        self.prefixes = [p.rstrip("/") for p in prefixes]
        self._answers: dict[str, str | None] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> Interceptor | None:
        client = AgentClient.from_env()
        if client is None:
            return None
        prefixes: list[str] = []
        session = os.environ.get(SESSION_ENV)
        if session:
            with contextlib.suppress(OSError, ValueError):
                rules = json.loads(Path(session).read_text())["rules"]
                prefixes = [r["source"] for r in rules if r.get("format", "posix") == "posix"]
        return cls(client, prefixes)

    def mapped(self, path: Any) -> str | None:
        """The absolute path if it is below a mapped prefix, else None (cheap, no I/O)."""
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        elif isinstance(path, os.PathLike):
            path = os.fspath(path)
        if not isinstance(path, str) or not path.startswith("/"):
            return None
        for prefix in self.prefixes:
            if path == prefix or path.startswith(prefix + "/"):
                return os.path.normpath(path)
        return None

    def local_file(self, path: str) -> str | None:
        """The fetched local copy, or None when the object does not exist."""
        with self._lock:
            if path in self._answers:
                return self._answers[path]
        try:
            local: str | None = self.client.resolve(path)
        except AgentError as exc:
            if exc.code not in ("missing", "unmapped"):
                raise OSError(f"{path}: {exc}") from None
            local = None
        with self._lock:
            self._answers[path] = local
        return local

    def folder(self, path: str) -> tuple[list[str], str] | None:
        """(names, local folder) when storage has objects below ``path``."""
        answer = self.client.request({"op": "list", "path": path})
        if not answer.get("ok") or not answer.get("names"):
            return None
        return list(answer["names"]), str(answer["local"])

    def local_any(self, path: str) -> str | None:
        """The local file or folder standing for ``path``, or None when nothing is there."""
        local = self.local_file(path)
        if local is not None:
            return local
        found = self.folder(path)
        return found[1] if found is not None else None


_active_lock = threading.Lock()
_depth = 0
_saved: dict[str, Any] = {}


def _install(state: Interceptor) -> None:
    real_open: Callable[..., Any] = builtins.open
    real_stat = os.stat
    real_exists = os.path.exists
    real_listdir = os.listdir
    _saved.update(open=real_open, stat=real_stat, exists=real_exists, listdir=real_listdir)

    def open_(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        path = state.mapped(file) if not isinstance(file, int) else None
        if path is None:
            return real_open(file, mode, *args, **kwargs)
        if _WRITE_MODES.intersection(mode):
            raise PermissionError(f"{path}: mapped studio paths are read-only")
        local = state.local_file(path)
        if local is None:
            raise FileNotFoundError(2, "No such file in storage", path)
        return real_open(local, mode, *args, **kwargs)

    def stat_(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        mapped = state.mapped(path)
        if mapped is None:
            return real_stat(path, *args, **kwargs)
        local = state.local_any(mapped)
        if local is None:
            raise FileNotFoundError(2, "No such file or folder in storage", mapped)
        return real_stat(local, *args, **kwargs)

    def exists_(path: Any) -> bool:
        mapped = state.mapped(path)
        if mapped is None:
            return real_exists(path)
        try:
            return state.local_any(mapped) is not None
        except (OSError, AgentUnavailable):
            return False

    def listdir_(path: Any = ".") -> list[str]:
        mapped = state.mapped(path)
        if mapped is None:
            return real_listdir(path)
        found = state.folder(mapped)
        if found is None:
            raise FileNotFoundError(2, "No such folder in storage", mapped)
        return found[0]

    builtins.open = open_
    io.open = open_
    os.stat = stat_
    os.path.exists = exists_
    os.listdir = listdir_  # type: ignore[assignment]


def _uninstall() -> None:
    builtins.open = _saved["open"]
    io.open = _saved["open"]
    os.stat = _saved["stat"]
    os.path.exists = _saved["exists"]
    os.listdir = _saved["listdir"]
    _saved.clear()


@contextlib.contextmanager
def intercepted(interceptor: Interceptor | None = None) -> Iterator[Interceptor | None]:
    """Reroute mapped paths through the agent while the block runs (see the module doc).
    Yields the :class:`Interceptor`, or None when there is no agent (nothing is patched)."""
    global _depth
    state = interceptor if interceptor is not None else Interceptor.from_env()
    if state is None:
        yield None
        return
    with _active_lock:
        if _depth == 0:
            _install(state)
        _depth += 1
    try:
        yield state
    finally:
        with _active_lock:
            _depth -= 1
            if _depth == 0:
                _uninstall()
