"""Outputs: which workspace files are outputs, and uploading each one the moment it is final.

A file below ``outputs/`` is *final* (and only then uploaded) when it is renamed into place
(the way a renderer says "this frame is done") or when the stage that wrote it exits 0. A
file closed while its writer still runs is never final, however long ago it was closed: a
checkpointing renderer rewrites ``beauty.0001.exr`` several times and a log is closed after
every line, so only the stage's exit tells the last version from an earlier one. When a stage
fails or is stopped, the files it wrote in place are deleted (a retry rewrites them); files it
renamed into place were final and stay uploaded.

Uploads are create-if-absent, tagging each object with the job's hash. An object that already
exists is never overwritten (unless asked, then generation-matched): the same bytes count as
uploaded, an object left by an earlier attempt of the *same* job is kept (renders are not
bit-exact, the first one wins), anything else is a conflict that the report names.

Every final file is attributed to frames: to the frame its name carries (patterns with a
frame token) or else to the frames of the stage call that wrote it; :meth:`Uploader.check_frame`
says whether a frame produced what ``outputs.files`` asks for.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jitrender.errors import ConfigError, JitrenderError, NoSuchBucketError, TransientError
from jitrender.progress import Progress
from jitrender.report import Report
from jitrender.sequences import (
    FrameToken,
    expand_frame,
    frame_tokens,
    has_frame_token,
    has_udim_token,
    tile_regex,
    udim_token_at,
)
from jitrender.storage import (
    JOB_METADATA_KEY,
    ObjectInfo,
    PutResult,
    RetryPolicy,
    Store,
    crc32c_of_file,
    with_retries,
)

_GLOB = re.compile(r"[*?]")  # outputs.files' globs (UDIM/UVTILE tile tokens are ones too)
_TEMP_NAME = re.compile(r"(^\.|\.tmp$|\.part$|~$|\.jitrender-part$)")


class OutputPatterns:
    """Patterns below ``outputs/``: ``*``, ``?`` and ``**/`` globs, and frame tokens
    (``####``, ``%04d``, ``{frame:04d}``…) that make a pattern a per-frame expected output."""

    def __init__(self, patterns: Iterable[str]) -> None:
        # "./r.####.exr" and "sub//r.####.exr" are the names users mean (matched as written,
        # they matched nothing: no output was ever uploaded); ".." is refused at load.
        self.patterns = ["/".join(s for s in p.split("/") if s not in ("", ".")) for p in patterns]
        self._regexes = [(*_to_regex(p), p) for p in self.patterns]
        self.per_frame = [p for p in self.patterns if has_frame_token(p)]
        # Those whose frame's file has one name (no glob): the file each frame must write. A
        # frame-token pattern with a glob (``aov_*.####.exr``) asks for at least one file.
        self._exact = [p for p in self.per_frame if not _is_glob(p)]
        self._globs = [(rx, tokens, p) for rx, tokens, p in self._regexes if tokens and _is_glob(p)]

    def matches(self, relpath: str) -> bool:
        return not _is_temp(relpath) and any(
            (_frame_in(rx, tokens, relpath) if tokens else rx.match(relpath)) is not None
            for rx, tokens, _ in self._regexes
        )

    def expected_for(self, frame: int) -> list[str]:
        """The output files ``frame`` must produce: its name under each frame-token pattern
        without a glob (a glob's files are checked by :meth:`glob_missing`)."""
        return [expand_frame(p, frame) for p in self._exact]

    def glob_missing(self, frame: int, relpaths: Iterable[str]) -> str | None:
        """The first frame-token pattern with a glob that none of ``relpaths`` matches for
        ``frame`` (each such pattern asks for at least one file), or None."""
        written = list(relpaths)
        for rx, tokens, pattern in self._globs:
            if not any(_frame_in(rx, tokens, rel) == frame for rel in written):
                return pattern
        return None

    def written_otherwise(self, frame: int, outputs_dir: Path) -> str | None:
        """A file below ``outputs_dir`` that a frame-token pattern would take for ``frame`` but
        for its padding (``r.1.exr`` for ``r.####.exr``), for the error that says what is
        missing; None where there is none."""
        exact = [(rx, tokens) for rx, tokens, p in self._regexes if tokens and not _is_glob(p)]
        if not exact:
            return None
        for path in outputs_dir.rglob("*"):
            rel = path.relative_to(outputs_dir).as_posix()
            for rx, tokens in exact:
                match = rx.match(rel)
                loose = match is not None and int(match["frame0"]) == frame
                if loose and _frame_in(rx, tokens, rel) is None:  # (an exact name is no miss)
                    return rel
        return None

    def frame_of(self, relpath: str) -> int | None:
        for rx, tokens, _pattern in self._regexes:
            frame = _frame_in(rx, tokens, relpath) if tokens else None
            if frame is not None:
                return frame
        return None


def _is_glob(pattern: str) -> bool:
    return _GLOB.search(pattern) is not None or has_udim_token(pattern)


def _frame_in(rx: re.Pattern[str], tokens: list[FrameToken], relpath: str) -> int | None:
    """The frame ``relpath`` is an output of under a frame-token pattern (its regex and
    tokens): every token holds the same frame, written exactly as :func:`expand_frame` writes
    it (``r.####.exr`` is ``r.0001.exr`` for frame 1, never ``r.1.exr`` nor ``r.00001.exr``).
    None for no match."""
    match = rx.match(relpath)
    if match is None:
        return None
    written = [match[f"frame{i}"] for i in range(len(tokens))]
    frame = int(written[0])
    if all(token.format(frame) == text for token, text in zip(tokens, written, strict=True)):
        return frame
    return None


def _is_temp(relpath: str) -> bool:
    return any(_TEMP_NAME.search(part) for part in relpath.split("/"))


def _to_regex(pattern: str) -> tuple[re.Pattern[str], list[FrameToken]]:
    """The regex of a pattern's globs (``*``, ``?``, ``**/``) with a group ``frame<i>`` for each
    of its frame tokens, and the tokens (for :func:`_frame_in`'s exact check)."""
    tokens = frame_tokens(pattern)
    starts = {token.start: (i, token) for i, token in enumerate(tokens)}
    out = ""
    index = 0
    while index < len(pattern):
        if index in starts:
            i, token = starts[index]
            out += rf"(?P<frame{i}>-?\d+)"
            index = token.end
            continue
        tile = udim_token_at(pattern, index)
        if tile is not None:
            out += tile_regex(tile.group(0))
            index = tile.end()
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
    return re.compile(out + r"\Z"), tokens


UploadOutcome = Literal["created", "identical", "kept_previous", "conflict", "overwritten", "error"]
# Outcomes after which the output is in the bucket as this run made it.
UPLOADED = ("created", "identical", "kept_previous", "overwritten")


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
    """Uploads final files below ``outputs/`` to ``<outputs_url>/<relpath>``.

    Thread-safe. ``on_uploaded`` is called (from an upload thread) after each file is settled.
    Callers bracket every stage call with :meth:`stage_started` and :meth:`stage_succeeded` or
    :meth:`stage_failed`.
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
        overwrite_frames: set[int] | None = None,
        retry: RetryPolicy | None = None,
        on_uploaded: Callable[[UploadRecord], None] | None = None,
        workers: int = 4,
        checkpoints_url: str | None = None,
    ) -> None:
        self.outputs_dir = outputs_dir
        self._real_dir: Path | None = None  # outputs_dir with its links resolved (once)
        self.outputs_url = outputs_url.rstrip("/")
        self.store = store
        self.patterns = patterns
        self.job_hash = job_hash
        self.overwrite = overwrite
        self.overwrite_frames = overwrite_frames or set()  # replace these frames' outputs
        self.retry = retry or RetryPolicy()
        self.on_uploaded = on_uploaded
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="upload")
        self._lock = threading.Lock()
        self._submitted: dict[str, tuple[int, int]] = {}  # relpath -> (size, mtime_ns)
        self._futures: list[Future[UploadRecord]] = []
        self._future_of: dict[str, Future[UploadRecord]] = {}  # relpath -> its upload
        self.records: dict[str, UploadRecord] = {}
        self.changed_after_upload: list[str] = []
        self.upload_seconds = 0.0
        self._observer: Any = None
        self._watching = True  # until stop_watching: the watcher's reports are taken
        self._frames: tuple[int, ...] = ()  # the running stage call's frames
        self._running = False  # between stage_started and the stage's end
        self._called: set[int] = set()  # the frames of every stage call so far
        # The run's frames (set by the run): between stage calls, a file of one of them is
        # its (a split frame's assembled image is submitted outside any call).
        self.run_frames: set[int] = set()
        # Frame-token files of frames no stage call of this run was for: never uploaded (the
        # task that owns the frame renders it; a stray copy would win its create-if-absent).
        self.outside_frames: list[str] = []
        # A frame's files all come from one attempt: files a failed call made final are
        # replaced (once) by the next call's version of them, not kept beside its other files.
        self._call_files: set[str] = set()  # what the running call made final
        self._failed_final: set[str] = set()  # made final by a call that then failed
        self._replace: set[str] = set()  # the next upload of these replaces the object
        # A renamed file written again in place: is the bucket's copy still what is there?
        self._uploaded_as: dict[str, tuple[int, int, int, int]] = {}  # relpath -> identity
        self._rechecks: list[Future[None]] = []
        self._stage = ""  # the running stage call's stage
        self._produced: dict[int, set[str]] = {}  # frame -> its final outputs
        self._stage_outputs: dict[tuple[str, int], set[str]] = {}  # (stage, frame) -> outputs
        self._stage_finished: set[tuple[str, int]] = set()
        # Called (stage, frame, its outputs) once a stage has finished a frame with outputs.
        self.on_stage_frame: Callable[[str, int, list[str]], None] | None = None
        self._fences: dict[str, threading.Event] = {}
        self._fence_count = 0
        # Files closed while their writer runs go here, each pass replacing the last (opt-in).
        self.checkpoints_url = checkpoints_url.rstrip("/") if checkpoints_url else None
        self._checkpointing: set[str] = set()
        self._checkpoint_again: set[str] = set()

    # -- watching ------------------------------------------------------------------------

    def start(self, watch: OutputsWatch | None = None) -> None:
        """Start watching ``outputs/``: through ``watch`` (started ahead, on the same folder)
        where it is running, else with a watcher of its own."""
        if watch is not None:
            observer = watch.attach(self)
            if observer is not None:
                self._observer = observer
                return
        self.outputs_dir.mkdir(parents=True, exist_ok=True)
        self._observer = _observe(self.outputs_dir, self)

    def stop_watching(self) -> None:
        """Stop watching: nothing the watcher reports reaches the uploader once this returns;
        its threads wind down in the background (joining them: 1-13 ms of a run's end)."""
        with self._lock:
            self._watching = False
            observer, self._observer = self._observer, None
        if observer is not None:
            stopper = threading.Thread(target=_stop_observer, args=(observer,), daemon=True)
            stopper.start()

    def stage_started(self, frames: tuple[int, ...], stage: str = "") -> None:
        """A call of ``stage`` for ``frames`` (in render order) starts: what it makes final is
        theirs."""
        with self._lock:
            self._frames, self._stage = tuple(frames), stage
            self._called.update(frames)
            self._running = True
            self._call_files = set()

    def stage_succeeded(self) -> None:
        """The writer exited 0: everything it wrote is final; submit it all. The stage has
        finished each of its frames."""
        self._fence()  # its last closes are told (and rechecked) before the sweep
        self._wait_rechecks()
        self.sweep()
        with self._lock:
            stage, frames = self._stage, self._frames
            self._running = False
        self._finish_stage_frames([(stage, f) for f in frames])

    def _finish_stage_frames(self, pairs: list[tuple[str, int]]) -> None:
        with self._lock:
            new = [p for p in pairs if p not in self._stage_finished and p in self._stage_outputs]
            self._stage_finished.update(new)
        if self.on_stage_frame is not None:
            for stage, frame in new:
                self.on_stage_frame(stage, frame, self.stage_relpaths(stage, frame))

    def stage_was_finished(self, stage: str, frame: int) -> bool:
        """Whether ``stage`` finished ``frame`` (see :meth:`stage_started`)."""
        with self._lock:
            return (stage, frame) in self._stage_finished

    def stage_relpaths(self, stage: str, frame: int) -> list[str]:
        """The final outputs ``stage`` made for ``frame``."""
        with self._lock:
            return sorted(self._stage_outputs.get((stage, frame), ()))

    def adopt(self, relpath: str, info: ObjectInfo, stage: str, frame: int, source: Path) -> None:
        """``source`` (about to be renamed to ``outputs/<relpath>``) holds the bucket object
        ``info``, an earlier run's output of ``stage`` for ``frame``: it counts as final and
        uploaded."""
        st = source.stat()
        with self._lock:
            self._submitted[relpath] = (st.st_size, st.st_mtime_ns)
            self._produced.setdefault(frame, set()).add(relpath)
            self._stage_outputs.setdefault((stage, frame), set()).add(relpath)
            self._stage_finished.add((stage, frame))
            record = self.records[relpath] = UploadRecord(
                relpath, info.url, "kept_previous", info.size, info.crc32c
            )
        if self.on_uploaded is not None:
            self.on_uploaded(record)

    def stage_failed(self) -> None:
        """The writer failed or was killed: files it wrote in place may be partial or an
        early pass. Delete them so that nothing can ever upload them; a retry rewrites them.
        Files renamed into place before the failure were final and are kept."""
        self._fence()  # rename events still in the watcher's queue are handled first
        self._wait_rechecks()
        with self._lock:
            self._running = False
            self._failed_final |= self._call_files
        if not self.outputs_dir.is_dir():
            return
        for path in sorted(self.outputs_dir.rglob("*")):
            relpath = path.relative_to(self.outputs_dir).as_posix()
            if not path.is_file() or not self.patterns.matches(relpath):
                continue
            with self._lock:
                final = relpath in self._submitted
            if not final:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _fence(self, timeout: float = 3.0) -> None:
        """Wait until the watcher has delivered every event that happened before now: a
        rename of our own is queued behind them (inotify keeps order)."""
        if self._observer is None or not self.outputs_dir.is_dir():
            return
        with self._lock:
            self._fence_count += 1
            name = f".jitrender-fence.{self._fence_count}"
            seen = self._fences[name + ".done"] = threading.Event()
        first = self.outputs_dir / name
        try:
            first.write_bytes(b"")
            os.replace(first, self.outputs_dir / (name + ".done"))
            seen.wait(timeout)
        finally:
            with contextlib.suppress(FileNotFoundError):
                (self.outputs_dir / (name + ".done")).unlink()
            with self._lock:
                self._fences.pop(name + ".done", None)

    def _wait_rechecks(self) -> None:
        with self._lock:
            rechecks, self._rechecks = self._rechecks, []
        for future in rechecks:
            with contextlib.suppress(Exception):
                future.result()

    def _recheck(self, path: Path, relpath: str, prior: Future[UploadRecord] | None) -> None:
        """``relpath``, renamed into place and uploaded, was then written in place: unless the
        bucket's object is what the file holds now, void it (it may be a snapshot of the
        rewrite half done); the file then counts as written in place."""
        if prior is not None:
            with contextlib.suppress(Exception):
                prior.result()
        with self._lock:
            record = self.records.get(relpath)
            seen = self._uploaded_as.get(relpath)
        if record is None or record.outcome not in ("created", "overwritten"):
            return
        if seen is not None and _identity(path) == seen:
            return
        try:
            self._void(path, relpath, record.url)
        except (JitrenderError, OSError) as exc:  # the object stays: the frame must not pass
            message = exc.message if isinstance(exc, JitrenderError) else str(exc)
            failed = UploadRecord(relpath, record.url, "error", record.size, error=message)
            with self._lock:
                self.records[relpath] = failed
            if self.on_uploaded is not None:
                self.on_uploaded(failed)
            return
        with self._lock:
            if self.records.get(relpath) is record:
                del self.records[relpath]

    def closed(self, path: Path) -> None:
        """A writer closed a file it wrote in place: not final (see the module docstring);
        with ``checkpoints_url`` a copy of this pass goes there, one copy in flight per file.
        A file renamed into place by the running call and then written again is rechecked."""
        try:
            relpath = path.relative_to(self.outputs_dir).as_posix()
        except ValueError:
            return
        if not self.patterns.matches(relpath):
            return
        with self._lock:
            if self._running and self._watching and relpath in self._call_files:
                prior = self._future_of.get(relpath)
                with contextlib.suppress(RuntimeError):  # (the pool is shut down)
                    self._rechecks.append(self._pool.submit(self._recheck, path, relpath, prior))
        if self.checkpoints_url is None:
            return
        with self._lock:
            if relpath in self._submitted or not self._watching:
                return
            if relpath in self._checkpointing:
                self._checkpoint_again.add(relpath)
                return
            self._checkpointing.add(relpath)
            self._pool.submit(self._checkpoint, path, relpath)

    def _checkpoint(self, path: Path, relpath: str) -> None:
        assert self.checkpoints_url is not None
        url = f"{self.checkpoints_url}/{relpath}"
        # A copy first: the renderer may start its next pass while this one uploads.
        snapshot = self.outputs_dir.parent / f".checkpoint.{threading.get_ident()}"
        while True:
            try:
                shutil.copyfile(path, snapshot)
                with_retries(
                    lambda: self.store.put_if_absent(
                        snapshot, url, {JOB_METADATA_KEY: self.job_hash}, overwrite=True
                    ),
                    url,
                    self.retry,
                )
            except (JitrenderError, OSError):
                pass  # a preview: the final file is what counts
            finally:
                with contextlib.suppress(OSError):
                    snapshot.unlink()
            with self._lock:
                if relpath not in self._checkpoint_again:
                    self._checkpointing.discard(relpath)
                    return
                self._checkpoint_again.discard(relpath)

    def renamed(self, path: Path) -> None:
        """A file was renamed into ``outputs/``: it is final."""
        fence = self._fences.get(path.name)
        if fence is not None:
            fence.set()
            return
        self.submit(path, watched=True)

    def sweep(self) -> None:
        """Submit every output on disk not submitted yet. Call only when no writer is running
        (after :meth:`stage_succeeded` or :meth:`stage_failed`)."""
        if not self.outputs_dir.is_dir():
            return
        for path in sorted(self.outputs_dir.rglob("*")):
            if path.is_file():
                self.submit(path)

    # -- which frame made what -------------------------------------------------------------

    def frame_relpaths(self, frame: int) -> list[str]:
        """The final outputs of ``frame`` so far (its own frame-token files, or files its
        stage calls made final)."""
        with self._lock:
            return sorted(self._produced.get(frame, ()))

    def check_frame(self, frame: int) -> str | None:
        """Why ``frame`` has not produced what ``outputs.files`` asks for, or None when it
        has: every frame-token pattern's file, and at least one output."""
        missing = [
            rel
            for rel in self.patterns.expected_for(frame)
            if not (self.outputs_dir / rel).is_file()
        ]
        if missing:
            near = self.patterns.written_otherwise(frame, self.outputs_dir)
            hint = f" (it wrote {near}: the frame number padded otherwise)" if near else ""
            return f"did not write outputs/{missing[0]}{hint}"
        produced = self.frame_relpaths(frame)
        glob = self.patterns.glob_missing(frame, produced)
        if glob is not None:
            return f"wrote no output matching {glob} for frame {frame}"
        if not produced:
            wanted = ", ".join(self.patterns.patterns)
            return f"wrote no output matching outputs.files ({wanted})"
        return None

    # -- uploading -----------------------------------------------------------------------

    def submit(self, path: Path, *, watched: bool = False) -> None:
        """Upload ``path`` (below ``outputs/``) unless it was submitted before; a ``watched``
        report (the watcher's) is dropped once watching stopped."""
        try:
            relpath = path.relative_to(self.outputs_dir).as_posix()
            st = path.lstat()
        except (ValueError, FileNotFoundError):
            return
        state = (st.st_size, st.st_mtime_ns)
        with self._lock:
            if self._submitted.get(relpath) == state:
                return  # as it was submitted (the sweep after the stage's own, the watcher's)
        if not self.patterns.matches(relpath):
            return
        try:
            if self._real_dir is None:  # the folder exists once a file is in it
                self._real_dir = self.outputs_dir.resolve()
            inside = path.resolve().is_relative_to(self._real_dir)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode) or not inside:
            # A link could point at any file on the node: refuse it rather than upload that.
            self._refuse(
                relpath,
                "is a symlink (or below one); only files written in outputs/ "
                "are uploaded, never what a link points at",
            )
            return
        with self._lock:
            if watched and not self._watching:
                return  # the pool may be shut down already
            previous = self._submitted.get(relpath)
            if previous == state:
                return
            frame = self.patterns.frame_of(relpath)
            ours = self._frames if self._running else self._called | self.run_frames
            if frame is not None and frame not in ours:
                # Not this call's frame: its own call (if this run has one) takes the file.
                if not self._running and relpath not in self.outside_frames:
                    self.outside_frames.append(relpath)
                return
            again = self._running and relpath in self._failed_final
            if previous is not None and not again:
                self.changed_after_upload.append(relpath)
                return
            prior = self._future_of.get(relpath) if again else None
            if again:  # a failed attempt's file, made again: this version replaces it
                self._failed_final.discard(relpath)
                self._replace.add(relpath)
            self._submitted[relpath] = state
            self._call_files.add(relpath)
            owners = (frame,) if frame is not None else self._frames
            for owner in owners:
                self._produced.setdefault(owner, set()).add(relpath)
                self._stage_outputs.setdefault((self._stage, owner), set()).add(relpath)
            # A renderer that has moved on to a later frame of its call has finished the
            # earlier ones (their files are final): each frame lands as it is done.
            moved_on: list[tuple[str, int]] = []
            if frame is not None and frame in self._frames:
                before = self._frames[: self._frames.index(frame)]
                moved_on = [(self._stage, f) for f in before]
            future = self._pool.submit(self._upload, path, relpath, prior)
            self._futures.append(future)
            self._future_of[relpath] = future
        if moved_on:
            self._finish_stage_frames(moved_on)

    def _refuse(self, relpath: str, why: str) -> None:
        url = f"{self.outputs_url}/{relpath}"
        record = UploadRecord(relpath, url, "error", 0, error=f"{relpath}: {why}")
        with self._lock:
            if relpath in self._submitted:
                return
            self._submitted[relpath] = (0, 0)
            self.records[relpath] = record
            frame = self.patterns.frame_of(relpath)  # the frame's output, failed: say why
            for owner in (frame,) if frame is not None else self._frames:
                self._produced.setdefault(owner, set()).add(relpath)
        if self.on_uploaded is not None:
            self.on_uploaded(record)

    def _upload(
        self, path: Path, relpath: str, prior: Future[UploadRecord] | None = None
    ) -> UploadRecord:
        if prior is not None:  # the upload this one replaces settles first (it ran earlier)
            with contextlib.suppress(Exception):
                prior.result()
        url = f"{self.outputs_url}/{relpath}"
        started = time.monotonic()
        metadata = {JOB_METADATA_KEY: self.job_hash}
        frame = self.patterns.frame_of(relpath)
        if frame is not None:
            metadata["jitrender-frame"] = str(frame)
        with self._lock:
            submitted = self._submitted.get(relpath)
        before = _identity(path)
        if before is None:
            self._forget(relpath)
            return UploadRecord(relpath, url, "error", 0, error="deleted before its upload")
        size = before[0]
        if before is not None and before[:2] != submitted:
            # Written again in place since it was renamed into place: no longer the final
            # file the rename said it was, but one written in place (final at the stage's end).
            self._void(path, relpath, None)
            return UploadRecord(relpath, url, "error", size, error="changed before its upload")
        try:
            with self._lock:
                again = relpath in self._replace
                self._replace.discard(relpath)
            replace = self.overwrite or frame in self.overwrite_frames or again
            result = with_retries(
                lambda: self._put(path, url, metadata, replace),
                url,
                self.retry,
            )
            outcome: UploadOutcome = result.outcome
            info: ObjectInfo | None = result.info
            after = _identity(path)
            same_file = after is not None and before is not None and after[3] == before[3]
            rewritten = same_file and after != before
            wrote = outcome in ("created", "overwritten")
            if wrote and (rewritten or (info is not None and info.size != size)):
                # Rewritten in place while it was read (renamed into place, then truncated
                # or written again): the object may be part of one version, part of another.
                self._void(path, relpath, url)
                return UploadRecord(relpath, url, "error", size, error="changed while uploading")
            if wrote and before is not None:
                with self._lock:
                    self._uploaded_as[relpath] = before
            ours = info is not None and info.metadata.get(JOB_METADATA_KEY) == self.job_hash
            if outcome == "conflict" and ours:
                outcome = "kept_previous"
                assert info is not None
                self._keep_stored(path, relpath, info)
            record = UploadRecord(relpath, url, outcome, size, info.crc32c if info else None)
        except (JitrenderError, OSError) as exc:
            if _identity(path) is None:  # the writer deleted it (or its failed stage did)
                self._forget(relpath)
                return UploadRecord(relpath, url, "error", size, error="deleted while uploading")
            message = exc.message if isinstance(exc, JitrenderError) else str(exc)
            transient = isinstance(exc, TransientError)
            record = UploadRecord(relpath, url, "error", size, error=message, transient=transient)
        with self._lock:
            self.records[relpath] = record
            self.upload_seconds += time.monotonic() - started
        if self.on_uploaded is not None:
            self.on_uploaded(record)
        return record

    def _forget(self, relpath: str) -> None:
        """A file made final was deleted before it could be uploaded: it is no output (a
        frame that needs it says so: :meth:`check_frame`)."""
        with self._lock:
            self._submitted.pop(relpath, None)
            self._call_files.discard(relpath)
            for produced in (*self._produced.values(), *self._stage_outputs.values()):
                produced.discard(relpath)

    def _void(self, path: Path, relpath: str, url: str | None) -> None:
        """The object just made at ``url`` (if any) is torn: remove it, and let the file count
        as one written in place (final when its stage ends, deleted if the stage fails)."""
        if url is not None:
            with_retries(lambda: self.store.delete(url), url, self.retry)
        with self._lock:
            self._submitted.pop(relpath, None)
            running = self._running and self._watching
        if not running:  # no stage end will sweep it: the writer is done, upload it now
            with contextlib.suppress(RuntimeError):  # (the pool is shut down)
                self.submit(path)

    def _keep_stored(self, path: Path, relpath: str, info: ObjectInfo) -> None:
        """An earlier attempt's object stays at the URL: make the local file that object, so
        later stages derive their outputs from what the bucket holds (renders are not
        bit-exact)."""
        temp = path.with_name(f".{path.name}.stored.part")
        with open(temp, "wb") as sink:
            with_retries(lambda: self.store.download(info, sink), info.url, self.retry)
        st = temp.stat()
        with self._lock:  # the rename's watch event must find it already submitted
            self._submitted[relpath] = (st.st_size, st.st_mtime_ns)
        os.replace(temp, path)

    def _put(self, path: Path, url: str, metadata: dict[str, str], replace: bool) -> PutResult:
        """Create-if-absent; with ``replace``, an object with the same bytes is left alone
        (no new generation) and any other is replaced generation-matched."""
        if replace:
            existing = self.store.stat(url)
            known = existing is not None and existing.crc32c is not None
            if known and existing is not None and existing.crc32c == crc32c_of_file(path):
                return PutResult("identical", existing)
        return self.store.put_if_absent(path, url, metadata, overwrite=replace)

    def settle(self, frames: Iterable[int], stop: threading.Event | None = None) -> None:
        """Wait until every output ``frames`` have made final so far is settled in the bucket
        (or ``stop`` is set): a file the bucket already held from an earlier attempt has then
        become that object locally (see :meth:`_keep_stored`), so a stage started after this
        reads what is stored."""
        with self._lock:
            rels = {rel for frame in frames for rel in self._produced.get(frame, ())}
            pending = [self._future_of[rel] for rel in rels if rel in self._future_of]
        for future in pending:
            while not future.done() and not (stop is not None and stop.is_set()):
                with contextlib.suppress(TimeoutError, CancelledError):
                    future.exception(timeout=0.1)  # its outcome is the uploader's to report

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


class OutputsWatch:
    """The watcher of an ``outputs/`` folder, started ahead of its :class:`Uploader` (by
    :meth:`start_now` in a thread, while the run waits on storage: its imports and its three
    threads then cost the run nothing); :meth:`Uploader.start` takes it over. What happens in
    the folder before then is told to no one: nothing writes there before the uploader starts."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._target: Uploader | None = None
        self._observer: Any = None
        self._started = threading.Event()
        self._lock = threading.Lock()
        self._stopped = False

    def start_now(self) -> None:
        """Start watching (in the calling thread); failures are left for the uploader."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            observer = _observe(self.folder, self)
        except Exception:  # the uploader starts its own and says what is wrong
            return
        finally:
            self._started.set()
        with self._lock:
            self._observer = observer
            if not self._stopped:
                return
        self._stop_observer(observer)

    def attach(self, uploader: Uploader) -> Any:
        """Tell ``uploader`` of this folder's events from now on; the running observer (its
        :meth:`Uploader.stop_watching` stops it), or None when this watch did not start."""
        self._started.wait()
        with self._lock:
            self._target = uploader
            return None if self._stopped else self._observer

    def stop(self) -> None:
        """Stop the watcher unless an uploader took it over (which stops it)."""
        with self._lock:
            if self._target is not None or self._stopped:
                return
            self._stopped = True
            observer, self._observer = self._observer, None
        if observer is not None:
            self._stop_observer(observer)

    @staticmethod
    def _stop_observer(observer: Any) -> None:
        _stop_observer(observer)

    def closed(self, path: Path) -> None:
        if self._target is not None:
            self._target.closed(path)

    def renamed(self, path: Path) -> None:
        if self._target is not None:
            self._target.renamed(path)


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    """What changes when a file is written: size, mtime, ctime, inode (None when gone)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def _stop_observer(observer: Any) -> None:
    observer.stop()
    observer.join(timeout=5)


def _observe(folder: Path, target: Uploader | OutputsWatch) -> Any:
    """A started watch of ``folder`` (recursive) telling ``target``: Linux's inotify read by
    :mod:`jitrender.inotify`, else (another system, inotify's limits reached) a watchdog
    observer."""
    try:
        from jitrender.inotify import InotifyWatch

        return InotifyWatch(folder, target.closed, target.renamed)
    except (OSError, AttributeError):  # no inotify here, or none left: watchdog says why
        pass
    from watchdog.observers import Observer  # here: status and deps never watch

    observer = Observer()
    observer.schedule(_handler(target), str(folder), recursive=True)
    observer.daemon = True
    observer.start()
    return observer


def _handler(uploader: Uploader | OutputsWatch) -> Any:
    """The watchdog handler that tells ``uploader`` of closed and renamed files (defined
    here, with watchdog's import, when a run starts watching)."""
    from watchdog.events import (
        FileClosedEvent,
        FileMovedEvent,
        FileSystemEvent,
        FileSystemEventHandler,
    )

    class Handler(FileSystemEventHandler):
        def on_closed(self, event: FileSystemEvent) -> None:
            if isinstance(event, FileClosedEvent) and not event.is_directory:
                uploader.closed(Path(str(event.src_path)))

        def on_moved(self, event: FileSystemEvent) -> None:
            if isinstance(event, FileMovedEvent) and not event.is_directory:
                uploader.renamed(Path(str(event.dest_path)))

    return Handler()


# -- what the bucket says is done -------------------------------------------------------------

MARKER_OUTPUTS_KEY = "jitrender-outputs"  # marker metadata: JSON list of the frame's outputs
_MARKER_OUTPUTS_MAX = 6000  # GCS allows 8 KiB of metadata; longer lists stay in the body only


def marker_metadata(job_hash: str, relpaths: Iterable[str]) -> dict[str, str]:
    """A done marker's metadata: the job and, when short enough, the frame's outputs (so that
    a listing alone tells whether they are all still there)."""
    metadata = {JOB_METADATA_KEY: job_hash}
    listed = json.dumps(sorted(relpaths), separators=(",", ":"))
    if len(listed) <= _MARKER_OUTPUTS_MAX:
        metadata[MARKER_OUTPUTS_KEY] = listed
    return metadata


@dataclass(frozen=True)
class BucketFrames:
    """Frames of a job as one listing of its outputs prefix shows them."""

    done: list[int]  # marked, and every output the marker names is there
    stale: dict[int, ObjectInfo]  # marked, but an output is gone: render again (the marker)


def list_outputs(store: Store, outputs_url: str, retry: RetryPolicy) -> list[ObjectInfo]:
    """Everything below the job's ``outputs.to`` (markers included), with retries. A bucket
    that is not there is the job's setting to fix: ConfigError (78), naming ``outputs.to``."""
    try:
        return with_retries(lambda: store.list(outputs_url + "/"), outputs_url, retry)
    except NoSuchBucketError as exc:
        raise ConfigError(f"outputs.to: {exc.message}") from None


def frames_in_bucket(
    listing: Iterable[ObjectInfo],
    outputs_url: str,
    marker_prefix: str,
    patterns: OutputPatterns,
    frames: Iterable[int],
) -> BucketFrames:
    """Which of ``frames`` are done, from one listing of ``outputs_url`` (markers included).
    A marker counts only while the outputs it lists (its metadata, else the frame-token
    patterns' files) are all still in the listing: a deleted output means render again."""
    wanted = set(frames)
    base = outputs_url.rstrip("/") + "/"
    present: set[str] = set()
    markers: dict[int, ObjectInfo] = {}
    for info in listing:
        if info.url.startswith(marker_prefix):
            name = info.url[len(marker_prefix) :]
            if name.startswith("frame.") and name.endswith(".json"):
                with contextlib.suppress(ValueError):
                    frame = int(name[len("frame.") : -len(".json")])
                    if frame in wanted:
                        markers[frame] = info
        elif info.url.startswith(base):
            present.add(info.url[len(base) :])
    done: list[int] = []
    stale: dict[int, ObjectInfo] = {}
    for frame, marker in sorted(markers.items()):
        listed: list[str] = patterns.expected_for(frame)
        with contextlib.suppress(KeyError, ValueError, TypeError):
            listed = list(json.loads(marker.metadata[MARKER_OUTPUTS_KEY]))
        if all(rel in present for rel in listed):
            done.append(frame)
        else:
            stale[frame] = marker
    return BucketFrames(done, stale)


def outputs_of_other_jobs(
    listing: Iterable[ObjectInfo],
    outputs_url: str,
    patterns: OutputPatterns,
    frames: Iterable[int],
    job_hash: str,
    full_info: Callable[[ObjectInfo], ObjectInfo | None],
) -> list[str]:
    """Objects in the way of ``frames`` that another version of the job wrote: a frame-token
    output of one of ``frames``, or any object matching a pattern without a frame token,
    whose ``jitrender-job`` is not ``job_hash``. Objects no jitrender run wrote are left to the
    upload's own conflict check. ``full_info`` stats an object whose listing lacks metadata."""
    base = outputs_url.rstrip("/") + "/"
    token_paths = {rel for frame in frames for rel in patterns.expected_for(frame)}
    globs = OutputPatterns(p for p in patterns.patterns if not has_frame_token(p))
    found: list[str] = []
    for info in listing:
        if not info.url.startswith(base):
            continue
        rel = info.url[len(base) :]
        if rel.startswith("_jitrender/") or not (rel in token_paths or globs.matches(rel)):
            continue
        full: ObjectInfo | None = info if info.metadata else full_info(info)
        owner = full.metadata.get(JOB_METADATA_KEY) if full is not None else None
        if owner is not None and owner != job_hash:
            found.append(rel)
    return sorted(found)


def why_not_uploaded(
    frame: int, records: Iterable[UploadRecord], patterns: OutputPatterns, conflicts: list[str]
) -> str:
    """Why ``frame``, whose stages succeeded, is not done: a conflict in the bucket first,
    then an upload's own error (a refused symlink, a storage error)."""
    why = "outputs not uploaded"
    errors = [r for r in records if r.outcome == "error"]
    refused = [r for r in errors if patterns.frame_of(r.relpath) == frame]
    refused += [r for r in errors if patterns.frame_of(r.relpath) is None]  # every frame's
    if refused and refused[0].error:
        why = refused[0].error
    bad = [u for u in conflicts if patterns.frame_of(u) == frame]
    if bad:
        why = f"output exists in the bucket with other content: {bad[0]}"
    return why


def collect_outputs(uploader: Uploader, report: Report, progress: Progress) -> None:
    """The uploader's settled outputs into ``report`` (URLs and bytes uploaded, conflicts);
    warns about an output that changed after its upload."""
    for record in uploader.records.values():
        if record.outcome in UPLOADED:
            report.output_urls.append(record.url)
            report.output_bytes += record.size
        elif record.outcome == "conflict":
            report.conflicts.append(record.relpath)
    if uploader.outside_frames:
        progress.event(
            "warning",
            message=f"outputs/{uploader.outside_frames[0]} (and "
            f"{len(uploader.outside_frames) - 1} more) belong to frames this run did not "
            "render: not uploaded",
        )
    if uploader.changed_after_upload:
        changed = uploader.changed_after_upload[0]
        progress.event(
            "warning",
            message=f"outputs/{changed} changed after it was uploaded; write outputs once "
            "(or to a temp name, then rename)",
        )
