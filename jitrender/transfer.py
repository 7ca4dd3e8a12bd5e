"""How bytes move: ranged, concurrent chunk downloads of large objects and a byte budget that
keeps prefetch in frame order.

The decisions about *what* to fetch, and when, live in :mod:`jitrender.plan` and
:mod:`jitrender.inputs`; this module only moves one object's bytes into one local file as
fast as the link allows.

Large objects are split into ranges, all objects' ranges in one queue (the earliest admitted
object's first) served by a fixed set of worker threads, each range written in place with
``os.pwrite`` into a preallocated file; each range is checksummed as it arrives and the
CRC32C values are combined (GF(2) arithmetic, microseconds) into the whole object's CRC32C,
so verifying needs no second read of the file. Where workers are idle, the range taken from
the queue is shared out among them (a lone object over several connections), and once the
queue runs dry an idle worker takes the far half of the range with the most bytes still to
come (that range's reader stops at the new end), so connections finish together instead of
one range's tail arriving alone.
"""

from __future__ import annotations

import base64
import contextlib
import heapq
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import CancelledError
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from jitrender.errors import Preempted
from jitrender.storage import ChecksumMismatch, ObjectInfo, Store

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
# A range already arriving is cut (its connection dropped, with the bytes in flight) only when
# at its pace so far it would still take this long (a stalled one: forever), it is this old
# (a younger one's pace is not known yet) and this much of it is still to come: the far half
# then saves more link time than the bytes in flight that the cut wastes.
CUT_ETA_S = 0.5
CUT_AGE_S = 0.1
CUT_MIN_BYTES = 2 * PIECE_BYTES
# How long a worker finding the queue empty waits for new ranges before cutting one: longer
# than admitting the next object takes, so only the end of a batch (or a lull) is cut.
SPLIT_AFTER_S = 0.02
READ_PIECE_BYTES = 1 << 20  # the most a store reads per write (GCSStore: 1 MiB pieces)

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


class _RangeCut(Exception):
    """Raised by a range's sink once it reaches an end another worker moved: the store stops
    reading (and drops the connection, whose response was not read to its end)."""


