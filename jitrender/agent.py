"""The per-run agent: the one place that turns "the path a renderer asked for" into a local file.

``jitrender run`` starts one :class:`Agent` per run. It listens on a Unix socket (its path is
in ``JITRENDER_SOCKET``; ``JITRENDER_SESSION`` names a JSON file with the path-map rules and
the workspace) and answers one JSON object per line, one answer line per request::

    {"op": "resolve", "path": "/mnt/show/tex/wood.png"}
        -> {"ok": true, "local": "<ws>/inputs/gs/show/tex/wood.png", "url": "gs://show/tex/wood.png"}
        -> {"ok": false, "code": "missing", "error": "gs://show/tex/wood.png: ... does not exist"}
        -> {"ok": false, "code": "unmapped", "error": "..."}    (not below a mapped prefix)
    {"op": "map", "path": ...}          -> like resolve, without fetching (patterns, folders)
    {"op": "prefetch", "paths": [...]}  -> {"ok": true, "queued": n}   (returns at once)
    {"op": "frame", "frame": 12}        -> {"ok": true, "queued": n}   (frame 12 is next)
    {"op": "frame", "frame": 12, "wait": true}
        -> {"ok": true, "queued": n, "files": [{"path", "url", "source", "local" | "error"}]}
           (every file the resolver says frame 12 needs, each local once the answer comes,
           or with "error" when it does not exist in storage: what a plugin fetches per frame
           instead of re-deriving the DCC's frame arithmetic)
    {"op": "list", "path": <folder>}    -> {"ok": true, "names": [...], "local": <folder>}
    {"op": "ping"}                      -> {"ok": true, "version": 1, "workspace": ...}

``resolve`` blocks until the file is in the workspace; the run's
:class:`~jitrender.inputs.Inputs` fetches each object once however many clients ask. Error codes:
``missing``, ``unmapped``, ``bad_request``, ``failed`` (storage failed after retries).

The client side (:class:`AgentClient`, and ``hooks/jitrender_client.py`` for DCCs) uses the
standard library only.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jitrender.deps import Dependency
from jitrender.errors import ConfigError, JitrenderError, MissingDependencyError
from jitrender.inputs import Inputs
from jitrender.paths import PathMap, is_url, split_url

PROTOCOL_VERSION = 1
SOCKET_ENV = "JITRENDER_SOCKET"
SESSION_ENV = "JITRENDER_SESSION"
HOOKS_ENV = "JITRENDER_HOOKS"


def hooks_dir() -> Path:
    """The folder holding the DCC plugins (``nuke/``, ``blender/``).

    ``$JITRENDER_HOOKS`` wins; else the ``hooks/`` folder next to the package (a source
    checkout or an editable install, which is how render nodes deploy jitrender today).
    """
    env = os.environ.get(HOOKS_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent / "_hooks")  # installed wheel
    candidates.append(Path(__file__).resolve().parent.parent / "hooks")  # checkout / editable
    for candidate in candidates:
        if (candidate / "jitrender_client.py").is_file():
            return candidate
    raise ConfigError(
        f"cannot find jitrender's DCC plugins (looked in {', '.join(map(str, candidates))}); "
        f"set {HOOKS_ENV} to the hooks/ folder of a jitrender checkout"
    )


class RequestError(Exception):
    """A request the agent answers with ``ok: false``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class AgentStats:
    requests: int = 0
    resolved: int = 0
    fetched: int = 0  # distinct objects the agent had to ask the fetch machinery for
    missing: int = 0
    unmapped: int = 0
    prefetched: int = 0
    clients: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Agent:
    """Answers hooks for one run. Thread-safe; start with :meth:`start`, end with :meth:`stop`.

    Files come from ``inputs`` (the run's :class:`~jitrender.inputs.Inputs`: fetched once,
    linked below ``inputs.root``). ``deps`` are the resolver's dependencies, used for
    frame-ahead prefetch and to fetch linked libraries up front.
    """

    def __init__(
        self,
        inputs: Inputs,
        path_map: PathMap,
        *,
        deps: Sequence[Dependency] = (),
        workspace: Path | None = None,
        runtime_dir: Path | None = None,
        log_path: Path | None = None,
        frames_ahead: int = 1,
    ) -> None:
        self.inputs = inputs
        self.path_map = path_map
        self.deps = list(deps)
        self.workspace = workspace or inputs.root.parent
        self.frames_ahead = frames_ahead
        self.stats = AgentStats()
        self._runtime_dir = runtime_dir
        self._own_runtime_dir = False
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self._log_file: Any = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._frames: list[int] = sorted({f for d in self.deps for f in d.frames or ()})
        self.socket_path: Path | None = None
        self.session_path: Path | None = None

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> Agent:
        if self._runtime_dir is None:
            # Unix socket paths are limited to ~107 bytes: keep it short, under /tmp.
            self._runtime_dir = Path(tempfile.mkdtemp(prefix="jitrender-agent-"))
            self._own_runtime_dir = True
        self.socket_path = self._runtime_dir / "agent.sock"
        self.session_path = self._runtime_dir / "session.json"
        # First: it names the run's workspace, so a later run can tell (and reclaim) the
        # folder of a run that was killed.
        self.session_path.write_text(json.dumps(self.session(), indent=1))
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()
        if self._log_path is not None:
            self._log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self._log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
        self._server = _Server(str(self.socket_path), self)
        os.chmod(self.socket_path, 0o600)
        self._thread = threading.Thread(
            target=self._server.serve, name="jitrender-agent", daemon=True
        )
        self._thread.start()
        self._log(f"started socket={self.socket_path}")
        self.use_deps(self.deps)
        return self

    def use_deps(self, deps: Sequence[Dependency]) -> None:
        """The resolver's dependencies (for an agent started before they were known; none
        are asked for until a stage starts): linked libraries are fetched at once."""
        self.deps = list(deps)
        self._frames = sorted({f for d in self.deps for f in d.frames or ()})
        # Linked libraries must be local before Blender loads the scene.
        self.inputs.prefetch_urls(d.url for d in self.deps if d.url.lower().endswith(".blend"))
        self._log(f"deps={len(self.deps)}")

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            if self._thread is not None:
                self._thread.join()
            self._server.server_close()
            self._server = None
        self._log(f"stopped {json.dumps(self.stats.to_json(), sort_keys=True)}")
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        if self._own_runtime_dir and self._runtime_dir is not None:
            shutil.rmtree(self._runtime_dir, ignore_errors=True)

    def __enter__(self) -> Agent:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def session(self) -> dict[str, Any]:
        """What ``JITRENDER_SESSION`` holds: enough for a client to map paths on its own."""
        return {
            "version": PROTOCOL_VERSION,
            "socket": str(self.socket_path),
            "pid": os.getpid(),
            "workspace": str(self.workspace),
            "inputs": str(self.inputs.root),
            "rules": [
                {"source": r.source, "destination": r.destination, "format": r.source_format}
                for r in self.path_map.rules
            ],
        }

    def env(self) -> dict[str, str]:
        """The variables a stage needs to find this agent."""
        assert self.socket_path is not None and self.session_path is not None
        return {SOCKET_ENV: str(self.socket_path), SESSION_ENV: str(self.session_path)}

    # -- the operations ------------------------------------------------------------------

    def url_for(self, path: str) -> str:
        """The URL a path as written in a scene maps to; :class:`RequestError` if unmapped."""
        if not isinstance(path, str) or not path:
            raise RequestError("bad_request", "'path' must be a non-empty string")
        if is_url(path) and split_url(path)[0] != "file":
            return path
        inside = self._url_below_inputs(path)
        if inside is not None:
            return inside
        if not self.path_map.is_mapped(path):
            raise RequestError("unmapped", f"{path}: not below a mapped prefix")
        return self.path_map.to_url(path)

    def _url_below_inputs(self, path: str) -> str | None:
        """A path inside the workspace mirror (``inputs/gs/show/a.png``, what a scene's
        ``//`` paths become once the scene is local) names ``gs://show/a.png``."""
        root = str(self.inputs.root) + "/"
        if not path.startswith(root):
            return None
        parts = [p for p in path[len(root) :].split("/") if p not in ("", ".")]
        if len(parts) < 2 or ".." in parts:
            raise RequestError("unmapped", f"{path}: not an object below {root}")
        netloc = "" if parts[1] == "_" else parts[1]
        return f"{parts[0]}://{netloc}/" + "/".join(parts[2:])

    def local_for(self, url: str) -> Path:
        return self.inputs.local_path(url)

    def resolve(self, path: str) -> tuple[str, Path]:
        """(url, local path) for ``path``, fetched; blocks until it is in the workspace."""
        url = self.url_for(path)
        started = time.monotonic()
        local = self.inputs.into_workspace(url)
        elapsed = time.monotonic() - started
        if elapsed > 0.001:  # waited for a transfer, not a memo
            self.stats.fetched += 1
            self._log(f"fetched {url} {1000 * elapsed:.1f}ms")
        return url, local

    def prefetch(self, paths: Iterable[str]) -> int:
        urls = []
        for path in paths:
            with contextlib.suppress(RequestError):
                urls.append(self.url_for(path))
        queued = self.inputs.prefetch_urls(urls)
        self.stats.prefetched += queued
        return queued

    def frame_next(self, frame: int) -> int:
        """Prefetch the dependencies of ``frame`` and of the frames after it (``frames_ahead``)."""
        wanted = {frame}
        wanted.update([f for f in self._frames if f > frame][: self.frames_ahead])
        urls = [d.url for d in self.deps if d.frames is not None and wanted.intersection(d.frames)]
        queued = self.inputs.prefetch_urls(urls)
        self.stats.prefetched += queued
        self._log(f"frame {frame}: {queued} queued")
        return queued

    def frame_files(self, frame: int) -> list[dict[str, str]]:
        """Every dependency ``frame`` needs, fetched into the workspace (this waits for them):
        ``path`` (as written), ``url``, ``source`` and ``local``, or ``error`` for a file that
        does not exist in storage. Storage failures after retries raise."""
        needed = [d for d in self.deps if d.needed_by(frame)]
        self.inputs.prefetch_urls(d.url for d in needed)  # in parallel; the loop below waits
        files = []
        for dep in needed:
            entry = {"path": dep.path, "url": dep.url, "source": dep.source}
            try:
                entry["local"] = str(self.inputs.into_workspace(dep.url))
            except MissingDependencyError:
                self.stats.missing += 1
                entry["error"] = f"{dep.url}: does not exist in storage"
            files.append(entry)
        return files

    def list_folder(self, path: str) -> tuple[list[str], Path]:
        """Names directly below a mapped folder (files and sub-folders), from storage."""
        url = self.url_for(path).rstrip("/")
        prefix = url + "/"
        names: set[str] = set()
        for info in self.inputs.list_prefix(prefix, True):
            rest = info.url[len(prefix) :]
            if rest:
                names.add(rest.split("/", 1)[0])
        local = self.local_for(url)
        if names:
            local.mkdir(parents=True, exist_ok=True)
        return sorted(names), local

    # -- the protocol --------------------------------------------------------------------

    def handle(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """One request -> one answer; never raises."""
        started = time.monotonic()
        op = request.get("op") if isinstance(request, Mapping) else None
        try:
            answer = self._dispatch(op, request)
        except RequestError as exc:
            if exc.code == "unmapped":
                self.stats.unmapped += 1
            answer = {"ok": False, "code": exc.code, "error": exc.message}
        except MissingDependencyError as exc:
            self.stats.missing += 1
            self._log(f"missing {exc.url} (asked for {request.get('path')})")
            answer = {
                "ok": False,
                "code": "missing",
                "url": exc.url,
                "error": f"{request.get('path')} -> {exc.url}: does not exist in storage",
            }
        except JitrenderError as exc:
            answer = {"ok": False, "code": "failed", "error": exc.message}
        except Exception as exc:  # a broken request must never take the agent down
            answer = {"ok": False, "code": "failed", "error": f"{type(exc).__name__}: {exc}"}
        self.stats.requests += 1
        self.stats.seconds += time.monotonic() - started
        return answer

    def _dispatch(self, op: Any, request: Mapping[str, Any]) -> dict[str, Any]:
        if op == "resolve":
            url, local = self.resolve(request.get("path"))  # type: ignore[arg-type]
            self.stats.resolved += 1
            return {"ok": True, "local": str(local), "url": url}
        if op == "map":
            url = self.url_for(request.get("path"))  # type: ignore[arg-type]
            return {"ok": True, "local": str(self.local_for(url)), "url": url}
        if op == "prefetch":
            paths = request.get("paths")
            if not isinstance(paths, list):
                raise RequestError("bad_request", "'paths' must be a list")
            return {"ok": True, "queued": self.prefetch(p for p in paths if isinstance(p, str))}
        if op == "frame":
            frame = request.get("frame")
            if isinstance(frame, bool) or not isinstance(frame, int):
                raise RequestError("bad_request", "'frame' must be an integer")
            answer: dict[str, Any] = {"ok": True, "queued": self.frame_next(frame)}
            if request.get("wait") is True:
                answer["files"] = self.frame_files(frame)
            return answer
        if op == "list":
            names, local = self.list_folder(request.get("path"))  # type: ignore[arg-type]
            return {"ok": True, "names": names, "local": str(local)}
        if op == "ping":
            return {"ok": True, "version": PROTOCOL_VERSION, "workspace": str(self.workspace)}
        raise RequestError("bad_request", f"unknown op {op!r}")

    def _log(self, line: str) -> None:
        if self._log_file is not None:
            with self._log_lock:
                try:
                    self._log_file.write(f"{time.time():.3f} {line}\n")
                except OSError:  # a full disk (a download's reservation) must not end the run:
                    broken, self._log_file = self._log_file, None  # the download says why
                    with contextlib.suppress(OSError):
                        broken.close()


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        agent = self.server.agent
        agent.stats.clients += 1
        for line in self.rfile:
            try:
                request = json.loads(line)
            except ValueError:
                answer: dict[str, Any] = {
                    "ok": False,
                    "code": "bad_request",
                    "error": "not a JSON line",
                }
            else:
                answer = agent.handle(request)
            try:
                self.wfile.write(json.dumps(answer).encode() + b"\n")
            except OSError:
                return


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True  # a client that never hangs up must not keep the run alive
    timeout = 0  # handle_request() runs once a client is waiting: it never blocks

    def __init__(self, path: str, agent: Agent) -> None:
        self.agent = agent
        super().__init__(path, _Handler)
        self._wake_read, self._wake_write = os.pipe()
        self._stopping = False

    def serve(self) -> None:
        """Accept clients until :meth:`stop`, which ends the loop at once (``serve_forever``
        notices a shutdown only at its next poll: up to one interval at the end of every run)."""
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_READ)
            selector.register(self._wake_read, selectors.EVENT_READ)
            while not self._stopping:
                for key, _events in selector.select():
                    if key.fileobj is self and not self._stopping:
                        self.handle_request()

    def stop(self) -> None:
        self._stopping = True
        os.write(self._wake_write, b"\0")

    def server_close(self) -> None:
        super().server_close()
        for fd in (self._wake_read, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)


