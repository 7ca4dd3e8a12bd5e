"""How bytes move: ranged, concurrent chunk downloads of large objects and a byte budget that
keeps prefetch in frame order.

The decisions about *what* to fetch, and when, live in :mod:`jitrender.plan` and
:mod:`jitrender.inputs`; this module only moves one object's bytes into one local file as
fast as the link allows.

Large objects are split into ranges, all objects' ranges in one queue (the earliest admitted
object's first) served by a fixed set of worker threads, each range written in place with
``os.pwrite`` into a preallocated file; each range is checksummed as it arrives and the
CRC32C values are combined (GF(2) arithmetic, microseconds) into the whole object's CRC32C,
so verifying needs no second read of the file. A range taken while more workers are free
than ranges are queued is shared out among them (a lone object goes over several
connections, and the end of a batch finishes together).
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from jitrender.errors import Preempted
from jitrender.storage import ChecksumMismatch, ObjectInfo, Store
from jitrender.writes import pwrite_all

# Objects at least this large are fetched as ranges: measured on the Overlap benchmark, one
# object at a time over several connections beats 16 objects sharing the link.
LARGE_OBJECT_BYTES = 8 << 20
# One request per object up to this size: each request costs a round trip to first byte, and
# with many objects queued their ranges already keep every connection busy. A lone object is
# still spread over the idle workers (PIECE_BYTES each), see RangedDownloader.
MIN_CHUNK_BYTES = 16 << 20
MAX_CHUNK_BYTES = 32 << 20
CHUNK_BYTES = 16 << 20
# Connections in flight: at 20 ms to first byte a connection idles between its ranges, so the
# link needs more busy ones than its share per connection (4 x 100 MB/s on a 400 MB/s node).
CHUNK_WORKERS = 12
# The smallest range a split makes: below it the request's round trip outweighs its bytes.
PIECE_BYTES = 4 << 20

_CRC32C_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _mult_mod_p(a: int, b: int) -> int:
    """a * b modulo the CRC32C polynomial (reflected bit order), as in zlib's multmodp."""
    m = 1 << 31
    product = 0
    while True:
        if a & m:
            product ^= b
            if (a & (m - 1)) == 0:
                break
        m >>= 1
        b = (b >> 1) ^ _CRC32C_POLY if b & 1 else b >> 1
    return product


def _x2n_table() -> tuple[int, ...]:
    table = [1 << 30]  # x^1
    for _ in range(31):
        table.append(_mult_mod_p(table[-1], table[-1]))
    return tuple(table)


_X2N = _x2n_table()


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC32C of ``A + B`` from ``crc(A)``, ``crc(B)`` and ``len(B)``."""
    factor = 1 << 31  # x^0
    n, k = len2, 3  # x^(8 * len2): bytes to bits
    while n:
        if n & 1:
            factor = _mult_mod_p(_X2N[k & 31], factor)
        n >>= 1
        k += 1
    return _mult_mod_p(factor, crc1) ^ crc2


def crc32c_b64(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


@dataclass(frozen=True)
class ChunkResult:
    start: int
    size: int
    crc32c: int


class _Range:
    """One range being fetched, ``[start, end)``, written in place as it arrives (never past
    ``end``) and checksummed on the way."""

    __slots__ = ("crc", "download", "end", "offset", "start")

    def __init__(self, download: _Download, start: int, end: int) -> None:
        self.download = download
        self.start = start
        self.end = end
        self.offset = start
        self.crc = 0  # CRC32C of the bytes written so far

    def write(self, data: bytes) -> int:
        offset = self.offset
        if offset + len(data) > self.end:
            raise ChecksumMismatch("server sent more bytes than the range asked for")
        self.crc = google_crc32c.extend(self.crc, data)
        with self.download.write_lock:
            self.offset = pwrite_all(self.download.fd, data, offset)
        return len(data)

    def flush(self) -> None:
        return None

    def result(self) -> ChunkResult:
        return ChunkResult(self.start, self.offset - self.start, self.crc)


def chunk_ranges(size: int, chunk_bytes: int = CHUNK_BYTES) -> list[tuple[int, int]]:
    """``[start, end)`` ranges that tile ``[0, size)``; the last one may be shorter."""
    return [(start, min(start + chunk_bytes, size)) for start in range(0, size, chunk_bytes)]


class _Download:
    """One object's ranges as the scheduler sees them: settled one by one, by any worker."""

    def __init__(
        self,
        info: ObjectInfo,
        store: Store,
        fd: int,
        count: int,
        scope: _Scope | None,
    ) -> None:
        self.info = info
        self.store = store
        self.fd = fd
        self.on_start = scope.on_start if scope is not None else None
        self.should_stop = scope.should_stop if scope is not None else None
        self.results: list[ChunkResult] = []
        self.error: BaseException | None = None
        self.remaining = count
        self.lock = threading.Lock()
        # One range's write into the file at a time: ext4 takes the file's lock for each
        # write, and ranges writing at once spun on it in the kernel (perf: 24% of the
        # samples in rwsem_spin_on_owner, 4 x 512 MiB); waiting here sleeps instead. Measured
        # through the link (ab, 2 x 3 rounds): CPU 8.3 and 6.5 s -> 5.0 and 4.8 s.
        self.write_lock = threading.Lock()
        self.done = threading.Event()

    def settle(self, result: ChunkResult | None, error: BaseException | None) -> None:
        with self.lock:
            if result is not None:
                self.results.append(result)
            if error is not None and self.error is None:
                self.error = error  # the first failure is the one reported
            self.remaining -= 1
            if self.remaining == 0:
                self.done.set()


