"""A lazy, read-only FUSE view of the mapped bucket prefixes (``jitrender run --mount DIR``).

For renderers with no callbacks at all: listing and ``stat`` answer from one storage listing
per mapped prefix; opening a file fetches it through the run's inputs (into the shared cache,
once) and reads the local copy. Layout of ``DIR``:

- when ``DIR`` is itself a mapped source prefix (``--mount /mnt/show`` with
  ``/mnt/show -> gs://show``), ``DIR`` *is* that prefix: scene paths work unchanged;
- otherwise ``DIR`` mirrors the workspace's ``inputs/``: ``DIR/gs/show/...``.

Needs the ``fuse`` extra (mfusepy), libfuse and a usable ``/dev/fuse``; :func:`fuse_problem`
says what is missing, and :func:`start_mount` raises :class:`MountUnavailable` with that reason
so the run can fall back to prefetching.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from jitrender.errors import JitrenderError, MissingDependencyError
from jitrender.inputs import Inputs
from jitrender.paths import PathMap, split_url, workspace_relpath
from jitrender.progress import Progress
from jitrender.storage import ObjectInfo

_MOUNT_TIMEOUT_S = 10.0


class MountUnavailable(Exception):
    """FUSE cannot be used here; the message says why."""


def fuse_problem() -> str | None:
    """Why a FUSE mount cannot work on this machine, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist (the container has no FUSE device)"
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        return "/dev/fuse is not readable and writable by this user"
    try:
        import mfusepy  # noqa: F401
    except ImportError:
        return "the 'fuse' extra is not installed (pip install 'jitrender[fuse]')"
    except OSError as exc:
        return f"libfuse is not installed ({exc}; apt-get install fuse3 libfuse2)"
    if os.geteuid() != 0 and not (shutil.which("fusermount3") or shutil.which("fusermount")):
        return "fusermount is not installed (apt-get install fuse3)"
    return None


def view_roots(mount_dir: Path, path_map: PathMap) -> dict[str, str]:
    """Mount-relative folder -> URL prefix that it shows."""
    target = os.path.normpath(str(mount_dir))
    for rule in path_map.rules:
        if rule.source_format == "posix" and os.path.normpath(rule.source) == target:
            return {"": rule.destination.rstrip("/")}
    roots = {}
    for rule in path_map.rules:
        destination = rule.destination.rstrip("/")
        roots[str(workspace_relpath(destination + "/x").parent)] = destination
    return roots


class _Tree:
    """A snapshot of the objects below one URL prefix: folder -> {name: info or None (folder)}."""

    def __init__(self, infos: list[ObjectInfo], prefix: str) -> None:
        self.folders: dict[str, dict[str, ObjectInfo | None]] = {"": {}}
        for info in infos:
            rest = info.url[len(prefix) :].strip("/")
            if not rest:
                continue
            parts = rest.split("/")
            for depth in range(len(parts)):
                folder = "/".join(parts[:depth])
                entries = self.folders.setdefault(folder, {})
                if depth == len(parts) - 1:
                    entries[parts[depth]] = info
                else:
                    entries.setdefault(parts[depth], None)
                    self.folders.setdefault("/".join(parts[: depth + 1]), {})


def _operations_base() -> type:
    from mfusepy import Operations

    return Operations  # type: ignore[no-any-return]


def _fuse_error(code: int) -> Exception:
    from mfusepy import FuseOSError

    return FuseOSError(code)  # type: ignore[no-any-return]


class LazyView:
    """The file system behind the mount (mfusepy ``Operations``; built by :func:`start_mount`)."""

    use_ns = True  # mfusepy: times are integer nanoseconds

    def __init__(self, roots: dict[str, str], inputs: Inputs) -> None:
        self.roots = roots
        self.inputs = inputs
        self._trees: dict[str, _Tree] = {}
        self._lock = threading.Lock()
        self._started = time.time_ns()

    def _tree(self, root: str) -> _Tree:
        with self._lock:
            tree = self._trees.get(root)
        if tree is None:
            prefix = self.roots[root] + "/"
            tree = _Tree(self.inputs.list_prefix(prefix, True), prefix)
            with self._lock:
                self._trees[root] = tree
        return tree

    def locate(self, path: str) -> tuple[str, Any]:
        """("dir", names) | ("file", ObjectInfo); FuseOSError(ENOENT) when nothing is there."""
        rel = path.strip("/")
        for root in sorted(self.roots, key=len, reverse=True):
            if root and rel != root and not rel.startswith(root + "/"):
                continue
            inner = rel[len(root) :].strip("/")
            tree = self._tree(root)
            if inner in tree.folders:
                return "dir", sorted(tree.folders[inner])
            folder, _, name = inner.rpartition("/")
            found = tree.folders.get(folder, {}).get(name)
            if found is not None:
                return "file", found
            raise _fuse_error(errno.ENOENT)
        children = set()
        for root in self.roots:
            if not rel or root.startswith(rel + "/"):
                children.add(root[len(rel) :].strip("/").split("/")[0])
        if children:
            return "dir", sorted(children)
        raise _fuse_error(errno.ENOENT)

    # -- mfusepy Operations ----------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        kind, found = self.locate(path)
        now = self._started
        if kind == "dir":
            mode, size, nlink = stat.S_IFDIR | 0o555, 0, 2
        else:
            mode, size, nlink = stat.S_IFREG | 0o444, found.size, 1
        return {
            "st_mode": mode,
            "st_size": size,
            "st_nlink": nlink,
            "st_uid": os.getuid(),
            "st_gid": os.getgid(),
            "st_atime": now,
            "st_mtime": now,
            "st_ctime": now,
        }

    def readdir(self, path: str, fh: int) -> list[str]:
        kind, names = self.locate(path)
        if kind != "dir":
            raise _fuse_error(errno.ENOTDIR)
        return [".", "..", *names]

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise _fuse_error(errno.EROFS)
        kind, info = self.locate(path)
        if kind != "file":
            raise _fuse_error(errno.EISDIR)
        try:
            local = self.inputs.into_workspace(info.url)
        except MissingDependencyError:
            raise _fuse_error(errno.ENOENT) from None
        except (JitrenderError, OSError):
            raise _fuse_error(errno.EIO) from None
        return os.open(local, os.O_RDONLY)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_namemax": 255}


