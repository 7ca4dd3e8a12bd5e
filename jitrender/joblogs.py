"""Logs live with the job: every stage's stdout/stderr is copied to the bucket while it runs.

A run's logs go to ``<outputs.to>/_jitrender/<job hash>/logs/<task>/<run>/<file>``: ``<task>``
is ``task-<index>`` on a farm (else ``frames-<first>-<last>``), ``<run>`` names this run
(UTC start time, host and pid, so farm retries of a task keep each other's logs), and ``<file>`` is
the workspace's log name, ``<stage>.<frames>.<attempt>.log`` (``<frames>`` is one frame or
``first-last``), plus ``agent.log`` and, at the end, ``report.json``. :class:`LogShipper`
copies changed logs every few seconds and once more when the run ends (preempted runs too,
within a bounded time); each copy replaces the last (generation-matched).
:func:`job_logs` and :func:`print_logs` read them back for ``jitrender logs``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path

from jitrender.errors import JitrenderError
from jitrender.progress import Progress
from jitrender.storage import ObjectInfo, RetryPolicy, Store, with_retries

SHIP_INTERVAL_S = 3.0


def logs_prefix(marker_prefix: str) -> str:
    """The folder URL of a job's logs, given its marker folder (``.../_jitrender/<hash>/``)."""
    return f"{marker_prefix}logs/"


def run_folder(task: dict[str, object] | None, frames: list[int]) -> str:
    """``<task>/<run>/`` for this run (see the module docstring)."""
    if task is not None and "index" in task:
        name = f"task-{task['index']}"
    elif frames:
        name = f"frames-{min(frames)}-{max(frames)}"
    else:
        name = "frames-none"
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40]
    # The pid keeps two runs on one host that start in the same second (a killed run and its
    # retry) from sharing, and so overwriting, one folder.
    return f"{name}/{stamp}-{host}-{os.getpid()}/"


