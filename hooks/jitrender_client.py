"""Talk to a jitrender agent from inside a DCC (Nuke, Blender). Standard library only.

The agent of a ``jitrender run`` listens on the Unix socket named in ``JITRENDER_SOCKET``;
one JSON object per line each way (see ``jitrender/agent.py``). :class:`Resolver` is what the
plugins use: it answers "where is this file locally?", remembers answers for the life of
the process, and passes a path through untouched when no agent is running (an artist's
workstation) or when the path is outside the mapped prefixes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from typing import Any

SOCKET_ENV = "JITRENDER_SOCKET"
# Frame tokens a DCC may pass instead of one file: map them, never fetch them.
_PATTERN_MARKS = ("#", "%0", "%d", "<UDIM>", "<UVTILE>")


class AgentUnavailable(Exception):
    """No agent at the socket, or it stopped answering."""


class MissingFile(Exception):
    """The agent says the object behind a path does not exist in storage."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


class Connection:
    """One connection per thread to the agent's socket; reconnects once if it drops."""

    def __init__(self, socket_path: str, timeout: float | None = None) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._local = threading.local()

    def _open(self) -> tuple[socket.socket, Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(self.socket_path)
            except OSError as exc:
                sock.close()
                raise AgentUnavailable(f"{self.socket_path}: {exc}") from None
            conn = (sock, sock.makefile("rb"))
            self._local.conn = conn
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn[1].close()
            conn[0].close()
            self._local.conn = None

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(message).encode() + b"\n"
        for attempt in (0, 1):
            sock, reader = self._open()
            try:
                sock.sendall(data)
                line = reader.readline()
            except OSError:
                line = b""
            if line:
                answer: dict[str, Any] = json.loads(line)
                return answer
            self.close()
            if attempt:
                break
        raise AgentUnavailable(f"{self.socket_path}: the agent hung up")


def is_pattern(path: str) -> bool:
    """True for a path that names many files (a frame or UDIM token), not one."""
    return any(mark in path for mark in _PATTERN_MARKS)


class Resolver:
    """Maps scene paths to local paths through the agent. Thread-safe.

    ``local(path)`` returns the local file (fetched, waiting if needed), or ``path`` itself
    when there is no agent or the path is not mapped; raises :class:`MissingFile` when the
    object does not exist. Patterns (``plate.####.exr``) are mapped, not fetched.
    """

    def __init__(self, socket_path: str | None = None, timeout: float | None = None) -> None:
        if socket_path is None:
            socket_path = os.environ.get(SOCKET_ENV) or None
        self.socket_path = socket_path
        self._connection = Connection(socket_path, timeout) if socket_path else None
        self._answers: dict[str, str] = {}
        self._lock = threading.Lock()
        self.unavailable = self._connection is None

    @property
    def active(self) -> bool:
        return not self.unavailable

    def request(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """The agent's answer, or None when no agent is reachable (then never asked again)."""
        if self.unavailable or self._connection is None:
            return None
        try:
            return self._connection.request(message)
        except AgentUnavailable:
            self.unavailable = True
            return None

    def local(self, path: str) -> str:
        known = self._answers.get(path)
        if known is not None:
            return known
        op = "map" if is_pattern(path) else "resolve"
        answer = self.request({"op": op, "path": path})
        if answer is None:
            return path
        if answer.get("ok"):
            local = str(answer["local"])
        elif answer.get("code") == "unmapped":
            local = path
        elif answer.get("code") == "missing":
            raise MissingFile(path, str(answer.get("error")))
        else:
            raise AgentUnavailable(str(answer.get("error")))
        with self._lock:
            self._answers[path] = local
        return local

    def prefetch(self, paths: list[str]) -> None:
        if paths:
            self.request({"op": "prefetch", "paths": paths})

    def frame_next(self, frame: int) -> None:
        self.request({"op": "frame", "frame": int(frame)})

    def frame_files(self, frame: int) -> list[dict[str, str]]:
        """Tell the agent ``frame`` is next and wait until every file the run's resolver says
        it needs is local: one entry per file (``path`` as written, ``url``, ``source``, and
        ``local``, or ``error`` when it does not exist in storage). Empty without an agent;
        :class:`AgentUnavailable` when the agent fails to answer."""
        answer = self.request({"op": "frame", "frame": int(frame), "wait": True})
        if answer is None:
            return []
        if not answer.get("ok"):
            raise AgentUnavailable(str(answer.get("error")))
        return [dict(entry) for entry in answer.get("files", [])]