@dataclass(frozen=True)
class _Scope:
    order: int
    on_start: Callable[[int], None] | None
    should_stop: Callable[[], bool] | None


class RangedDownloader:
    """Fetches large objects as ranges, from one queue for every object in the process,
    served by ``workers`` threads kept for the life of the owner (each keeps its warm
    connection between objects).

    The queue is ordered by when each download was asked for (or by the order reserved for it
    with :meth:`reserve` and :meth:`scheduled`), then by offset: the earliest object's ranges
    always go first, and a worker that finds the current object's ranges all taken starts on
    the next object's at once, so the link never idles between objects. A range taken while
    more workers are free than ranges are queued is shared out with those, in pieces of at
    least ``piece_bytes`` (none of it was asked for yet: no bytes are wasted).

    The end game: where the owner says how many bytes are still to be asked for
    (:attr:`pending`), a range taken once those would no longer keep every worker busy with
    a range of its size is cut into ``piece_bytes`` pieces. Whole ranges at the end left the
    last few connections finishing alone, at their own share of the link (the shot through
    the link stand-in: its last 1% at ~200 MB/s of 400); pieces that small end within
    milliseconds of each other."""

    def __init__(
        self,
        chunk_bytes: int | None = None,
        workers: int = CHUNK_WORKERS,
        *,
        piece_bytes: int = PIECE_BYTES,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.workers = workers
        self.piece_bytes = piece_bytes
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, int, int, _Download]] = []  # a heap
        self._busy = 0  # workers fetching a range
        self._order = itertools.count()
        self._tie = itertools.count()
        self._threads = 0
        self._generation = 0  # bumped by close: the workers of an older one leave
        self._scope = threading.local()
        # The bytes still to be asked for, queued ranges included (None: not known, no end
        # game). Called with ``_cond`` held: it must take no lock this class could wait on.
        self.pending: Callable[[], int] | None = None

    def chunk_size_for(self, size: int) -> int:
        """One range per worker, each between 16 and 32 MiB."""
        return min(MAX_CHUNK_BYTES, max(MIN_CHUNK_BYTES, -(-size // self.workers)))

    # -- ordering --------------------------------------------------------------------------

    def reserve(self) -> int:
        """A place in the queue, for a download that will be asked for later (prefetch
        admits objects in frame order, then hands them to threads that may race)."""
        return next(self._order)

    @contextlib.contextmanager
    def scheduled(
        self,
        order: int,
        on_start: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Iterator[None]:
        """Downloads this thread asks for inside the block take the place ``order``; each of
        their ranges calls ``on_start(bytes)`` when its request is made (or the range is
        dropped), and ranges not started once ``should_stop()`` is true are dropped (the
        download then raises :class:`~jitrender.errors.Preempted`)."""
        previous = getattr(self._scope, "value", None)
        self._scope.value = _Scope(order, on_start, should_stop)
        try:
            yield
        finally:
            self._scope.value = previous

    # -- the workers -----------------------------------------------------------------------

    def _submit(self, download: _Download, order: int, ranges: list[tuple[int, int]]) -> None:
        with self._cond:
            for start, end in ranges:
                heapq.heappush(self._queue, (order, start, next(self._tie), end, download))
            # All of them at the first ranges: a range taken while others are free is shared.
            for _ in range(self.workers - self._threads):
                self._threads += 1
                threading.Thread(
                    target=self._work,
                    args=(self._generation,),
                    name=f"chunk-{self._threads}",
                    daemon=True,  # a stopping run exits without waiting for a range
                ).start()
            self._cond.notify(len(ranges))

    def _next(self, generation: int) -> _Range | None:
        """The next range for a worker (the caller holds ``_cond``); None once :meth:`close`
        retired this worker."""
        while generation == self._generation:
            if self._queue:
                order, start, tie, end, download = heapq.heappop(self._queue)
                # Workers idle (or just started) that no queued range will keep busy.
                spare = self._threads - self._busy - 1 - len(self._queue)
                most = (end - start) // self.piece_bytes
                if spare > 0:
                    end = self._split(order, start, tie, end, download, min(spare + 1, most))
                elif most >= 2 and self._end_game(end - start):
                    end = self._split(order, start, tie, end, download, most)
                return _Range(download, start, end)
            self._cond.wait()
        return None

    def _end_game(self, size: int) -> bool:
        """Whether the bytes still to be asked for (this range's included) are too few to keep
        every worker busy with a range of ``size``."""
        return self.pending is not None and self.pending() <= self.workers * size

    def _split(
        self, order: int, start: int, tie: int, end: int, download: _Download, pieces: int
    ) -> int:
        """Split ``[start, end)`` into ``pieces`` (the caller holds ``_cond``): the later pieces
        go back to the queue's front, for other workers; returns the end of this worker's
        piece."""
        if pieces < 2:
            return end
        size = -(-(end - start) // pieces)
        cuts = list(range(start, end, size))[1:]
        with download.lock:
            download.remaining += len(cuts)  # before any piece can settle
        for index, cut in enumerate(cuts):
            last = cuts[index + 1] if index + 1 < len(cuts) else end
            heapq.heappush(self._queue, (order, cut, tie, last, download))
        self._cond.notify(len(cuts))
        return cuts[0]

    def _work(self, generation: int) -> None:
        while True:
            with self._cond:
                work = self._next(generation)
                if work is None:
                    return
                self._busy += 1
            try:
                result, error = self._run(work)
            finally:
                with self._cond:
                    if generation == self._generation:  # close reset the count
                        self._busy -= 1
            work.download.settle(result, error)

    @staticmethod
    def _run(work: _Range) -> tuple[ChunkResult | None, BaseException | None]:
        """Fetch one range: its result, or the error that failed it (None, None: skipped)."""
        download = work.download
        if download.on_start is not None:
            download.on_start(work.end - work.start)
        if download.error is not None:  # another range failed: no point asking for this one
            return None, None
        if download.should_stop is not None and download.should_stop():
            return None, Preempted("stopped while fetching")
        info = download.info
        try:
            download.store.download(info, work, work.start, work.end)  # type: ignore[arg-type]
            if work.offset != work.end:
                raise ChecksumMismatch(
                    f"{info.url}: range {work.start}-{work.end} gave "
                    f"{work.offset - work.start} bytes, not {work.end - work.start}"
                )
        except BaseException as exc:
            return None, exc
        return work.result(), None

    # -- the download ----------------------------------------------------------------------

    def download(self, info: ObjectInfo, store: Store, dest: Path) -> str:
        """Fetch ``info`` into the new file ``dest`` and return the whole object's CRC32C
        (base64), for the caller to check (:func:`jitrender.transport.verify`). Raises
        :class:`ChecksumMismatch` when any range comes back short or long; ``dest`` is then
        left for the caller to delete. Store errors propagate unchanged (the caller retries)."""
        scope: _Scope | None = getattr(self._scope, "value", None)
        order = scope.order if scope is not None else next(self._order)
        ranges = chunk_ranges(info.size, self.chunk_bytes or self.chunk_size_for(info.size))
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if info.size:
                # Reserve the space up front: no ENOSPC half way, no fragmentation from writers.
                try:
                    os.posix_fallocate(fd, 0, info.size)
                except OSError:
                    os.ftruncate(fd, info.size)
            download = _Download(info, store, fd, len(ranges), scope)
            if ranges:
                self._submit(download, order, ranges)
                download.done.wait()  # never close the fd under a range still writing
        finally:
            os.close(fd)
        if download.error is not None:
            raise download.error
        whole = 0
        for result in sorted(download.results, key=lambda r: r.start):
            whole = crc32c_combine(whole, result.crc32c, result.size)  # left to right
        return crc32c_b64(whole)  # the caller checks it: jitrender.transport.verify

    def close(self) -> None:
        """Drop the queued ranges (their downloads raise ``CancelledError``) and let the
        workers go once their current range is done; a later download starts new ones."""
        with self._cond:
            queued, self._queue = self._queue, []
            self._generation += 1
            self._threads = 0
            self._busy = 0
            self._cond.notify_all()
        for _order, _start, _tie, _end, download in queued:
            download.settle(None, CancelledError())


class InflightBudget:
    """Admits downloads in the order they ask, while the bytes admitted and not yet given back
    stay under a cap (the caller gives a large object's bytes back range by range, as each
    range's request is made, and a small one's when it has arrived).

    Prefetch submits every frame's dependencies at once; without a cap, frame N+20's files
    share the link with frame N+1's and the next frame to render waits longest. The first
    waiter is always admitted when nothing is in flight, so one object larger than the cap
    still proceeds (alone). ``should_stop`` is polled while waiting."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._cond = threading.Condition()
        self._inflight = 0
        self._next_ticket = 0
        self._serving = 0

    def acquire(self, size: int, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait for this download's turn; False if ``should_stop`` became true meanwhile (the
        run is stopping, so later waiters stop too)."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            while not (
                self._serving == ticket
                and (self._inflight == 0 or self._inflight + size <= self.max_bytes)
            ):
                if should_stop():
                    return False
                self._cond.wait(0.2)
            self._serving += 1
            self._inflight += size
            self._cond.notify_all()
            return True

    def try_acquire(self, size: int) -> bool:
        """Take ``size`` bytes now if nobody waits ahead and they fit; never blocks."""
        with self._cond:
            if self._serving != self._next_ticket:
                return False
            if self._inflight and self._inflight + size > self.max_bytes:
                return False
            self._next_ticket += 1
            self._serving += 1
            self._inflight += size
            return True

    def release(self, size: int) -> None:
        with self._cond:
            self._inflight -= size
            self._cond.notify_all()

    @property
    def inflight(self) -> int:
        """The bytes admitted and not yet given back (read without the lock: a glance)."""
        return self._inflight


def listing_ranges(urls: list[str], min_group: int = 8) -> list[tuple[str, str, str]]:
    """``(prefix, first, last)`` listings worth doing instead of one stat per file: for each
    folder holding at least ``min_group`` of ``urls`` (a sequence's frames, a texture set), the
    longest common prefix of their names and the first and last of them. A store lists just
    that range (:meth:`Store.list_range`), so 10 frames of a 100,000-frame sequence cost one
    short listing whatever their numbers, instead of ten stats."""
    return [listing for listing, _ in listing_groups(urls, min_group)[0]]


def listing_groups(
    urls: Iterable[str], min_group: int = 8
) -> tuple[list[tuple[tuple[str, str, str], list[str]]], list[str]]:
    """:func:`listing_ranges`' listings, each with the URLs of ``urls`` it covers, and the URLs
    none covers (in one pass over ``urls``)."""
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        by_folder.setdefault(url.rpartition("/")[0], []).append(url)
    ranges = []
    alone: list[str] = []
    for group in by_folder.values():
        if len(group) >= min_group:
            # Character-wise on purpose: "plate.10" narrows a listing, path components cannot.
            # (Of whole URLs: they share the folder and its "/", so it is the names' one.)
            prefix = os.path.commonprefix(group)  # noqa: RUF071
            ranges.append(((prefix, min(group), max(group)), group))
        else:
            alone.extend(group)
    return ranges, alone
