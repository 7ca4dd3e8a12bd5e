"""The run's one view of storage: what exists, and the workspace copy of each input.

:class:`Inputs` is the only thing in a run that stats, lists, fetches and links input files.
Resolvers call :meth:`Inputs.local_copy` and :meth:`Inputs.list_prefix`; the run prefetches its
planned dependencies with :meth:`Inputs.prefetch` and waits for a frame's with
:meth:`Inputs.wait`; the agent (hooks) and the FUSE view call :meth:`Inputs.into_workspace`.
Whoever asks first, each URL is fetched into the shared cache and linked below ``root`` (at
its bucket-relative place, under its own name) once per run, and counted once as a cache hit
or a download.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from jitrender.cache import Cache, CacheResult
from jitrender.deps import Dependency
from jitrender.errors import JitrenderError, MissingDependencyError, Preempted
from jitrender.paths import NAME_MAX, workspace_relstr
from jitrender.progress import Progress, QuietProgress
from jitrender.storage import ObjectInfo, RetryPolicy, Store, Stores, with_retries
from jitrender.transfer import InflightBudget, listing_groups
from jitrender.transport import route

if TYPE_CHECKING:  # made on the first cold small fetch: asyncio costs a warm run 40 ms to import
    from jitrender.aio import AsyncFetcher

# Objects below this are bound by round trips, not bytes: capping their bytes in flight only
# cost each a cross-thread wake-up; the fetcher's queue keeps them in frame order anyway.
LATENCY_BOUND_BYTES = 1 << 20

T = TypeVar("T")
# Cached inputs looked up in the index per query, and planned inputs a wait watches at once.
_FEED_BATCH = 256
_WAIT_BATCH = 256


class _BatchClaim(Future[Path]):
    """One claim for a prefetch batch of up to 256 inputs, not a Future (and a Condition) each:
    it settles once the batch's cached inputs are linked; the others are handed claims of
    their own first (``moved``)."""

    def __init__(self) -> None:
        super().__init__()
        self.moved: list[tuple[str, Future[Path]]] = []


class _LocalNames:
    """``local_str(url)`` for many URLs, worked out once per folder: the folder's part is the
    same for all its files, and a plain file name (no ``.``/``..``, short enough for any file
    system) is only appended (checking every name of every path cost 5 µs per input)."""

    def __init__(self, local_str: Callable[[str], str]) -> None:
        self._local_str = local_str
        self._folders: dict[str, str] = {}

    def __call__(self, url: str) -> str:
        folder, _, name = url.rpartition("/")
        plain = name not in ("", ".", "..") and len(name) <= NAME_MAX // 4
        where = self._folders.get(folder) if plain else None
        if where is not None:
            return f"{where}/{name}"
        local = self._local_str(url)  # every check, and the error for a name that fails one
        if plain:
            self._folders[folder] = local[: -len(name) - 1]
        return local


class Inputs:
    """Stat memo, listings and single-flight fetch-and-link below ``root`` for one run.

    Thread-safe. :meth:`close` stops the transfers and records the run's hits and downloads in
    the cache's index. ``stop`` (when set) makes waits and queued prefetches raise
    :class:`~jitrender.errors.Preempted`.
    """

    def __init__(
        self,
        cache: Cache,
        root: Path,
        *,
        stores: Stores | None = None,
        retry: RetryPolicy | None = None,
        stop: threading.Event | None = None,
        progress: Progress | None = None,
        workers: int = 16,
        prefetch_bytes: int = 16 << 20,
    ) -> None:
        self.cache = cache
        self.root = root
        self._root_str = str(root)
        self.stores = stores or Stores()
        self.retry = retry or RetryPolicy()
        self.stop = stop or threading.Event()
        self.progress = progress or QuietProgress()
        self.workers = workers
        self.hits: list[ObjectInfo] = []
        self.fetched: list[ObjectInfo] = []  # downloaded by this run
        self.fetch_seconds = 0.0  # from the first prefetch to the last planned input linked
        self._known: dict[str, ObjectInfo] = {}
        self._listed: dict[str, list[ObjectInfo]] = {}  # recursive listings taken (a head start's)
        self._held: Callable[[ObjectInfo], bytes | None] | None = None  # see hold()
        self._lock = threading.Lock()
        self._futures: dict[str, Future[Path]] = {}
        self._planned: dict[str, Future[Path]] = {}
        self._deps: list[Dependency] = []
        self._always: list[str] = []  # planned inputs every frame needs, in order
        self._always_ok = 0  # how many of those a finished wait saw in (never to check again)
        self._by_frame: dict[int, list[str]] = {}  # the others, by frame
        self._closed = False
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="fetch")
        self._aio: AsyncFetcher | None = None  # see _async()
        # One admission policy for every prefetch: in the order asked, bytes in flight capped.
        self._budget = InflightBudget(prefetch_bytes)
        # (url, its claim, its size where stat'ed)
        self._queue: queue.SimpleQueue[tuple[str, Future[Path], int] | None] = queue.SimpleQueue()
        self._dispatcher: threading.Thread | None = None
        self._waiting = 0  # fetches queued for the dispatcher (later ones queue behind them)
        self._waiting_bytes = 0  # their sizes, where stat'ed
        # The ranged downloader's end game: the bytes this run's prefetch has still to ask for.
        cache.ranged.pending = self._bytes_to_come
        self._prefetch_started = 0.0
        self._pending: set[str] = set()  # planned URLs this run's prefetch still fetches
        # The hits recorded in the index early (by the feed, while the stages run); close
        # records the rest. The lock makes "early" and close's remainder exclusive.
        self._record_lock = threading.Lock()
        self._hits_recorded = 0
        # Stats under way (stat_soon): the URLs whose answer is still to come, and what came
        # back for those not found. The feed admits each planned input as its answer comes in.
        self._stat_cond = threading.Condition()
        self._stating: set[str] = set()
        self._absent: set[str] = set()
        self._stat_errors: dict[str, BaseException] = {}
        self._stat_pool: ThreadPoolExecutor | None = None

    # -- what exists ---------------------------------------------------------------------

    def store(self, url: str) -> Store:
        return self.stores.for_url(url)

    def stat(self, url: str) -> ObjectInfo | None:
        """Size, generation and checksum of ``url`` (asked once per run), or None if absent."""
        known = self._known.get(url)
        if known is not None:
            return known
        store = self.store(url)
        info = with_retries(lambda: store.stat(url), url, self.retry)
        if info is not None:
            self._known[url] = info
        return info

    def list_prefix(self, prefix: str, recursive: bool = True) -> list[ObjectInfo]:
        """The objects below ``prefix``; what it finds answers later :meth:`stat` calls."""
        listed = self._listed.get(prefix) if recursive else None
        if listed is not None:
            return listed
        store = self.store(prefix)
        infos = with_retries(lambda: store.list(prefix, recursive=recursive), prefix, self.retry)
        self._remember(infos)
        return infos

    def list_prefixes(self, prefixes: Sequence[str]) -> list[list[ObjectInfo]]:
        """:meth:`list_prefix` (recursive) of each of ``prefixes``, concurrently where their
        storage gains from it; in order."""
        found: dict[str, list[ObjectInfo]] = {}

        def one(prefix: str) -> None:
            found[prefix] = self.list_prefix(prefix, True)

        with ThreadPoolExecutor(max(1, min(self.workers, len(prefixes)))) as pool:
            self._each(pool, one, [(prefix, prefix) for prefix in prefixes])
        return [found[prefix] for prefix in prefixes]

    def _list_range(self, prefix: str, first: str, last: str) -> None:
        store = self.store(prefix)
        self._remember(
            with_retries(lambda: store.list_range(prefix, first, last), prefix, self.retry)
        )

    def remember(self, infos: Iterable[ObjectInfo]) -> None:
        """Take stats made elsewhere this run (a head start's): :meth:`stat` of their URLs
        then asks storage nothing."""
        self._remember(infos)

    def remember_listings(self, listed: Mapping[str, list[ObjectInfo]]) -> None:
        """Take recursive listings made elsewhere this run (a head start's), by prefix URL:
        :meth:`list_prefix` of those prefixes, and :meth:`stat` of what they hold, then ask
        storage nothing."""
        for prefix, infos in listed.items():
            self._listed[prefix] = infos
            self._remember(infos)

    def hold(self, body: Callable[[ObjectInfo], bytes | None]) -> None:
        """Take downloads made elsewhere this run (a head start's): ``body(info)`` is exactly
        ``info``'s bytes, checked, or None. A miss on the thread path installs them instead
        of downloading."""
        self._held = body

    def _remember(self, infos: Iterable[ObjectInfo]) -> None:
        for info in infos:
            self._known[info.url] = info

    def stat_soon(self, urls: Iterable[str]) -> None:
        """Start learning the stats of ``urls`` (those not known, asked or answered already)
        and return: one ranged listing per busy folder (a sequence's frames, a texture set),
        one stat for each of the rest, on threads where the store's reads gain from it (else
        here, now). Each is retried per the run's policy. :meth:`stat_all` waits for them, and
        a prefetch admits each input as soon as its own answer is in."""
        stating = self._stating
        asked = set(urls)  # set arithmetic: 100,000 URLs asked twice cost a pass each in C
        with self._stat_cond:
            asked -= self._known.keys()
            asked -= stating
            asked -= self._absent
            asked -= self._stat_errors.keys()
            stating |= asked
        if not asked:
            return
        # By prefix: the listings go out in URL order, which is the fetch order of the inputs
        # every frame needs (and near it for the rest).
        ranges, alone = listing_groups(asked)
        for (prefix, first, last), covered in sorted(ranges, key=lambda r: r[0]):
            task = functools.partial(self._stat_range, prefix, first, last, covered)
            self._stat_task(prefix, task)
        for url in sorted(alone):
            self._stat_task(url, functools.partial(self._stat_one, url))

    def _stat_task(self, url: str, call: Callable[[], None]) -> None:
        if not self.store(url).concurrent_reads:  # local CPU work: no thread to start
            call()
            return
        with self._lock:
            if self._stat_pool is None:
                self._stat_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stat")
            pool = self._stat_pool
        pool.submit(call)

    def _stat_range(self, prefix: str, first: str, last: str, urls: list[str]) -> None:
        try:
            self._list_range(prefix, first, last)
        except BaseException as exc:  # kept for stat_all to raise (a stop or exit: now)
            self._stated(urls, exc)
            if not isinstance(exc, Exception):
                raise
            return
        known = self._known
        missing = [url for url in urls if url not in known]
        with self._stat_cond:  # the found ones are answered; the missing stay under way
            self._stating.difference_update(urls)
            self._stating.update(missing)
            self._stat_cond.notify_all()
        # Not in the listing: each asked on its own (as before any listing).
        for url in missing:
            self._stat_task(url, functools.partial(self._stat_one, url))

    def _stat_one(self, url: str) -> None:
        try:
            self.stat(url)
        except BaseException as exc:
            self._stated([url], exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._stated([url])

    def _stated(self, urls: Iterable[str], error: BaseException | None = None) -> None:
        """``urls``' answers are in: each is known, absent, or failed with ``error``."""
        known = self._known
        with self._stat_cond:
            for url in urls:
                self._stating.discard(url)
                if url in known:
                    continue
                if error is None:
                    self._absent.add(url)
                else:
                    self._stat_errors[url] = error
            self._stat_cond.notify_all()

    def _stated_through(self, urls: Sequence[str], start: int) -> int:
        """The end of the run of ``urls`` from ``start`` whose stats are in: waits for
        ``urls[start]``'s answer (or a stop), then takes every answered one after it."""
        stating = self._stating
        with self._stat_cond:
            while urls[start] in stating and not self._stopping():
                self._stat_cond.wait(0.2)
            end = start + 1
            while end < len(urls) and urls[end] not in stating:
                end += 1
        return end

    def _await_stats(self, urls: Sequence[str]) -> None:
        """Block until every one of ``urls`` asked with :meth:`stat_soon` has its answer; raise
        the first one's failure (after its retries), or :class:`Preempted` once stopped."""
        stating = self._stating
        with self._stat_cond:
            # All answered already: no pass in Python (the failures are still looked at below).
            waiting = () if stating.isdisjoint(urls) else urls
            for url in waiting:  # each looked at until answered: no pass over all per wake-up
                while url in stating:
                    if self._stopping():
                        raise Preempted("stopped while listing the dependencies")
                    self._stat_cond.wait(0.2)
            errors = self._stat_errors
            failed = next((errors[url] for url in urls if url in errors), None) if errors else None
        if failed is not None:
            raise failed

    def stat_all(self, deps: Sequence[Dependency]) -> list[Dependency]:
        """``deps`` with ``size`` and ``exists`` filled in: :meth:`stat_soon` of their URLs (or
        what it asked already), waited for."""
        known = self._known
        unknown = [d.url for d in deps if d.url not in known]  # (one pass; most often all)
        if unknown:
            self.stat_soon(unknown)
            self._await_stats(unknown)
        out = []
        for dep in deps:
            info = known.get(dep.url)
            if info is None:
                out.append(Dependency(dep.path, dep.url, dep.frames, dep.source, None, False))
                continue
            # One string for the URL where storage's equals it (and the path as written, where
            # that is the URL too): 100 bytes less per dependency of a large manifest.
            url = info.url
            path = url if dep.path == url else dep.path
            out.append(Dependency(path, url, dep.frames, dep.source, info.size, True))
        return out

    def _each(
        self, pool: ThreadPoolExecutor, call: Callable[[T], object], items: list[tuple[str, T]]
    ) -> None:
        """``call`` on every item (keyed by its URL): on ``pool`` where the store's reads gain
        from concurrency, in this thread where they are local CPU work."""
        here: list[T] = []
        there: list[T] = []
        for url, item in items:
            (there if self.store(url).concurrent_reads else here).append(item)
        futures = [pool.submit(call, item) for item in there]
        for item in here:
            call(item)
        for future in futures:
            future.result()

    # -- the workspace copies -------------------------------------------------------------

    def local_path(self, url: str) -> Path:
        """Where ``url``'s copy is (or will be) below ``root``."""
        return Path(self._local_str(url))

    def _local_str(self, url: str) -> str:
        return os.path.join(self._root_str, workspace_relstr(url))

    def local_copy(self, url: str) -> Path:
        """A local copy of ``url`` for a resolver, under the file's own name at its
        bucket-relative place (formats are told by extension, derived paths come from the
        name: a cache object's hash name would not do). Same as :meth:`into_workspace`."""
        return self.into_workspace(url)

    def into_workspace(self, url: str) -> Path:
        """Fetch ``url`` into the cache and link it below ``root``, once however many threads
        ask; raises :class:`MissingDependencyError` when it does not exist and storage errors
        after retries (a later call tries again)."""
        while True:
            future, owner = self._claim(url)
            if owner:
                self._fetch_and_link(url, future)
            future.result()  # (claims settle with ``root``: the path is worked out once, here)
            if not isinstance(future, _BatchClaim):
                return self.local_path(url)
            with self._lock:
                if self._futures.get(url) is future:
                    return self.local_path(url)  # linked from the cache with its batch
            # Its batch handed it a claim of its own (not cached) or dropped it (failed): ask
            # again, which waits for that claim or tries again.

    def _claim(self, url: str) -> tuple[Future[Path], bool]:
        with self._lock:
            future = self._futures.get(url)
            if future is not None:
                return future, False
            future = Future()
            self._futures[url] = future
            return future, True

    def _fetch_and_link(
        self, url: str, future: Future[Path], info: ObjectInfo | None = None
    ) -> None:
        """The one fetch + link (the thread path); settles ``future`` whatever happens."""
        try:
            info = info or self.stat(url)
            if info is None:
                raise MissingDependencyError(url)
            store, dest = self.store(url), self.local_path(url)
            # Linked by the cache, which wins a race with another process's eviction.
            held = self._held
            got = None if held is None else functools.partial(held, info)
            result = with_retries(
                lambda: self.cache.fetch_into(info, store, dest, got), url, self.retry
            )
            self._linked(url, info, result)
        except BaseException as exc:
            self._failed(url, future, exc)
            return
        future.set_result(self.root)

    def _link(self, url: str, info: ObjectInfo, result: CacheResult) -> None:
        """Link a cached entry; FileNotFoundError when it was evicted since (callers then take
        the thread path, :meth:`_fetch_and_link`, which cannot lose that race)."""
        self.cache.link_into(result.file, self._local_str(url))  # strings: no Path per file
        self._linked(url, info, result)

    def _linked(self, url: str, info: ObjectInfo, result: CacheResult) -> None:
        with self._lock:
            (self.fetched if result.fetched else self.hits).append(info)
            if url in self._pending:
                self._pending.discard(url)
                if not self._pending:
                    self.fetch_seconds = time.monotonic() - self._prefetch_started
        self.progress.event("fetched", url=url, size=info.size, cached=not result.fetched)

    def _failed(self, url: str, future: Future[Path], exc: BaseException) -> None:
        with self._lock:
            if self._futures.get(url) is future:
                del self._futures[url]  # a later request may try again
        future.set_exception(exc)

    # -- prefetch --------------------------------------------------------------------------

    def prefetch(self, deps: Sequence[Dependency]) -> None:
        """Start fetching the planned ``deps`` in the order given (the order frames need
        them) and return at once; :meth:`wait` then blocks only for a frame's own."""
        batches: list[tuple[_BatchClaim, list[str]]] = []
        with self._lock:  # once for all of them, not twice per dependency
            self._deps.extend(deps)
            if not self._prefetch_started:
                self._prefetch_started = time.monotonic()
            for dep in deps:
                url = dep.url
                future = self._futures.get(url)
                if future is None:  # unclaimed: this prefetch owns its fetch (as _claim does)
                    if not batches or len(batches[-1][1]) == _FEED_BATCH:
                        batches.append((_BatchClaim(), []))
                    future = self._futures[url] = batches[-1][0]
                    batches[-1][1].append(url)
                    self._pending.add(url)
                self._planned[url] = future
                if dep.frames is None:
                    self._always.append(url)
                else:
                    for frame in dep.frames:
                        self._by_frame.setdefault(frame, []).append(url)
        # One thread admits them (linking cached ones): the caller starts the stages meanwhile.
        threading.Thread(
            target=self._feed, args=(batches,), name="jitrender-feed", daemon=True
        ).start()

    def _feed(self, batches: Sequence[tuple[_BatchClaim, list[str]]]) -> None:
        for claim, urls in batches:
            self._feed_batch(claim, urls)
        self._record_hits_early()

    def _record_hits_early(self) -> None:
        """Index the hits linked so far (a warm run's all), here while the stages run rather
        than in :meth:`close` on the way out; close records only what came after. Nothing is
        recorded once close has begun, and a failure here leaves them all to close."""
        with self._record_lock:
            if self._closed:
                return
            with self._lock:
                hits = self.hits[self._hits_recorded :]
            try:
                self.cache.record_run(hits, [])
            except Exception:  # close tries them again, and reports what it reports
                return
            self._hits_recorded += len(hits)

    def _feed_batch(self, claim: _BatchClaim, urls: Sequence[str]) -> None:
        """As the batch's stats come in (in order: each run of answered ones at once), link the
        cached ones (one index query per run; they stay on the batch's one claim) and give each
        of the rest a claim of its own and hand it to :meth:`_enqueue` then and there; settle
        the batch once all its inputs are one or the other."""
        handled: set[str] = set()  # linked, failed, or handed on with a claim of their own
        start = 0
        try:
            while start < len(urls) and not self._stopping():
                end = self._stated_through(urls, start)
                part = urls[start:end]
                self._link_cached(claim, part, handled)
                cold = [(url, self._move(claim, url)) for url in part if url not in handled]
                handled.update(url for url, _ in cold)
                for url, future in cold:
                    self._admit_stated(url, future)
                start = end
        except Exception:  # the one-by-one path below meets (and reports) it again
            pass
        finally:  # whatever happened, the batch settles and the rest go the one-by-one way
            owned = [(url, self._move(claim, url)) for url in urls if url not in handled]
            claim.set_result(self.root)
            for url, future in owned:
                self._enqueue(url, future, looked_up=True)

    def _link_cached(self, claim: _BatchClaim, urls: Sequence[str], settled: set[str]) -> None:
        """Link those of ``urls`` the cache holds (adding them to ``settled``, as those that
        failed on a claim of their own); the rest are left for the caller."""
        try:
            infos = [self._known.get(url) for url in urls]
            try:
                # Only indexed ones are looked for on disk: a cold input is looked up once, by
                # its fetch, under its lock (a second lstat each cost a cold run 2,000 here).
                known = [i for i in infos if i is not None]
                found = iter(self.cache.lookup_many(known, indexed_only=True))
            except Exception:  # the one-by-one path reports it against each input
                found = iter(())
            linking: list[tuple[str, ObjectInfo, str]] = []
            pairs: list[tuple[str, str]] = []
            local = _LocalNames(self._local_str)
            for url, info in zip(urls, infos, strict=True):
                cached = next(found, None) if info is not None else None
                if info is None or cached is None:
                    continue
                try:
                    pairs.append((cached, local(url)))
                except Exception as exc:
                    self._failed(url, self._move(claim, url), exc)
                    settled.add(url)
                    continue
                linking.append((url, info, cached))
            if self._stopping():
                linking, pairs = [], []
            # One folder check per folder for the lot, not a stat per file.
            outcomes = self.cache.link_many(pairs)
            for (url, info, cached), error in zip(linking, outcomes, strict=True):
                if isinstance(error, FileNotFoundError):  # evicted just now: fetch it cold
                    continue
                if error is not None:
                    self._failed(url, self._move(claim, url), error)
                else:
                    self._linked(url, info, CacheResult(cached, False, 0))
                settled.add(url)
        except Exception:  # the one-by-one path meets (and reports) it again
            pass

    def _admit_stated(self, url: str, future: Future[Path]) -> None:
        """Hand a planned input the cache lacks to :meth:`_enqueue`, or fail it with what its
        stat found (absent, or storage's error after the retries) without asking again."""
        error = self._stat_errors.get(url)
        if error is None and url in self._absent:
            error = MissingDependencyError(url)
        if error is not None:
            self._failed(url, future, error)
        else:
            self._enqueue(url, future, looked_up=True)

    def _move(self, claim: _BatchClaim, url: str) -> Future[Path]:
        """``url``'s own claim instead of its batch's, made before the batch settles (so no
        waiter sees the batch settled without it)."""
        future: Future[Path] = Future()
        with self._lock:
            if self._futures.get(url) is claim:
                self._futures[url] = future
            if self._planned.get(url) is claim:
                self._planned[url] = future
            claim.moved.append((url, future))
        return future

    def prefetch_urls(self, urls: Iterable[str]) -> int:
        """Queue ``urls`` not asked for yet (after what is queued); returns how many."""
        queued = 0
        for url in urls:
            future, owner = self._claim(url)
            if owner:
                self._enqueue(url, future)
                queued += 1
        return queued

    def _enqueue(self, url: str, future: Future[Path], *, looked_up: bool = False) -> None:
        """Admit ``url`` now when nothing queued is ahead of it and it need not wait (the
        common case: no thread hop per file), else queue it for the dispatcher.
        ``looked_up``: its batch just found it not cached (the fetch looks again, locked)."""
        with self._lock:
            ahead = self._waiting
        try:
            if not ahead and self._admit(url, future, wait=False, looked_up=looked_up):
                return
        except BaseException as exc:
            self._failed(url, future, exc)
            return
        known = self._known.get(url)
        size = known.size if known is not None else 0
        with self._lock:
            self._waiting += 1
            self._waiting_bytes += size
            if self._dispatcher is None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name="jitrender-prefetch", daemon=True
                )
                self._dispatcher.start()
        self._queue.put((url, future, size))

    def _dispatch(self) -> None:
        """Admit queued fetches one by one, in order, each once the byte budget allows."""
        while True:
            item = self._queue.get()
            if item is None:
                return
            url, future, size = item
            try:
                self._admit(url, future, wait=True)
            except BaseException as exc:
                self._failed(url, future, exc)
            finally:
                with self._lock:
                    self._waiting -= 1
                    self._waiting_bytes -= size

    def _bytes_to_come(self) -> int:
        """The bytes this run's prefetch has still to ask for: those waiting for admission
        and those admitted whose requests are not made yet (the byte budget's). Read without
        locks: the ranged downloader asks holding its own."""
        return self._waiting_bytes + self._budget.inflight

    def _stopping(self) -> bool:
        return self._closed or self.stop.is_set()

    def _admit(
        self, url: str, future: Future[Path], *, wait: bool, looked_up: bool = False
    ) -> bool:
        """Start ``url``'s fetch: cached objects are linked at once, cold ones take their
        bytes from the budget (waiting for it only with ``wait``; False when it would have
        to), then go to the asyncio fetcher (small objects over plain HTTP) or the thread
        pool (large ones, other stores)."""
        if self._stopping():
            raise Preempted("stopped while waiting to fetch")
        info = self._known.get(url)
        if info is None:  # not stat'ed yet (a hook's prefetch): the thread path does it all
            self._pool.submit(self._fetch_and_link, url, future)
            return True
        cached = None if looked_up else self.cache.lookup(info)
        if cached is not None:
            try:
                self._link(url, info, CacheResult(cached, False, 0))
                future.set_result(self.root)
                return True
            except FileNotFoundError:
                pass  # evicted just now: fetch it like a cold one
        # Small objects are bound by round trips, not bytes: only large ones take the budget.
        if info.size >= LATENCY_BOUND_BYTES:
            if not wait:
                if not self._budget.try_acquire(info.size):
                    return False
            elif not self._budget.acquire(info.size, self._stopping):
                raise Preempted("stopped while waiting to fetch")
        store = self.store(url)
        if route(info, store) == "asyncio":  # decided before asyncio is imported for it
            done = functools.partial(self._fetched_async, url, info, future)
            self._async().submit(info, store, done)  # a call back, not a Future per object
        else:  # its ranges queue behind those admitted before it, whichever thread is first
            order = self.cache.ranged.reserve()
            self._pool.submit(self._fetch_admitted, url, info, future, order)
        return True

    def _async(self) -> AsyncFetcher:
        """The run's asyncio fetcher, made (and asyncio imported) on the first cold fetch."""
        with self._lock:
            if self._aio is None:
                from jitrender.aio import AsyncFetcher

                self._aio = AsyncFetcher(self.cache, self.retry, self._pool, self._stopping)
            return self._aio

    def _fetch_admitted(self, url: str, info: ObjectInfo, future: Future[Path], order: int) -> None:
        """The thread path for an admitted object: a large one's bytes go back to the budget
        range by range, as each range's request is made, so the next objects' ranges queue
        while this one's last ones are still arriving (the link never waits between them)."""
        charged = info.size if info.size >= LATENCY_BOUND_BYTES else 0
        lock = threading.Lock()

        def started(size: int) -> None:
            nonlocal charged
            with lock:  # a retry starts the ranges again: never give back more than was taken
                size, charged = min(size, charged), charged - min(size, charged)
            if size:
                self._budget.release(size)

        try:
            with self.cache.ranged.scheduled(order, started, self._stopping):
                self._fetch_and_link(url, future, info)
        finally:
            started(charged)  # whatever no range gave back (cached meanwhile, failed, small)

    def _fetched_async(
        self, url: str, info: ObjectInfo, future: Future[Path], fetched: CacheResult | BaseException
    ) -> None:
        """On the thread that ended the fetch (a writer, the loop, a pool thread): link, or
        hand anything unusual to the thread path."""
        if info.size >= LATENCY_BOUND_BYTES:
            self._budget.release(info.size)
        try:
            if isinstance(fetched, BaseException):
                raise fetched
            self._link(url, info, fetched)
        except FileNotFoundError:  # evicted before it was linked: the thread path again
            self._pool.submit(self._fetch_and_link, url, future, info)
            return
        except BaseException as exc:
            self._failed(url, future, exc)
            return
        future.set_result(self.root)

    def wait(self, frames: Iterable[int]) -> None:
        """Block until every planned dependency of ``frames`` is in the workspace; raises the
        fetch's error, or :class:`Preempted` once ``stop`` is set."""
        with self._lock:  # the frames' own, from an index (not a pass over every dependency)
            always = len(self._always)
            urls = self._always[self._always_ok :]
            for frame in dict.fromkeys(frames):
                urls.extend(self._by_frame.get(frame, ()))
            claims = list(dict.fromkeys(self._planned[url] for url in urls))
        if claims and self.stop.is_set():
            raise Preempted("stopped while waiting for dependencies")
        wanted: set[str] | None = None
        index = 0
        while index < len(claims):
            if self.stop.is_set():
                raise Preempted("stopped while waiting for dependencies")
            # A few hundred at a time, woken once when all are in (or one fails): waiting on
            # each in turn cost two thread switches per input, 1,000 in a warm run.
            head = claims[index : index + _WAIT_BATCH]
            futures_wait(head, timeout=0.2, return_when=FIRST_EXCEPTION)
            for future in head:  # the first failure, in fetch order
                if future.done() and future.exception() is not None:
                    future.result()
            if not all(future.done() for future in head):
                continue
            for future in head:  # a settled batch: the claims it handed out come next
                if isinstance(future, _BatchClaim) and future.moved:
                    wanted = set(urls) if wanted is None else wanted
                    claims.extend(f for url, f in future.moved if url in wanted)
            index += len(head)
        with self._lock:
            self._always_ok = max(self._always_ok, always)  # all in: later waits skip them

    # -- the end ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop fetching (queued prefetches are dropped) and index the run's hits and downloads
        in one transaction (the hits the feed indexed while the stages ran are not again)."""
        self._closed = True  # a dispatcher waiting for the byte budget gives up
        self._queue.put(None)
        with self._lock:
            fetcher = self._aio
        if fetcher is not None:
            fetcher.close()  # before the pool it hands work to
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            stat_pool = self._stat_pool
        if stat_pool is not None:  # listings not started yet are dropped; waits see _closed
            stat_pool.shutdown(wait=False, cancel_futures=True)
        with self._record_lock, contextlib.suppress(JitrenderError, OSError):
            self.cache.record_run(self.hits[self._hits_recorded :], list(self.fetched))
