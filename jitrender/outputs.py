"""Outputs: which workspace files are outputs, and uploading each one the moment it is whole.

The uploader watches ``outputs/`` (watchdog) and decides when a file is whole: a file
*renamed* into place is whole at once (the safe way for a renderer to write); a file
*closed after writing* is whole if its writer is still alive a moment later (a killed writer
dies with it, and the kernel's close of its half-written file must never be uploaded) or when
the stage exits successfully. A failed stage's unsettled files are discarded, never uploaded.
Uploads are create-if-absent, tagging each object with the job's hash. An object that already
exists is never overwritten (unless asked): the same bytes count as uploaded, an object left
by an earlier attempt of the *same* job is kept (renders are not bit-exact, the first one
wins), anything else is a conflict that the report names.
"""

from __future__ import annotations

import contextlib
import re
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from watchdog.events import (
    FileClosedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from jitrender.errors import JitrenderError, TransientError
from jitrender.sequences import expand_frame, find_frame_token, has_frame_token
from jitrender.storage import JOB_METADATA_KEY, ObjectInfo, RetryPolicy, Store, with_retries

_TEMP_NAME = re.compile(r"(^\.|\.tmp$|\.part$|~$|\.jitrender-part$)")


class OutputPatterns:
    """Patterns below ``outputs/``: ``*``, ``?`` and ``**/`` globs, and frame tokens
    (``####``, ``%04d``, ``{frame:04d}``…) that make a pattern a per-frame expected output."""

    def __init__(self, patterns: Iterable[str]) -> None:
        self.patterns = [p.lstrip("/") for p in patterns]
        self._regexes = [(_to_regex(p), p) for p in self.patterns]
        self.per_frame = [p for p in self.patterns if has_frame_token(p)]

    def matches(self, relpath: str) -> bool:
        return not _is_temp(relpath) and any(rx.match(relpath) for rx, _ in self._regexes)

    def expected_for(self, frame: int) -> list[str]:
        """The output files ``frame`` must produce (from patterns with frame tokens)."""
        return [expand_frame(p, frame) for p in self.per_frame]

    def frame_of(self, relpath: str) -> int | None:
        for rx, _pattern in self._regexes:
            match = rx.match(relpath)
            if match is not None and "frame" in rx.groupindex:
                return int(match["frame"])
        return None


def _is_temp(relpath: str) -> bool:
    return any(_TEMP_NAME.search(part) for part in relpath.split("/"))


def _to_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    index = 0
    token = find_frame_token(pattern)
    frame_used = False
    while index < len(pattern):
        if token is not None and index == token.start:
            out += r"(?P<frame>-?\d+)" if not frame_used else r"-?\d+"
            frame_used = True
            index = token.end
            token = find_frame_token(pattern[index:])
            if token is not None:
                token = type(token)(token.start + index, token.end + index, token.padding)
            continue
        if pattern.startswith("**/", index):
            out += r"(?:.*/)?"
            index += 3
        elif pattern.startswith("**", index):
            out += r".*"
            index += 2
        elif pattern[index] == "*":
            out += r"[^/]*"
            index += 1
        elif pattern[index] == "?":
            out += r"[^/]"
            index += 1
        else:
            out += re.escape(pattern[index])
            index += 1
    return re.compile(out + r"\Z")


UploadOutcome = Literal["created", "identical", "kept_previous", "conflict", "overwritten", "error"]


@dataclass(frozen=True)
class UploadRecord:
    relpath: str
    url: str
    outcome: UploadOutcome
    size: int
    crc32c: str | None = None
    error: str | None = None
    transient: bool = False  # the error outlasted storage retries: the task should be retried


class Uploader:
    """Uploads finished files below ``outputs/`` to ``<outputs_url>/<relpath>``.

    Thread-safe. ``on_uploaded`` is called (from an upload thread) after each file is settled.
    """

    def __init__(
        self,
        outputs_dir: Path,
        outputs_url: str,
        store: Store,
        patterns: OutputPatterns,
        job_hash: str,
        *,
        overwrite: bool = False,
        retry: RetryPolicy | None = None,
        on_uploaded: Callable[[UploadRecord], None] | None = None,
        workers: int = 4,
    ) -> None:
        self.outputs_dir = outputs_dir
        self.outputs_url = outputs_url.rstrip("/")
        self.store = store
        self.patterns = patterns
        self.job_hash = job_hash
        self.overwrite = overwrite
        self.retry = retry or RetryPolicy()
        self.on_uploaded = on_uploaded
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self._submitted: dict[str, tuple[int, int]] = {}  # relpath -> (size, mtime_ns)
        self._futures: list[Future[UploadRecord]] = []
        self.records: dict[str, UploadRecord] = {}
        self.changed_after_upload: list[str] = []
        self.upload_seconds = 0.0
        self._observer: Any = None
        self._closed: dict[str, float] = {}  # relpath -> when its writer closed it
        self._writer: subprocess.Popen[bytes] | None = None  # the running stage's process
        self.settle_s = 0.3
        self._alive_at = 0.0  # last time the writer was seen alive
        self._ticker_stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- watching ------------------------------------------------------------------------

    def start(self) -> None:
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        handler = _Handler(self)
        observer = Observer()
        observer.schedule(handler, str(self.outputs_dir), recursive=True)
        observer.daemon = True
        observer.start()
        self._observer = observer
        self._ticker = threading.Thread(target=self._settle_loop, name="settle", daemon=True)
        self._ticker.start()

    def stop_watching(self) -> None:
        self._ticker_stop.set()
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=5)
            self._observer = None
        if self._ticker is not None:
            self._ticker.join(timeout=5)
            self._ticker = None

    def closed(self, path: Path) -> None:
        """A writer closed ``path``: upload once it has settled (see the module docstring)."""
        with contextlib.suppress(ValueError):
            relpath = path.relative_to(self.outputs_dir).as_posix()
            if self.patterns.matches(relpath):
                with self._lock:
                    self._closed[relpath] = time.monotonic()

    def _proven_whole(self) -> list[str]:
        """Closed files whose writer was seen alive ``settle_s`` after the close: a dying
        process finishes closing its files within milliseconds, so these were closed on
        purpose."""
        with self._lock:
            ready = [r for r, t in self._closed.items() if self._alive_at - t >= self.settle_s]
            for relpath in ready:
                del self._closed[relpath]
        return ready

    def _settle_loop(self) -> None:
        while not self._ticker_stop.wait(0.05):
            writer = self._writer
            if writer is not None and writer.poll() is None:
                self._alive_at = time.monotonic()
            for relpath in self._proven_whole():
                self.submit(self.outputs_dir / relpath)

    def stage_started(self, writer: subprocess.Popen[bytes]) -> None:
        """A stage process that writes outputs started: files it closes are whole once it is
        seen alive a moment later (see the module docstring)."""
        self._writer = writer

    def stage_succeeded(self) -> None:
        """The writer exited 0: everything it wrote is whole; submit it all."""
        self._writer = None
        with self._lock:
            self._closed.clear()
        self.sweep()

    def stage_failed(self) -> None:
        """The writer failed or was killed: files it closed but that did not settle may be
        partial. Delete them so that nothing can ever upload them; a retry rewrites them."""
        self._writer = None
        for relpath in self._proven_whole():
            self.submit(self.outputs_dir / relpath)
        with self._lock:
            doomed, self._closed = list(self._closed), {}
        for relpath in doomed:
            with contextlib.suppress(FileNotFoundError):
                (self.outputs_dir / relpath).unlink()

    def sweep(self) -> None:
        """Submit every output on disk not submitted yet (watch events can be missed). Call
        only when no writer is running or after :meth:`stage_failed`."""
        if not self.outputs_dir.is_dir():
            return
        for path in sorted(self.outputs_dir.rglob("*")):
            if path.is_file():
                self.submit(path)

    # -- uploading -----------------------------------------------------------------------

    def submit(self, path: Path) -> None:
        try:
            relpath = path.relative_to(self.outputs_dir).as_posix()
            st = path.lstat()
            inside = path.resolve().is_relative_to(self.outputs_dir.resolve())
        except (ValueError, FileNotFoundError):
            return
        if not self.patterns.matches(relpath):
            return
        if stat.S_ISLNK(st.st_mode) or not inside:
            # A link could point at any file on the node: refuse it rather than upload that.
            self._refuse(
                relpath,
                "is a symlink (or below one); only files written in outputs/ "
                "are uploaded, never what a link points at",
            )
            return
        state = (st.st_size, st.st_mtime_ns)
        with self._lock:
            previous = self._submitted.get(relpath)
            if previous == state:
                return
            if previous is not None:
                self.changed_after_upload.append(relpath)
                return
            self._submitted[relpath] = state
            self._futures.append(self._pool.submit(self._upload, path, relpath))

    def _refuse(self, relpath: str, why: str) -> None:
        url = f"{self.outputs_url}/{relpath}"
        record = UploadRecord(relpath, url, "error", 0, error=f"{relpath}: {why}")
        with self._lock:
            if relpath in self._submitted:
                return
            self._submitted[relpath] = (0, 0)
            self.records[relpath] = record
        if self.on_uploaded is not None:
            self.on_uploaded(record)

    def _upload(self, path: Path, relpath: str) -> UploadRecord:
        url = f"{self.outputs_url}/{relpath}"
        started = time.monotonic()
        metadata = {JOB_METADATA_KEY: self.job_hash}
        frame = self.patterns.frame_of(relpath)
        if frame is not None:
            metadata["jitrender-frame"] = str(frame)
        size = path.stat().st_size
        try:
            result = with_retries(
                lambda: self.store.put_if_absent(path, url, metadata, overwrite=self.overwrite),
                url,
                self.retry,
            )
            outcome: UploadOutcome = result.outcome
            info: ObjectInfo | None = result.info
            ours = info is not None and info.metadata.get(JOB_METADATA_KEY) == self.job_hash
            if outcome == "conflict" and ours:
                outcome = "kept_previous"
            record = UploadRecord(relpath, url, outcome, size, info.crc32c if info else None)
        except (JitrenderError, OSError) as exc:
            message = exc.message if isinstance(exc, JitrenderError) else str(exc)
            transient = isinstance(exc, TransientError)
            record = UploadRecord(relpath, url, "error", size, error=message, transient=transient)
        with self._lock:
            self.records[relpath] = record
            self.upload_seconds += time.monotonic() - started
        if self.on_uploaded is not None:
            self.on_uploaded(record)
        return record

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every submitted upload; False if some are still running at ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                pending = [f for f in self._futures if not f.done()]
            if not pending:
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                pending[0].result(timeout=remaining)

    def close(self, wait: bool = True) -> None:
        """Stop watching; with ``wait`` finish every submitted upload, else drop queued ones
        (a stopping run must not outlive its deadline for a hung upload)."""
        self.stop_watching()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def is_uploaded(self, relpath: str) -> bool:
        record = self.records.get(relpath)
        return record is not None and record.outcome in (
            "created",
            "identical",
            "kept_previous",
            "overwritten",
        )


class _Handler(FileSystemEventHandler):
    def __init__(self, uploader: Uploader) -> None:
        self.uploader = uploader

    def on_closed(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileClosedEvent) and not event.is_directory:
            self.uploader.closed(Path(str(event.src_path)))

    def on_moved(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileMovedEvent) and not event.is_directory:
            self.uploader.submit(Path(str(event.dest_path)))