# -- the client (standard library only) ------------------------------------------------------


def _hook_client() -> Any:
    """The plugins' own client module (``hooks/jitrender_client.py``, standard library only),
    loaded from :func:`hooks_dir`: one implementation of the wire protocol for DCCs and for
    jitrender itself (an editable install cannot import it as ``jitrender._hooks``)."""
    import importlib.util
    import sys

    name = "_jitrender_hook_client"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, hooks_dir() / "jitrender_client.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module


def __getattr__(name: str) -> Any:
    """``AgentUnavailable`` (no agent is running, or it stopped answering) is the plugins' own
    class, so both sides agree; it is loaded on first use, not when this module is imported."""
    if name == "AgentUnavailable":
        return _hook_client().AgentUnavailable
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class AgentError(Exception):
    """The agent answered ``ok: false``; ``code`` says why (missing, unmapped, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class AgentClient:
    """Talks to the agent over its socket; one connection per thread, reconnects once."""

    socket_path: str
    timeout: float | None = None
    _connection: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._connection = _hook_client().Connection(self.socket_path, self.timeout)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> AgentClient | None:
        path = (environ if environ is not None else os.environ).get(SOCKET_ENV)
        return cls(path) if path else None

    def close(self) -> None:
        self._connection.close()

    def request(self, message: Mapping[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._connection.request(dict(message))
        return answer

    def resolve(self, path: str) -> str:
        """The local path for ``path``; :class:`AgentError` (``code``) when it cannot be had."""
        answer = self.request({"op": "resolve", "path": path})
        if not answer.get("ok"):
            raise AgentError(str(answer.get("code")), str(answer.get("error")))
        return str(answer["local"])
