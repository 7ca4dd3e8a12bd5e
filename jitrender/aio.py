"""Small objects on one asyncio loop, their bytes moved by obstore's HTTP client.

Thousands of small textures are bound by per-request CPU, not by the link. Measured through
the cloud-link stand-in on these 2-core machines (2,000 x 64 KiB, 64 in flight): aiohttp on an
event loop took ~0.95 s of user CPU and 9-16 s of wall, obstore (Rust: HTTP, connection pool
and body in its own threads, the GIL released) ~0.55 s and 3-5 s. So objects below
``LARGE_OBJECT_BYTES`` whose store names a plain GET (:meth:`Store.http_object`) and a crc32c
are fetched here (:func:`jitrender.transport.route`); large objects keep the ranged thread
path. The cache's guarantees are the same on both paths: one download per object in the
process and across processes (a ``Cache.begin`` download, its lock tried without blocking), and
nothing visible until :func:`jitrender.transport.verify` passes. Anything unusual (a busy lock,
an HTTP error, a short body, a checksum mismatch) is handed to the thread path, which retries
and classifies errors as every other fetch does.

The loop only moves bytes. A small body is checked, written and published (an unnamed file
linked into place: :meth:`Download.install_bytes`) and linked into the workspace by one of
``WRITERS`` threads: creating a file is kernel time (0.1-0.5 ms each on these disks, where
ext4 scans past recently deleted inodes; rclone spends the same, on both cores), which on the
loop's thread held up every request behind it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import os
import queue
import threading
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from typing import Any

import google_crc32c

from jitrender.cache import Cache, CacheResult, Download
from jitrender.errors import Preempted
from jitrender.storage import ChecksumMismatch, ObjectInfo, RetryPolicy, Store, with_retries
from jitrender.transport import http_settings, verify
from jitrender.writes import write_all

# Requests in flight at once (obstore's connection pool keeps as many connections).
CONCURRENCY = 64
# Downloads indexed in one transaction: the index lags the files by at most this many.
RECORD_BATCH = 64
PIECE_BYTES = 1 << 20  # a body is written in pieces of this size (a small object: in one)
# Threads that write, install and link small objects (file creation is kernel time, spent
# in parallel with the GIL released), and the bytes that may wait for them: one per two
# usable CPUs, 1 to 4. On 2 CPUs, shared with obstore's threads, more writers only handed the
# GIL round (perf: a sixth of the samples in futex wake-ups and task switches); 2,000 x
# 64 KiB through the link stand-in, 10 interleaved rounds: 4 writers 1.77 s and 1.60 s of CPU,
# 1 writer 1.67 s and 1.46 s.
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
WRITERS = max(1, min(4, (_CPUS or 2) // 2))
WRITE_BACKLOG = 64 << 20


# Called once with a fetch's outcome (the result, or what the thread path would raise), on
# the loop's thread, a writer's or a pool thread; it must not raise.
Done = Callable[[CacheResult | BaseException], None]
_Request = tuple[ObjectInfo, Store, Done]
# A small body for a writer: the object, its store (for a fallback), its download, the body.
_Body = tuple[ObjectInfo, Store, Download, Done, bytes]


class _Fallback(Exception):
    """This object goes to the thread path (which retries and classifies errors)."""


class AsyncFetcher:
    """Fetches small objects into ``cache`` on a private event loop thread; ``fetch`` returns
    a ``concurrent.futures.Future`` of the :class:`CacheResult`, set (and its callbacks run)
    on the loop's thread, a writer's or a pool thread; ``submit`` calls back instead (no
    Future, and its Condition, per object)."""

    def __init__(
        self,
        cache: Cache,
        retry: RetryPolicy,
        pool: ThreadPoolExecutor,
        should_stop: Callable[[], bool] = lambda: False,
        concurrency: int = CONCURRENCY,
    ) -> None:
        self.cache = cache
        self.retry = retry
        self.pool = pool  # the thread path, for fallbacks
        self.should_stop = should_stop
        self.concurrency = concurrency
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stores: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}
        # Waiting requests, in the order they were asked for (frame order), drained by at most
        # ``concurrency`` worker coroutines: a request costs a tuple and a future, not a task.
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_lock = threading.Lock()
        self._wake_pending = False
        self._workers = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._unrecorded: list[ObjectInfo] = []
        self._recording: list[Future[None]] = []
        self._active = 0  # downloads begun and not ended
        self._writing = 0  # bytes handed to the writers, not written yet
        self._room_waiter: asyncio.Future[None] | None = None
        self._record_lock = threading.Lock()
        # Bodies for the writer threads: a plain queue, no Future or work item per object.
        self._bodies: queue.SimpleQueue[_Body | None] = queue.SimpleQueue()
        self._writers: list[threading.Thread] = []
        self._start_lock = threading.Lock()

    # -- the loop ------------------------------------------------------------------------

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._start_lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="jitrender-aio", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def _object_store(self, base: str, headers: dict[str, str]) -> Any:
        """The HTTP client for ``base`` with these (credential) headers: one per token, so a
        refreshed token gets a new client and the old one's connections close."""
        key = (base, tuple(sorted(headers.items())))
        store = self._stores.get(key)
        if store is None:
            from obstore.store import HTTPStore

            store = HTTPStore.from_url(
                base,
                client_options=http_settings().client_options(base, headers, self.concurrency),
                retry_config={"max_retries": 0},  # the thread path retries and classifies
            )
            self._stores = {key: store}
        return store

    def close(self) -> None:
        """Cancel what is queued, close the connections, stop the loop's thread. Temp files of
        cancelled downloads are removed as they unwind."""
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            with self._queue_lock:
                queued, self._queue = list(self._queue), collections.deque()
            for _info, _store, done in queued:
                done(CancelledError())
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stores = {}

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._start_lock:
            writers, self._writers = self._writers, []
        for _writer in writers:
            self._bodies.put(None)
        for writer in writers:  # the bodies handed over are written and settled
            writer.join()
        self._flush_records()
        for pending in self._recording:  # the index must hold every file that was renamed in
            with contextlib.suppress(Exception):
                pending.result(timeout=30)
        if not loop.is_running():
            loop.close()
        self._loop = None

    # -- fetching ------------------------------------------------------------------------

    def fetch(self, info: ObjectInfo, store: Store) -> Future[CacheResult]:
        """Make ``info`` present in the cache (the result's ``path``); the future raises what
        the thread path would (missing, denied, transient after retries, Preempted). Requests
        are served in the order they are made."""
        future: Future[CacheResult] = Future()

        def done(outcome: CacheResult | BaseException) -> None:
            if isinstance(outcome, CancelledError):
                future.cancel()
            elif future.set_running_or_notify_cancel():  # (unless its caller cancelled it)
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

        self.submit(info, store, done)
        return future

    def submit(self, info: ObjectInfo, store: Store, done: Done) -> None:
        """:meth:`fetch`, but ``done`` is called once with the outcome: the result, or the
        exception the future would raise (``CancelledError`` when closed before it began)."""
        loop = self._ensure_loop()
        with self._queue_lock:
            self._queue.append((info, store, done))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:  # one wake-up per burst of requests, not one per request
            loop.call_soon_threadsafe(self._spawn_workers)

    def _spawn_workers(self) -> None:
        with self._queue_lock:
            self._wake_pending = False
            wanted = min(self.concurrency - self._workers, len(self._queue))
        for _ in range(wanted):
            self._workers += 1
            task = asyncio.ensure_future(self._worker())
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _worker(self) -> None:
        try:
            while True:
                with self._queue_lock:
                    if not self._queue:
                        return
                    info, store, done = self._queue.popleft()
                try:
                    await self._fetch(info, store, done)
                except BaseException as exc:
                    done(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
        finally:
            self._workers -= 1

    def _threaded(self, call: Callable[[], CacheResult], url: str) -> asyncio.Future[CacheResult]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.pool, lambda: with_retries(call, url, self.retry))

    async def _fetch(self, info: ObjectInfo, store: Store, done: Done) -> None:
        """Call ``done`` with ``info``'s fetch, or raise for the worker to call it. A
        small body is handed to a writer thread, which settles it: this loop only moves bytes
        (file creation costs 0.1-0.5 ms of kernel time each here, and every syscall on this
        thread handed the GIL to obstore's threads and back)."""
        cache = self.cache
        if self.should_stop():
            raise Preempted("stopped while waiting to fetch")
        download = cache.begin(info)
        if download is None:  # another thread of this process fetches it: wait for it there
            done(await self._threaded(lambda: cache.fetch(info, store), info.url))
            return
        with self._record_lock:
            self._active += 1
        indexed = False  # the thread path indexes its own downloads
        try:
            try:
                got = await self._download(info, store, download)
            except _Fallback:
                got = await self._threaded(lambda: download.fetch_blocking(store), info.url)
                indexed = True
            if isinstance(got, bytes):
                await self._room(len(got))
        except BaseException as exc:
            self._end(download, exc)
            raise
        if isinstance(got, bytes):
            self._start_writers()
            self._bodies.put((info, store, download, done, got))
        else:
            self._end(download, got, indexed=indexed)
            done(got)

    async def _download(
        self, info: ObjectInfo, store: Store, download: Download
    ) -> CacheResult | bytes:
        """The object installed (found cached, or streamed in), or a small one's whole body,
        not checked yet (:meth:`_write` checks and installs it)."""
        if info.crc32c is None:
            raise _Fallback  # nothing to check the bytes against but the thread path's pin
        try:
            base, path, headers = store.http_object(info) or self._no_get()  # may refresh a token
        except Exception:
            raise _Fallback from None  # the thread path retries and classifies it
        if not download.lock_now():  # another process (or stripe-mate) is downloading it
            raise _Fallback
        found = download.cached()  # whoever held the lock before may have fetched it
        if found is not None:
            return found
        http = self._object_store(base, headers)
        if 0 < info.size <= PIECE_BYTES:
            return await self._get_body(http, path, info.size)
        try:
            await self._get(http, path, info, download.part)
            return download.install()
        except OSError as exc:
            if exc.errno == errno.ENOSPC:  # one line naming the folder, not a traceback
                raise self.cache.no_space(info) from None
            raise

    def _start_writers(self) -> None:
        if self._writers:
            return
        with self._start_lock:
            while len(self._writers) < WRITERS:
                name = f"jitrender-write_{len(self._writers)}"
                writer = threading.Thread(target=self._write_bodies, name=name, daemon=True)
                writer.start()
                self._writers.append(writer)

    def _write_bodies(self) -> None:
        """A writer thread: write what the loop hands over until :meth:`close` says stop."""
        while True:
            item = self._bodies.get()
            if item is None:
                return
            with contextlib.suppress(Exception):  # (its outcome is handed on, whatever it is)
                self._write(*item)

    async def _room(self, size: int) -> None:
        """Wait while the bodies handed to the writers and not written yet pass
        ``WRITE_BACKLOG`` bytes (a slow disk must not fill memory), then count ``size`` in."""
        while True:
            with self._record_lock:
                if not self._writing or self._writing + size <= WRITE_BACKLOG:
                    self._writing += size
                    return
                if self._room_waiter is None:
                    self._room_waiter = asyncio.get_running_loop().create_future()
                waiter = self._room_waiter
            await waiter

    def _write(
        self, info: ObjectInfo, store: Store, download: Download, done: Done, body: bytes
    ) -> None:
        """On a writer thread: check ``body``, install it, call ``done`` (whose work, such as
        linking into a workspace, runs here too)."""
        try:
            try:
                verify(info, len(body), google_crc32c.value(body))
            except ChecksumMismatch:  # the thread path fetches again, then calls it transient
                self.pool.submit(self._fallback, store, download, done)
                return
            try:
                result = download.install_bytes(body)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:  # one line naming the folder, not a traceback
                    raise self.cache.no_space(info) from None
                raise
        except BaseException as exc:
            self._end(download, exc)
            done(exc)
            return
        finally:
            self._written(len(body))
        try:
            self._end(download, result)
        finally:  # the file is in place: its caller hears so whatever the index does
            done(result)

    def _fallback(self, store: Store, download: Download, done: Done) -> None:
        """On a pool thread: the thread path for a download the writer turned away."""
        try:
            url = download.info.url
            result = with_retries(lambda: download.fetch_blocking(store), url, self.retry)
        except BaseException as exc:
            self._end(download, exc)
            done(exc)
            return
        try:
            self._end(download, result, indexed=True)
        finally:
            done(result)

    def _written(self, size: int) -> None:
        with self._record_lock:
            self._writing -= size
            waiter, self._room_waiter = self._room_waiter, None
        loop = self._loop
        if waiter is not None and loop is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop has no one left to wake
                loop.call_soon_threadsafe(_wake, waiter)

    def _end(
        self, download: Download, outcome: CacheResult | BaseException, *, indexed: bool = False
    ) -> None:
        """End ``download`` (any thread); a new file (unless ``indexed``) is indexed once a
        batch is full or nothing else is under way (the index lags by ``RECORD_BATCH``)."""
        download.end(outcome)
        with self._record_lock:
            self._active -= 1
            if isinstance(outcome, CacheResult) and outcome.fetched and not indexed:
                self._unrecorded.append(download.info)
            flush = len(self._unrecorded) >= RECORD_BATCH or self._active == 0
        if flush:
            self._flush_records()

    @staticmethod
    def _no_get() -> tuple[str, str, dict[str, str]]:
        raise _Fallback

    @staticmethod
    async def _get_body(http: Any, path: str, size: int) -> bytes:
        """A small object's whole body in one call: each answer from obstore's threads costs
        the loop a GIL hand-over, so one per object instead of three (head, piece, end)."""
        import obstore

        try:
            got = await obstore.get_range_async(http, path, start=0, end=size)
            return got.to_bytes()
        except Exception:
            raise _Fallback from None  # obstore's 404 and 403 are OSErrors too

    async def _get(self, http: Any, path: str, info: ObjectInfo, part: str) -> None:
        """Stream the object into the new file ``part``, checksummed as it arrives; anything
        unusual (an HTTP error, a short body, a checksum mismatch) raises :class:`_Fallback`,
        a full disk its ``OSError``."""
        import obstore

        try:
            size, crc = 0, 0
            response = await obstore.get_async(http, path)
            fd = _create(part)
            try:
                async for piece in response.stream(min_chunk_size=PIECE_BYTES):
                    write_all(fd, piece)
                    crc = google_crc32c.extend(crc, piece)
                    size += len(piece)
            finally:
                os.close(fd)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise
            raise _Fallback from None  # obstore's 404 and 403 are OSErrors too
        except Exception:
            raise _Fallback from None
        try:
            verify(info, size, crc)
        except ChecksumMismatch:
            raise _Fallback from None  # the thread path fetches again, then calls it transient

    def _flush_records(self) -> None:
        """Index a batch in a pool thread: eviction takes stripe locks, which downloads under
        way may hold, so it must never run on the loop's or a writer's thread."""
        with self._record_lock:
            batch, self._unrecorded = self._unrecorded, []
            if batch:
                self._recording.append(self.pool.submit(self.cache.record_fetched, batch))
                self._recording = [f for f in self._recording if not f.done()]


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _create(part: str) -> int:
    return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
