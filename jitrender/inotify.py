"""Linux inotify for the outputs watch: the files below a folder closed after writing, and
the files renamed into it, told in the order they happened.

watchdog's observer tells the same (and is what other systems use, see
:func:`jitrender.outputs._observe`), but on Linux it costs every run ~25 ms of CPU, its
imports and its three threads, for the two kinds of event an outputs folder needs. Here one
thread reads them: three libc calls through ctypes, the events read with ``os.read``.

What it tells, as watchdog's handler in :mod:`jitrender.outputs` heard it, with one
difference: a file renamed into the folder from elsewhere on the same file system counts as
renamed into place (watchdog told it as "created", so it waited for the stage's end). A folder
made or renamed into the tree is watched from then on; the files a folder renamed in brings
count as renamed, those written into a new folder before its watch began are left to the
stage's end, as with watchdog. A full event queue (``IN_Q_OVERFLOW``) loses events: the stage's
end finds those files."""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import threading
from collections.abc import Callable
from pathlib import Path

# <sys/inotify.h>
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

_libc: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    """libc, with its inotify calls declared; AttributeError where it has none."""
    global _libc
    if _libc is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        _libc = libc
    return _libc


def _error(call: str, path: str = "") -> OSError:
    code = ctypes.get_errno()
    return OSError(code, f"{call}: {os.strerror(code)}", path or None)


class InotifyWatch:
    """A started watch of ``folder`` and every folder below it: ``closed(path)`` for a file
    closed after writing, ``renamed(path)`` for a file renamed into the tree, called on the
    watch's own thread in the order the events happened. OSError when inotify cannot start
    (its limits: ``fs.inotify.max_user_instances``, ``max_user_watches``); AttributeError
    on a system without inotify."""

    def __init__(
        self,
        folder: Path,
        closed: Callable[[Path], None],
        renamed: Callable[[Path], None],
    ) -> None:
        self._closed, self._renamed = closed, renamed
        libc = _lib()
        fd = int(libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC))
        if fd < 0:
            raise _error("inotify_init1")
        self._fd = fd
        self._paths: dict[int, str] = {}  # watch descriptor -> the folder's path now
        self._lock = threading.Lock()
        self._open = True  # its descriptors: closed once, never written to after
        try:
            self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        except OSError:
            os.close(fd)
            raise
        try:
            if self._add(os.fspath(folder)) is None:
                raise _error("inotify_add_watch", os.fspath(folder))
            self._add_below(os.fspath(folder), report=False)
        except BaseException:
            self._close()
            raise
        self._thread = threading.Thread(target=self._run, name="jitrender-inotify", daemon=True)
        self._thread.start()

    # -- the interface of watchdog's observer that jitrender.outputs uses ----------------------

    def stop(self) -> None:
        """The thread stops after the events it has read; nothing is told after it ends."""
        with self._lock, contextlib.suppress(OSError):
            if self._open:
                os.write(self._wake_w, b"x")

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------------------

    def _add(self, path: str) -> int | None:
        """Watch folder ``path``; its descriptor, or None where it is gone or not a folder."""
        wd = int(_lib().inotify_add_watch(self._fd, os.fsencode(path), _MASK))
        if wd < 0:
            return None
        self._paths[wd] = path  # a folder renamed within the tree keeps its descriptor
        return wd

    def _add_below(self, top: str, *, report: bool) -> None:
        """Watch the folders below ``top``; with ``report``, tell its files as renamed (a
        folder renamed into the tree brings them finished)."""
        for root, dirs, files in os.walk(top):
            for name in dirs:
                self._add(os.path.join(root, name))
            if report:
                for name in files:
                    self._tell(self._renamed, os.path.join(root, name))

    def _tell(self, callback: Callable[[Path], None], path: str) -> None:
        with contextlib.suppress(Exception):  # the uploader's own failures: its own to report
            callback(Path(path))

    def _run(self) -> None:
        poller = select.poll()  # (not select(): a busy run's descriptors pass 1,024)
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                if self._wake_r in ready:
                    return
                try:
                    data = os.read(self._fd, 65536)
                except (BlockingIOError, InterruptedError):
                    continue
                self._handle(data)
        except OSError:
            return
        finally:
            self._close()

    def _handle(self, data: bytes) -> None:
        offset, end = 0, len(data)
        while offset < end:
            wd, mask, _cookie, size = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + size].rstrip(b"\0")
            offset += _EVENT.size + size
            if mask & IN_IGNORED:  # its folder is gone (or no longer watched)
                self._paths.pop(wd, None)
                continue
            folder = self._paths.get(wd)
            if folder is None or not raw:  # an overflow, or an event of the folder itself
                continue
            path = os.path.join(folder, os.fsdecode(raw))
            if mask & IN_ISDIR:
                if mask & (IN_CREATE | IN_MOVED_TO) and self._add(path) is not None:
                    self._add_below(path, report=bool(mask & IN_MOVED_TO))
            elif mask & IN_MOVED_TO:
                self._tell(self._renamed, path)
            elif mask & IN_CLOSE_WRITE:
                self._tell(self._closed, path)

    def _close(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
            for fd in (self._fd, self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