@dataclass(eq=False)
class LogShipper:
    """Copies every file in ``logs_dir`` to ``prefix_url`` when it changed, every
    ``interval`` seconds from a background thread and at :meth:`close`. Storage failures are
    reported through ``warn`` and retried at the next tick: logs never fail a run. ``urls``
    lists the logs copied so far."""

    logs_dir: Path
    prefix_url: str
    store: Store
    retry: RetryPolicy
    _: KW_ONLY
    interval: float = SHIP_INTERVAL_S
    warn: Callable[[str], None] | None = None
    urls: list[str] = field(default_factory=list, init=False)
    _shipped: dict[str, tuple[int, int]] = field(default_factory=dict, init=False, repr=False)
    # One ship at a time (the ticker and close).
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _thread: threading.Thread | None = field(default=None, init=False, repr=False)

    def start(self) -> LogShipper:
        self._thread = threading.Thread(target=self._loop, name="log-shipper", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.ship()

    def ship(self) -> None:
        """Copy every log that changed since its last copy."""
        with self._lock:
            for path, state in self._changed():
                self._ship_log(path, state)

    def _changed(self) -> list[tuple[Path, tuple[int, int]]]:
        """The logs that changed since their last copy, with their (size, mtime)."""
        if not self.logs_dir.is_dir():
            return []
        changed = []
        for path in sorted(self.logs_dir.iterdir()):
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            state = (st.st_size, st.st_mtime_ns)
            if stat.S_ISREG(st.st_mode) and self._shipped.get(path.name) != state:
                changed.append((path, state))
        return changed

    def _ship_log(self, path: Path, state: tuple[int, int]) -> None:
        url = self.prefix_url + path.name
        try:
            self._put(path, url)
        except (JitrenderError, OSError) as exc:
            if self.warn is not None:
                self.warn(f"log {path.name} not copied to {url}: {exc}")
            return
        self._shipped[path.name] = state
        if url not in self.urls:
            self.urls.append(url)

    def _ship_final(self, extra: Mapping[str, bytes]) -> None:
        """The last copy: every changed log and each of ``extra`` (name -> bytes), all at
        once (each is a request of its own: one round trip in all, not one each)."""
        with self._lock:
            jobs: list[Callable[[], None]] = [
                functools.partial(self._ship_log, path, state) for path, state in self._changed()
            ]
            jobs += [functools.partial(self.ship_bytes, name, data) for name, data in extra.items()]
            # Daemon threads (not a pool's): a copy that hangs must not hold the process's exit.
            # (A local bucket gains too: each copy's fsync overlaps the others', 8 -> 2.5 ms.)
            lanes = [jobs[i::8] for i in range(min(len(jobs), 8))]
            threads = [
                threading.Thread(target=_run_all, args=(lane,), name="log-ship", daemon=True)
                for lane in lanes[1:]
            ]
            for thread in threads:
                thread.start()
            _run_all(lanes[0] if lanes else [])
            for thread in threads:
                thread.join()

    def ship_bytes(self, name: str, data: bytes) -> None:
        """Store a small file (the report) next to the logs; failures only warn."""
        url = self.prefix_url + name
        path = self.logs_dir / f".{name}.ship"
        try:
            path.write_bytes(data)
            self._put(path, url)
        except (JitrenderError, OSError) as exc:
            if self.warn is not None:
                self.warn(f"{name} not copied to {url}: {exc}")
        finally:
            with contextlib.suppress(OSError):
                path.unlink()

    def _put(self, path: Path, url: str) -> None:
        with_retries(lambda: self.store.put_if_absent(path, url, overwrite=True), url, self.retry)

    def close(self, timeout: float | None = None, extra: Mapping[str, bytes] | None = None) -> None:
        """Stop the ticker and copy what changed one last time, with ``extra`` (name -> bytes,
        e.g. the report: as :meth:`ship_bytes`) next to the logs, in at most ``timeout``
        seconds (a stopping run must keep its deadline; the copy goes on in the background)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None
        final = threading.Thread(
            target=self._ship_final,
            args=(dict(extra or {}),),
            name="log-shipper-final",
            daemon=True,
        )
        final.start()
        final.join(timeout=timeout)


def _run_all(jobs: list[Callable[[], None]]) -> None:
    for job in jobs:
        job()


def ship_run_logs(
    logs_dir: Path,
    marker_prefix: str,
    task: dict[str, object] | None,
    frames: list[int],
    store: Store,
    retry: RetryPolicy,
    progress: Progress,
) -> LogShipper:
    """A started :class:`LogShipper` for this run's ``logs_dir``: stage logs go to the bucket
    while they are written; says where as a ``phase`` event."""
    url = logs_prefix(marker_prefix) + run_folder(task, frames)
    shipper = LogShipper(
        logs_dir, url, store, retry, warn=lambda message: progress.event("warning", message=message)
    ).start()
    progress.event("phase", message=f"logs at {url}")
    return shipper


# -- reading them back --------------------------------------------------------------------


@dataclass(frozen=True)
class LogObject:
    """One stored log: its URL, the path below the logs folder, and its frames (None for a
    log of no particular frame, such as the agent's or the report)."""

    info: ObjectInfo
    name: str
    frames: tuple[int, int] | None


def _frames_of(filename: str) -> tuple[int, int] | None:
    """``render.12.0.log`` -> (12, 12); ``render.10-19.1.log`` -> (10, 19)."""
    parts = filename.split(".")
    if len(parts) < 4 or parts[-1] != "log":
        return None
    first, _, last = parts[-3].partition("-")
    try:
        return int(first), int(last or first)
    except ValueError:
        return None


def job_logs(listing: list[ObjectInfo], prefix: str, frame: int | None = None) -> list[LogObject]:
    """The logs in a listing of ``prefix`` (a job's logs folder), oldest run first; with
    ``frame``, only stage logs whose frames include it."""
    found = []
    for info in listing:
        if not info.url.startswith(prefix):
            continue
        name = info.url[len(prefix) :]
        frames = _frames_of(name.rsplit("/", 1)[-1])
        if frame is not None and (frames is None or not frames[0] <= frame <= frames[1]):
            continue
        found.append(LogObject(info, name, frames))
    return sorted(found, key=lambda log: log.name)


def follow_logs(
    store: Store,
    prefix: str,
    frame: int | None,
    retry: RetryPolicy,
    *,
    follow: bool = False,
    interval: float = 2.0,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[tuple[str, bytes]]:
    """``(name, new bytes)`` of each log below ``prefix``, in order; with ``follow``, keep
    listing every ``interval`` seconds and yield what each log gained, until ``stop()``."""
    printed: dict[str, int] = {}
    while True:
        listing: list[ObjectInfo] = with_retries(lambda: store.list(prefix), prefix, retry)
        for log in job_logs(listing, prefix, frame):
            seen = printed.get(log.name)
            if seen is not None and log.info.size == seen:
                continue
            data = _read(store, log.info.url, retry)
            start = seen if seen is not None and len(data) >= seen else 0  # shorter: replaced
            printed[log.name] = len(data)
            yield log.name, data[start:]
        if not follow or stop():
            return
        time.sleep(interval)


def _read(store: Store, url: str, retry: RetryPolicy) -> bytes:
    data: bytes = with_retries(lambda: store.read_bytes(url), url, retry)
    return data
