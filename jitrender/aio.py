"""Small objects on one asyncio loop.

Thousands of small textures are bound by per-request CPU, not by the link: measured against
fake-gcs-server on these 2-core machines, a GET through requests in a thread pool costs
~1.3 ms of CPU, one through aiohttp on an event loop ~0.4 ms (download, crc32c and the cache
write included), the way gcsfs reaches its rate. So objects below ``LARGE_OBJECT_BYTES``
whose store can name a plain HTTP GET (``Store.media_request``) are fetched here; large
objects keep the ranged thread path. The cache's guarantees are the same on both paths:
one download per object in the process (``Cache.claim``) and across processes (the stripe
flock, tried without blocking), a temp file renamed only once its size and crc32c match.
Anything unusual (a busy lock, an HTTP error, a short body, a checksum mismatch) is handed to
the thread path, which retries and classifies errors as every other fetch does.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import errno
import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import google_crc32c

from jitrender.cache import Cache, CacheResult
from jitrender.errors import MissingDependencyError, PermissionDeniedError, Preempted
from jitrender.storage import ObjectInfo, RetryPolicy, Store, with_retries
from jitrender.transfer import LARGE_OBJECT_BYTES

# Requests in flight at once (aiohttp's connection pool has as many connections).
CONCURRENCY = 64
# Downloads indexed in one transaction: the index lags the files by at most this many.
RECORD_BATCH = 64


_Request = tuple[ObjectInfo, Store, "Future[CacheResult]"]


class _Fallback(Exception):
    """This object goes to the thread path (which retries and classifies errors)."""


class AsyncFetcher:
    """Fetches small objects into ``cache`` on a private event loop thread; ``fetch`` returns
    a ``concurrent.futures.Future`` of the :class:`CacheResult`, set on the loop's thread."""

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
        self._session: Any = None
        # Waiting requests, in the order they were asked for (frame order), drained by at most
        # ``concurrency`` worker coroutines: a request costs a tuple and a future, not a task.
        self._queue: collections.deque[_Request] = collections.deque()
        self._queue_lock = threading.Lock()
        self._wake_pending = False
        self._workers = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._unrecorded: list[ObjectInfo] = []
        self._recording: list[Future[None]] = []
        self._active = 0
        self._start_lock = threading.Lock()

    @staticmethod
    def eligible(info: ObjectInfo, store: Store) -> bool:
        has_get = type(store).media_request is not Store.media_request
        return has_get and info.size < LARGE_OBJECT_BYTES

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

    async def _http(self) -> Any:
        if self._session is None:
            import aiohttp

            proxies = any(k.lower().endswith("_proxy") for k in os.environ)
            ssl_context: Any = True  # the system's CAs (SSL_CERT_FILE is honoured by OpenSSL)
            bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
            if bundle:  # the CA bundle the requests path (metadata, uploads) is told to use
                import ssl

                ssl_context = ssl.create_default_context(cafile=bundle)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=self.concurrency, ttl_dns_cache=300, ssl=ssl_context
                ),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300),
                trust_env=proxies,
                auto_decompress=False,  # the stored bytes, as their crc32c covers
            )
        return self._session

    def close(self) -> None:
        """Cancel what is queued, close the connections, stop the loop's thread. Temp files of
        cancelled downloads are removed as they unwind."""
        loop = self._loop
        if loop is None:
            return

        async def shutdown() -> None:
            with self._queue_lock:
                queued, self._queue = list(self._queue), collections.deque()
            for _info, _store, future in queued:
                future.cancel()
            current = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not current]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._flush_records()
            if self._session is not None:
                await self._session.close()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout=10)
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
        loop = self._ensure_loop()
        with self._queue_lock:
            self._queue.append((info, store, future))
            wake, self._wake_pending = not self._wake_pending, True
        if wake:  # one wake-up per burst of requests, not one per request
            loop.call_soon_threadsafe(self._spawn_workers)
        return future

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
                    info, store, future = self._queue.popleft()
                if not future.set_running_or_notify_cancel():
                    continue
                try:
                    result = await self._fetch(info, store)
                except BaseException as exc:
                    future.set_exception(exc)
                    if isinstance(exc, asyncio.CancelledError):
                        raise
                else:
                    future.set_result(result)
        finally:
            self._workers -= 1

    def _threaded(self, call: Callable[[], CacheResult], url: str) -> asyncio.Future[CacheResult]:
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self.pool, lambda: with_retries(call, url, self.retry))

    async def _fetch(self, info: ObjectInfo, store: Store) -> CacheResult:
        cache = self.cache
        found = cache.lookup(info)
        if found is not None:
            return CacheResult(found, False, 0)
        if self.should_stop():
            raise Preempted("stopped while waiting to fetch")
        key = cache.key(info)
        claim = cache.claim(key)
        if claim is None:  # another thread of this process fetches it: wait for it there
            return await self._threaded(lambda: cache.fetch(info, store, record=False), info.url)
        try:
            try:
                result = await self._download(info, store, key)
            except _Fallback:
                result = await self._threaded(
                    lambda: cache.fetch_claimed(info, store, key), info.url
                )
        except BaseException as exc:
            cache.settle(key, claim, exc)
            raise
        cache.settle(key, claim, result)
        return result

    async def _download(self, info: ObjectInfo, store: Store, key: str) -> CacheResult:
        cache = self.cache
        session = await self._http()
        fd = cache.try_stripe_lock(key)
        if fd is None:  # another process (or stripe-mate) is downloading: wait in a thread
            raise _Fallback
        self._active += 1
        try:
            found = cache.lookup(info)
            if found is not None:
                return CacheResult(found, False, 0)
            try:
                request = store.media_request(info)  # may refresh credentials
            except Exception:
                raise _Fallback from None  # the thread path retries and classifies it
            if request is None:
                raise _Fallback
            final = cache.object_path(info)
            final.parent.mkdir(exist_ok=True, mode=0o700)
            part = cache.part_path(key)
            try:
                await self._get(session, request, info, part)
                cache.install(part, final)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:  # one line naming the folder, not a traceback
                    raise cache.no_space(info) from None
                raise
            finally:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
        finally:
            os.close(fd)
            self._active -= 1
        self._unrecorded.append(info)
        if len(self._unrecorded) >= RECORD_BATCH or self._active == 0:
            self._flush_records()
        return CacheResult(final, True, info.size)

    async def _get(
        self, session: Any, request: tuple[str, dict[str, str]], info: ObjectInfo, part: Any
    ) -> None:
        import aiohttp

        url, headers = request
        crc, size = 0, 0
        try:
            async with session.get(url, headers=headers) as response:
                if response.status == 404:  # permanent, as with_retries treats it: no retry
                    raise MissingDependencyError(info.url)
                if response.status in (401, 403):
                    raise PermissionDeniedError(
                        f"{info.url}: permission denied ({response.status} {response.reason})"
                    )
                if response.status != 200:
                    raise _Fallback  # transient (429, 5xx): the thread path retries it
                with open(part, "xb") as handle:
                    async for piece in response.content.iter_chunked(1 << 20):
                        handle.write(piece)
                        crc = google_crc32c.extend(crc, piece)
                        size += len(piece)
        except (TimeoutError, aiohttp.ClientError, OSError):
            raise _Fallback from None
        if size != info.size:
            raise _Fallback
        digest = base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")
        if info.crc32c is not None and digest != info.crc32c:
            raise _Fallback

    def _flush_records(self) -> None:
        """Index a batch in a pool thread: eviction takes stripe locks, which this loop's own
        downloads may hold, so it must never run on the loop's thread."""
        batch, self._unrecorded = self._unrecorded, []
        if batch:
            self._recording.append(self.pool.submit(self.cache.record_fetched, batch))
            self._recording = [f for f in self._recording if not f.done()]