_LIBFUSE_SIGNALS = ("SIGHUP", "SIGINT", "SIGTERM", "SIGPIPE")


def _signal_handlers() -> dict[int, Any]:
    """The process's handlers for the signals libfuse takes over (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    numbers = [int(getattr(signal, name)) for name in _LIBFUSE_SIGNALS]
    return {number: signal.getsignal(number) for number in numbers}


def _restore_signal_handlers(saved: dict[int, Any]) -> None:
    # libfuse installs process-wide handlers (and resets them to SIG_DFL when it ends): put the
    # run's own back, or SIGTERM would stop the mount instead of the run, and SIGPIPE would kill.
    for number, handler in saved.items():
        if handler is not None:
            with contextlib.suppress(ValueError, OSError):
                signal.signal(number, handler)


class Mount:
    """A running mount; :meth:`stop` unmounts it and waits for the FUSE thread."""

    def __init__(
        self, mount_dir: Path, thread: threading.Thread, saved: dict[int, Any] | None = None
    ) -> None:
        self.mount_dir = mount_dir
        self.thread = thread
        self.saved = saved or {}

    def stop(self) -> None:
        if os.path.ismount(self.mount_dir):
            for command in (["fusermount3", "-u"], ["fusermount", "-u"], ["umount"]):
                if shutil.which(command[0]) is None:
                    continue
                done = subprocess.run(
                    [*command, str(self.mount_dir)], capture_output=True, check=False
                )
                if done.returncode == 0:
                    break
        self.thread.join(timeout=5)
        _restore_signal_handlers(self.saved)


def mount_or_warn(mount_dir: Path, path_map: PathMap, inputs: Inputs, progress: Progress) -> Any:
    """:func:`start_mount`, or None with a warning that the run falls back to prefetching."""
    try:
        mount = start_mount(mount_dir, path_map, inputs)
    except MountUnavailable as exc:
        progress.event(
            "warning",
            message=f"--mount {mount_dir}: {exc}; falling back to prefetching "
            "the resolved dependencies",
        )
        return None
    progress.event("phase", message=f"lazy mount at {mount_dir}")
    return mount


def start_mount(mount_dir: Path, path_map: PathMap, inputs: Inputs) -> Mount:
    """Mount the lazy view at ``mount_dir`` (created if needed) in a background thread."""
    problem = fuse_problem()
    if problem is not None:
        raise MountUnavailable(problem)
    if not path_map.rules:
        raise MountUnavailable("the job maps no path prefixes to buckets: nothing to show")
    for rule in path_map.rules:
        split_url(rule.destination)
    mount_dir = Path(mount_dir).absolute()
    if os.path.ismount(mount_dir):
        raise MountUnavailable(f"{mount_dir} is already a mount point")
    try:
        mount_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise MountUnavailable(f"cannot create {mount_dir}: {exc}") from None
    from mfusepy import FUSE

    # mfusepy wants an Operations subclass; mixing it in keeps this module importable without it.
    operations = type("JitrenderLazyView", (LazyView, _operations_base()), {})
    ops = operations(view_roots(mount_dir, path_map), inputs)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            FUSE(ops, str(mount_dir), foreground=True, ro=True, nothreads=False)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    saved = _signal_handlers()
    thread = threading.Thread(target=serve, name="jitrender-mount", daemon=True)
    thread.start()
    deadline = time.monotonic() + _MOUNT_TIMEOUT_S
    while not os.path.ismount(mount_dir):
        if not thread.is_alive() or time.monotonic() > deadline:
            why = f"{failure[0]}" if failure else "the FUSE mount did not appear"
            with contextlib.suppress(Exception):
                Mount(mount_dir, thread, saved).stop()
            raise MountUnavailable(f"cannot mount {mount_dir}: {why}")
        time.sleep(0.02)
    time.sleep(0.05)  # libfuse sets its handlers before mounting; let it finish, then undo
    _restore_signal_handlers(saved)
    return Mount(mount_dir, thread, saved)


__all__ = ["Mount", "MountUnavailable", "fuse_problem", "start_mount"]