class _Range:
    """One range being fetched, ``[start, end)`` with ``offset`` written so far. ``end`` only
    moves down, when another worker takes the far part (:meth:`split`)."""

    __slots__ = ("began", "crc", "cut", "download", "end", "lock", "offset", "start")

    def __init__(self, download: _Download, start: int, end: int) -> None:
        self.download = download
        self.start = start
        self.end = end
        self.offset = start
        self.cut = False
        self.lock = threading.Lock()
        self.crc = 0  # CRC32C of the bytes written so far
        self.began = time.monotonic()

    def eta(self, now: float, min_age: float) -> float:
        """Seconds until the rest arrives at the pace so far (infinite when nothing came);
        0 while younger than ``min_age``."""
        age = now - self.began
        if age < min_age:
            return 0.0
        done = self.offset - self.start
        return (self.end - self.offset) * age / done if done else float("inf")

    def split(self, min_bytes: int) -> _Range | None:
        """The far part of what is still to come, now another worker's (None when less than
        ``min_bytes`` is left). The reader may be reading a piece past ``offset`` right now:
        the cut leaves it that piece."""
        with self.lock:
            left = self.end - self.offset
            if left < min_bytes:
                return None
            middle = self.offset + max(READ_PIECE_BYTES, left // 2)
            if middle >= self.end:
                return None
            tail = _Range(self.download, middle, self.end)
            self.end, self.cut = middle, True
            return tail

    def write(self, data: bytes) -> int:
        """Write ``data`` in place at ``offset`` and checksum it; never past ``end``."""
        with self.lock:
            offset = self.offset
            count = min(len(data), self.end - offset)
            self.offset = offset + count  # claimed before writing: a split starts past it
            cut = self.cut
        if count < len(data):
            if not cut:
                raise ChecksumMismatch("server sent more bytes than the range asked for")
            data = data[:count]
        if data:
            self.crc = google_crc32c.extend(self.crc, data)
            view = memoryview(data)
            while view:
                written = os.pwrite(self.download.fd, view, offset)
                offset += written
                view = view[written:]
        if cut and self.offset >= self.end:
            raise _RangeCut  # the rest is another worker's: stop reading
        return count

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
        self.done = threading.Event()

    def add_range(self) -> None:
        """One more range to settle (a split): called before the split range can settle."""
        with self.lock:
            self.remaining += 1

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
    other workers are idle and nothing else is queued is shared out with them, in pieces of
    at least ``piece_bytes`` (no bytes wasted: none was asked for yet). A worker that finds
    the queue empty for ``split_after_s`` cuts the range that would end last at its pace so
    far (at least ``cut_eta_s`` away, ``cut_min_bytes`` to come) and fetches its far half, so
    no connection idles long while another one's last range, or a stalled one, arrives."""

    def __init__(
        self,
        chunk_bytes: int | None = None,
        workers: int = CHUNK_WORKERS,
        *,
        piece_bytes: int = PIECE_BYTES,
        cut_min_bytes: int = CUT_MIN_BYTES,
        cut_eta_s: float = CUT_ETA_S,
        cut_age_s: float = CUT_AGE_S,
        split_after_s: float = SPLIT_AFTER_S,
    ) -> None:
        self.chunk_bytes = chunk_bytes
        self.workers = workers
        self.piece_bytes = piece_bytes
        self.cut_min_bytes = cut_min_bytes
        self.cut_eta_s = cut_eta_s
        self.cut_age_s = cut_age_s
        self.split_after_s = split_after_s
        self._cond = threading.Condition()
        self._queue: list[tuple[int, int, int, int, _Download]] = []  # a heap
        self._active: set[_Range] = set()  # being fetched: what a split takes from
        self._order = itertools.count()
        self._tie = itertools.count()
        self._threads = 0
        self._idle = 0
        self._generation = 0  # bumped by close: the workers of an older one leave
        self._scope = threading.local()

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
            # All of them at the first ranges: those the queue does not need may split one.
            for _ in range(self.workers - self._threads):
                self._threads += 1
                threading.Thread(
                    target=self._work,
                    args=(self._generation,),
                    name=f"chunk-{self._threads}",
                    daemon=True,  # a stopping run exits without waiting for a range
                ).start()
            self._cond.notify_all()  # the idle ones too: those the queue does not need may split

    def _next(self, generation: int) -> tuple[_Range, bool] | None:
        """The next range for a worker (the caller holds ``_cond``) and whether it is a fresh
        one from the queue (not a split); None once :meth:`close` retired this worker."""
        idle_since = 0.0
        while generation == self._generation:
            if self._queue:
                order, start, tie, end, download = heapq.heappop(self._queue)
                if not self._queue and self._idle:
                    end = self._share(order, start, tie, end, download)
                return _Range(download, start, end), True
            now = time.monotonic()
            if idle_since and now - idle_since >= self.split_after_s:
                tail = self._split()
                if tail is not None:
                    return tail, False
            idle_since = idle_since or now
            self._idle += 1
            # Woken for new ranges; meanwhile, while others fetch, look again for one to split.
            self._cond.wait(self.split_after_s if self._active else None)
            if generation != self._generation:
                return None  # close reset the counts this worker was in
            self._idle -= 1
        return None

    def _share(self, order: int, start: int, tie: int, end: int, download: _Download) -> int:
        """Split ``[start, end)`` into pieces for this worker and the idle ones (the caller
        holds ``_cond``): the later pieces go back to the queue's front, the new end of this
        worker's piece is returned."""
        pieces = min(self._idle + 1, (end - start) // self.piece_bytes)
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

    def _split(self) -> _Range | None:
        """The far half of the active range that would end last at its pace so far, where
        that is more than ``cut_eta_s`` away (the caller holds ``_cond``, so that range cannot
        settle meanwhile), registered with its download."""
        now = time.monotonic()
        etas = sorted(((r.eta(now, self.cut_age_s), id(r), r) for r in self._active), reverse=True)
        for eta, _id, victim in etas:
            if eta < self.cut_eta_s:
                break  # the slowest ends soon enough: so do the others
            download = victim.download
            if download.error is not None or (
                download.should_stop is not None and download.should_stop()
            ):
                continue
            tail = victim.split(self.cut_min_bytes)
            if tail is not None:
                download.add_range()
                return tail
        return None

    def _work(self, generation: int) -> None:
        while True:
            with self._cond:
                picked = self._next(generation)
                if picked is None:
                    return
                work, fresh = picked
                self._active.add(work)
            try:
                result, error = self._run(work, fresh)
            finally:
                with self._cond:
                    self._active.discard(work)
            work.download.settle(result, error)  # after leaving _active: no split after this

    @staticmethod
    def _run(work: _Range, fresh: bool) -> tuple[ChunkResult | None, BaseException | None]:
        """Fetch one range: its result, or the error that failed it (None, None: skipped)."""
        download = work.download
        if fresh and download.on_start is not None:
            download.on_start(work.end - work.start)  # a split's bytes were counted already
        if download.error is not None:  # another range failed: no point asking for this one
            return None, None
        if download.should_stop is not None and download.should_stop():
            return None, Preempted("stopped while fetching")
        info = download.info
        try:
            with contextlib.suppress(_RangeCut):  # the rest is another worker's range
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
            self._idle = 0
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


def listing_ranges(urls: list[str], min_group: int = 8) -> list[tuple[str, str, str]]:
    """``(prefix, first, last)`` listings worth doing instead of one stat per file: for each
    folder holding at least ``min_group`` of ``urls`` (a sequence's frames, a texture set), the
    longest common prefix of their names and the first and last of them. A store lists just
    that range (:meth:`Store.list_range`), so 10 frames of a 100,000-frame sequence cost one
    short listing whatever their numbers, instead of ten stats."""
    by_folder: dict[str, list[str]] = {}
    for url in urls:
        folder, _, name = url.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    ranges = []
    for folder, names in by_folder.items():
        if len(names) >= min_group:
            # Character-wise on purpose: "plate.10" narrows a listing, path components cannot.
            prefix = f"{folder}/{os.path.commonprefix(names)}"  # noqa: RUF071
            ranges.append((prefix, f"{folder}/{min(names)}", f"{folder}/{max(names)}"))
    return ranges
