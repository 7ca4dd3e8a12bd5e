"""The node-local content cache, shared by every job and process on the node.

Layout below the cache folder (mode 0700)::

    objects/ab/<sha256>     immutable object bytes, named by (url, generation); present = verified
    tmp/                    downloads in progress (``<sha>.<pid>.<rand>``); never read as data
                            (a small object is an unnamed file in its objects/ab until linked)
    locks/stripes           one download per object across processes: an open-file-description
                            lock on one byte per key stripe (Linux); elsewhere flock on one of
                            4096 ``locks/<n>.lock`` stripe files
    runs/<run>/             job workspaces (inputs/ hold hardlinks to objects) + run.lock
    index.sqlite            entries (size, checksum, last use) and counters; JSON-free, no pickle

Why these choices: the object file's name *is* its identity, so a changed object is a new
name and an unchanged one is never fetched again; rename-after-verify means a reader can
never see a partial file; the stripe locks die with their process (closing, or dying, releases
them), so a SIGKILL leaves no stale lock;
and workspaces see objects through hardlinks, so eviction (which skips any object with a
link count above one) can never pull a file from under a running job. The index is plain
sqlite rather than diskcache: nothing here is ever unpickled (see README, Security).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import random
import shutil
import sqlite3
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from jitrender import memo
from jitrender.cachelayout import object_file, object_key
from jitrender.errors import ConfigError, DataError, JitrenderError, TransientError
from jitrender.storage import (
    Crc32cWriter,
    ObjectInfo,
    Store,
    crc32c_of_bytes,
    crc32c_of_file,
)
from jitrender.transfer import RangedDownloader
from jitrender.transport import route, verify
from jitrender.writes import write_all

# An object's bytes already at hand (a head start's download), asked for on a miss: or None.
Held = Callable[[], bytes | None] | None
UNINDEXED_GRACE_S = 600.0  # an unindexed object file younger than this is never removed
_INDEX_OPEN_S = 30.0  # how long a cache waits for its index while other processes make it
_EVICT_BATCH = 64  # entries evicted under their locks at once, one transaction
_STRIPES = 4096  # flock stripe files, where open-file-description locks are missing
_OFD_LOCKS = hasattr(fcntl, "F_OFD_SETLKW")
_HOLD_MUTEXES = 64  # in-process mutexes over the shared descriptor's stripes (_try_hold)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks), native layout.
_FLOCK_FORMAT = "hhqqi4x"
# An unnamed file in tmp/, linked into place once whole (Linux); 0 where there is none.
_TMPFILE_FLAGS = os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC if hasattr(os, "O_TMPFILE") else 0
# One object's fetch asks for its key several times (a sha256 each, ~1 us).
_object_key = functools.lru_cache(maxsize=4096)(object_key)
# The index's schema (every statement idempotent); bump the version with any change to it.
_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    url TEXT NOT NULL,
    generation TEXT NOT NULL,
    size INTEGER NOT NULL,
    crc32c TEXT,
    created REAL NOT NULL,
    last_used REAL NOT NULL,
    uses INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS entries_lru ON entries(last_used);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO totals(name, value) SELECT 'bytes', COALESCE(SUM(size), 0) FROM entries;
CREATE TRIGGER IF NOT EXISTS entries_added AFTER INSERT ON entries
    BEGIN UPDATE totals SET value = value + NEW.size WHERE name = 'bytes'; END;
CREATE TRIGGER IF NOT EXISTS entries_removed AFTER DELETE ON entries
    BEGIN UPDATE totals SET value = value - OLD.size WHERE name = 'bytes'; END;
"""


def parse_size(
    text: str | int | None, where: str = "cache.max_size", cache_dir: Path | None = None
) -> int | None:
    """``50GB``, ``500MiB``, ``1.5 TB``, a plain byte count (pydantic's ``ByteSize``: decimal and
    binary units, any case), or None for no cap. Anything else, a negative or an infinite size
    included, is a :class:`ConfigError` naming ``where``. A size read once is read from the
    memo in ``cache_dir`` after (see :mod:`jitrender.memo`)."""
    if text is None:
        return None
    if isinstance(text, int) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{where}: {text!r} is not a size (a number of bytes, 0 or more)")
        return text
    # A farm's --cache-max-size 500GB: read by pydantic once per node, from the memo after.
    kept = memo.at("size", str(text).encode(), cache_dir)
    known = kept.recall() if kept is not None else None
    if isinstance(known, int) and not isinstance(known, bool):
        return known
    from pydantic import ValidationError

    try:
        size = int(_byte_size().validate_python(str(text)))
    except ValidationError:
        raise ConfigError(f"{where}: {text!r} is not a size (use e.g. 50GB, 500MiB)") from None
    if kept is not None:
        kept.remember(str(size))
    return size


def _byte_size() -> Any:
    """pydantic's ``ByteSize`` reader (see :mod:`jitrender.adapters`)."""
    from pydantic import ByteSize

    from jitrender.adapters import adapter

    return adapter(ByteSize)


class IndexFull(TransientError):
    """The index could not be written: the cache's disk is full."""


# What a cache folder holds (Cache.__init__ makes them): a folder with other files and none of
# these is no cache (see holds_no_cache).
CACHE_ENTRIES = frozenset({"index.sqlite", "objects", "tmp", "locks", "runs", memo.FOLDER})


def holds_no_cache(root: Path) -> bool:
    """Whether ``root`` is a folder holding files and none of a cache's (a new disk's
    ``lost+found`` aside): a folder not made yet, or empty, is a node's first cache."""
    if not root.is_dir():
        return False
    names = {entry.name for entry in root.iterdir()} - {"lost+found"}
    return bool(names) and not names & CACHE_ENTRIES


class CacheResult:
    """Where an object now is locally (:attr:`path`; :attr:`file`, the same as a string), and
    whether this call had to move it over the network. Immutable."""

    __slots__ = ("bytes_fetched", "fetched", "file")

    def __init__(self, path: str | Path, fetched: bool, bytes_fetched: int) -> None:
        # A string: a small object's fetch made three Paths it never used (about a fifth of
        # the loop thread's Python time in a py-spy --gil profile of 2,000 x 64 KiB).
        self.file = os.fspath(path)
        self.fetched = fetched
        self.bytes_fetched = bytes_fetched

    @property
    def path(self) -> Path:
        return Path(self.file)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheResult):
            return NotImplemented
        return (self.file, self.fetched, self.bytes_fetched) == (
            other.file,
            other.fetched,
            other.bytes_fetched,
        )

    def __hash__(self) -> int:
        return hash((self.file, self.fetched, self.bytes_fetched))

    def __repr__(self) -> str:
        return f"CacheResult({self.file!r}, {self.fetched}, {self.bytes_fetched})"


class Cache:
    """A size-capped, process-safe object cache. Thread-safe; one instance per process is
    enough, but any number may share one folder."""

    def __init__(self, root: Path, max_bytes: int | None = None) -> None:
        # Absolute (symlinks kept): a stage runs in its workspace, and a relative --cache-dir
        # would name its inputs and outputs folders from the wrong place.
        self.root = Path(os.path.abspath(root))
        self.max_bytes = max_bytes
        self.objects = self.root / "objects"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.runs = self.root / "runs"
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Whoever can write the cache can feed every job on the node: refuse, never repair.
            check_private_folder(self.root, follow=True)
            os.chmod(self.root, 0o700)
            for folder in (self.objects, self.tmp, self.locks, self.runs):
                folder.mkdir(exist_ok=True, mode=0o700)
                check_private_folder(folder, follow=False)
            for folder in (self.objects, self.runs):
                spread_subfolders(folder)
            for name in ("index.sqlite", "index.sqlite-wal", "index.sqlite-shm"):
                _check_own_file(self.root / name)
        except OSError as exc:
            raise ConfigError(f"{self.root}: cannot use as cache folder: {exc}") from None
        # Plain strings for the per-object paths: pathlib's joins cost more than the syscalls.
        self._objects_dir, self._tmp_dir = str(self.objects), str(self.tmp)
        self._stripes_file = str(self.locks / "stripes")
        self._checked_dirs: set[str] = set()  # objects/xx folders seen to be real and ours
        # Held descriptors of objects/xx folders, checked once when opened: a small body is
        # linked through one (no lstat of the folder per object). Never closed while the
        # cache lives (a writer may be linking through one); one gone stale is kept aside.
        self._object_dirs: dict[str, int] = {}
        self._stale_dirs: list[int] = []
        self._object_dirs_lock = threading.Lock()
        # Closed when the cache is collected, not at exit (a daemon thread may still link).
        weakref.finalize(self, _close_all, self._object_dirs, self._stale_dirs).atexit = False
        self._made_folders: dict[str, tuple[int, int]] = {}  # workspace folder -> (dev, inode)
        self._known_keys: set[str] = set()  # keys seen in the index by this process
        self._db_local = threading.local()
        self._inflight: dict[str, _Claim] = {}
        self._inflight_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._pending: list[tuple[list[tuple[object, ...]], tuple[tuple[str, int], ...]]] = []
        self._pending_lock = threading.Lock()
        self._tmpfile = bool(_TMPFILE_FLAGS)  # unnamed temp files, until one fails
        self._holds: dict[int, int] = {}  # stripe -> downloads holding it on _holds_fd
        self._holds_fd: int | None = None
        self._holds_lock = threading.Lock()  # (opening _holds_fd)
        self._hold_mutexes = [threading.Lock() for _ in range(_HOLD_MUTEXES)]
        self._clearing: dict[str, threading.Thread] = {}  # run folder -> its inputs' removal
        self._cleaner: threading.Thread | None = None  # start_cleaning_leftovers' sweep
        self.ranged = RangedDownloader()  # large objects: concurrent ranges on its own pool
        self._open_index()

    def _open_index(self) -> None:
        """Open the index, making its tables the first time. Jobs that start together on a new
        node make it at the same moment, and sqlite answers one of them "database is locked"
        at once, without its busy wait, where the connections race to switch the new file to
        WAL (1 of 200 processes here, eight at a time): that is retried, for up to
        ``_INDEX_OPEN_S``, not reported as a broken cache."""
        deadline = time.monotonic() + _INDEX_OPEN_S
        delay = 0.005
        while True:
            try:
                conn = self._connection()
                # Once per cache folder: the script sums every entry (30 ms at 300,000 of them).
                if conn.execute("PRAGMA user_version").fetchone()[0] != _SCHEMA_VERSION:
                    # One write transaction, so the running total starts from a consistent sum.
                    conn.executescript(
                        f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {_SCHEMA_VERSION};COMMIT;"
                    )
                return
            except sqlite3.Error as exc:
                busy = isinstance(exc, sqlite3.OperationalError) and (
                    "locked" in str(exc) or "busy" in str(exc)
                )
                if not busy or time.monotonic() + delay > deadline:
                    raise ConfigError(
                        f"{self.root}/index.sqlite: cannot open cache index: {exc}"
                    ) from None
                stale = getattr(self._db_local, "conn", None)
                if stale is not None:  # a fresh connection for the next try
                    with contextlib.suppress(sqlite3.Error):
                        stale.close()
                    self._db_local.conn = None
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 0.25)

    # -- identity ------------------------------------------------------------------------

    @staticmethod
    def key(info: ObjectInfo) -> str:
        return _object_key(info.url, info.generation)

    def object_path(self, info: ObjectInfo) -> Path:
        return Path(object_file(self._objects_dir, self.key(info)))  # one parse, not two joins

    # -- the index -----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._db_local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.root / "index.sqlite", timeout=60, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._db_local.conn = conn
        return conn

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        # Threads queue here, not in sqlite's busy handler, which sleeps up to 100 ms per try.
        with self._write_lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                if "full" not in str(exc):
                    raise
                raise IndexFull(
                    f"{self.root}/index.sqlite: no space left on the cache's disk ({exc})"
                ) from None

    def _record(
        self,
        infos: Iterable[ObjectInfo],
        *,
        hits: int = 0,
        misses: int = 0,
        fetched_bytes: int = 0,
        cached_bytes: int = 0,
    ) -> None:
        now = time.time()
        rows: list[tuple[object, ...]] = [
            (self.key(i), i.url, i.generation, i.size, i.crc32c, now, now) for i in infos
        ]
        counts: tuple[tuple[str, int], ...] = (
            ("hits", hits),
            ("misses", misses),
            ("bytes_fetched", fetched_bytes),
            ("bytes_from_cache", cached_bytes),
        )
        with self._pending_lock:
            self._pending.append((rows, counts))
        # Group commit: whoever holds the write lock commits every thread's queued rows in one
        # transaction, so 16 fetch threads pay for a few commits, not one each.
        with self._write_lock:
            with self._pending_lock:
                batch, self._pending = self._pending, []
            if not batch:
                return  # another thread committed ours while we waited
            with self._db() as db:
                db.executemany(
                    "INSERT INTO entries(key,url,generation,size,crc32c,created,last_used,uses)"
                    " VALUES(?,?,?,?,?,?,?,1) ON CONFLICT(key) DO UPDATE SET"
                    " last_used=excluded.last_used, uses=uses+1",
                    [row for queued, _ in batch for row in queued],
                )
                for name in ("hits", "misses", "bytes_fetched", "bytes_from_cache"):
                    value = sum(v for _, queued in batch for n, v in queued if n == name)
                    if value:
                        db.execute(
                            "INSERT INTO counters(name,value) VALUES(?,?) ON CONFLICT(name)"
                            " DO UPDATE SET value=value+excluded.value",
                            (name, value),
                        )

    def record_run(self, hits: list[ObjectInfo], fetched: list[ObjectInfo]) -> None:
        """Record a whole run's hits and downloads in one transaction: the hits' last use,
        and the counters. Downloads were indexed as they were installed, so their rows are
        not written again (2,000 rewritten rows held up the end of a cold run 0.65 s here)."""
        if hits or fetched:
            self._record(
                hits,
                hits=len(hits),
                misses=len(fetched),
                fetched_bytes=sum(i.size for i in fetched),
                cached_bytes=sum(i.size for i in hits),
            )

    # -- lookups and fetches ------------------------------------------------------------

    def lookup(self, info: ObjectInfo) -> Path | None:
        """The cached file for exactly this object version, if present and whole."""
        path = self._lookup(info)
        return None if path is None else Path(path)

    def _lookup(self, info: ObjectInfo) -> str | None:
        # On strings: a warm run asks this for every input, and pathlib cost more than the stat.
        key = self.key(info)
        path = object_file(self._objects_dir, key)
        try:
            st = os.lstat(path)  # never follows a symlink planted in place of an object
        except FileNotFoundError:
            return None  # (a cold object: one syscall, its folder need not exist)
        if key[:2] not in self._checked_dirs:
            self._check_object_dir(self.objects / key[:2])  # before anything is served through it
        mine = st.st_uid == os.geteuid() and not st.st_mode & 0o022
        whole = st.st_size == info.size and stat.S_ISREG(st.st_mode) and mine
        if whole and not self._indexed(key):
            # A file the index does not know (a crash between install and index, or not put
            # there by the cache at all): its bytes decide, never its size.
            whole = info.crc32c is not None and crc32c_of_file(Path(path)) == info.crc32c
        if not whole:
            # Torn by a power loss or tampered with: drop it rather than serve it.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return None
        return path

    def lookup_many(
        self, infos: Sequence[ObjectInfo], *, indexed_only: bool = False
    ) -> list[str | None]:
        """:meth:`lookup` of each of ``infos``, in order (as path strings), with one index query
        for the lot instead of one per object (a warm run of 1,000 inputs). ``indexed_only``:
        objects the index does not know are None without a look on disk (a cold run's are
        then looked up once, by the fetch, under their lock, where a file the index does not
        know is served if its bytes match, as here)."""
        keys = list(map(self.key, infos))
        known = self._known_keys
        wanted = [k for k in keys if k not in known]
        if wanted:
            conn = self._connection()
            for start in range(0, len(wanted), 500):  # well below sqlite's 999 variables
                chunk = wanted[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = conn.execute(f"SELECT key FROM entries WHERE key IN ({marks})", chunk)
                known.update(key for (key,) in rows)
        if indexed_only:
            return [
                self._lookup(info) if key in known else None
                for info, key in zip(infos, keys, strict=True)
            ]
        return [self._lookup(info) for info in infos]

    def _indexed(self, key: str) -> bool:
        if key in self._known_keys:
            return True
        found = self._indexed_now(key)
        if found:
            self._known_keys.add(key)  # entries are immutable: once indexed, always this file
        return found

    def _indexed_now(self, key: str) -> bool:
        """Whether the index has ``key`` now (asked again, never from this process's memo)."""
        row = self._connection().execute("SELECT 1 FROM entries WHERE key=?", (key,)).fetchone()
        return row is not None

    def _check_object_dir(self, folder: str | Path) -> None:
        """Refuse (:class:`ConfigError`) an ``objects/xx`` that is a symlink or not ours: a
        write through it would land outside the cache."""
        name = os.path.basename(folder)
        if name in self._checked_dirs:
            return
        try:
            check_private_folder(folder, follow=False)
        except FileNotFoundError:
            return
        self._checked_dirs.add(name)

    def _lock_stripe(self, key: str, *, wait: bool) -> int | None:
        """Take ``key``'s cross-process download lock: a descriptor whose ``os.close`` (or the
        process's death) releases it, or None when ``wait`` is false and someone holds it.

        Linux: an open-file-description lock on one byte of ``locks/stripes`` (a million
        stripes in one file, so no lock file is ever created per stripe: creating a file
        costs ~0.5 ms on these disks, a third of a small object's whole fetch). Locks of
        separate descriptors conflict even within one process, as flock's do. Elsewhere:
        flock on one of 4096 stripe files."""
        if _OFD_LOCKS:
            fd = os.open(self._stripes_file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            request = struct.pack(_FLOCK_FORMAT, fcntl.F_WRLCK, os.SEEK_SET, int(key[:5], 16), 1, 0)
            command = fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK
        else:
            name = f"{int(key[:6], 16) % _STRIPES:04d}.lock"
            fd = os.open(self.locks / name, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            if _OFD_LOCKS:
                fcntl.fcntl(fd, command, request)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            os.close(fd)
            if not wait and exc.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        return fd

    def _try_hold(self, key: str) -> bool:
        """:meth:`_lock_stripe` without blocking, for the asyncio path (Linux), on one
        descriptor shared by every such download of this process: two syscalls fewer per
        object than opening and closing one each (the open was the loop's top line). A stripe
        is locked once however many of this process's downloads hold it (different keys; one
        key has one download here), and unlocked when the last lets go (:meth:`_release_hold`).
        Other descriptors' locks (another process, eviction, the thread path) still conflict."""
        stripe = int(key[:5], 16)
        fd = self._holds_fd if self._holds_fd is not None else self._open_holds_fd()
        # The count and the lock of one stripe change together under its mutex, one of
        # _HOLD_MUTEXES: one mutex for all, held across the fcntl (which lets go of the GIL),
        # queued every writer and the loop behind whichever thread waited for the GIL.
        with self._hold_mutexes[stripe % _HOLD_MUTEXES]:
            held = self._holds.get(stripe, 0)
            if not held:
                request = struct.pack(_FLOCK_FORMAT, fcntl.F_WRLCK, os.SEEK_SET, stripe, 1, 0)
                try:
                    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
                except OSError as exc:
                    if exc.errno in (errno.EAGAIN, errno.EACCES):
                        return False
                    raise
            self._holds[stripe] = held + 1
            return True

    def _open_holds_fd(self) -> int:
        with self._holds_lock:
            if self._holds_fd is None:
                flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
                self._holds_fd = os.open(self._stripes_file, flags, 0o600)
            return self._holds_fd

    def _release_hold(self, key: str) -> None:
        stripe = int(key[:5], 16)
        with self._hold_mutexes[stripe % _HOLD_MUTEXES]:
            held = self._holds[stripe] - 1
            if held:
                self._holds[stripe] = held
                return
            del self._holds[stripe]
            assert self._holds_fd is not None
            request = struct.pack(_FLOCK_FORMAT, fcntl.F_UNLCK, os.SEEK_SET, stripe, 1, 0)
            fcntl.fcntl(self._holds_fd, fcntl.F_OFD_SETLK, request)

    def _stripe_held(self, key: str) -> bool:
        """True while some thread or process holds ``key``'s stripe lock (a download)."""
        try:
            fd = self._lock_stripe(key, wait=False)
        except OSError:
            return True
        if fd is None:
            return True
        os.close(fd)
        return False

    @contextlib.contextmanager
    def _stripe_lock(self, key: str) -> Iterator[None]:
        fd = self._lock_stripe(key, wait=True)
        assert fd is not None
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock, also when the process dies

    def begin(self, info: ObjectInfo) -> Download | None:
        """Become this process's one fetcher of ``info``, for a caller that moves the bytes
        itself (the asyncio path; see :class:`Download`), or None while another thread already
        fetches it (wait for it in :meth:`fetch`)."""
        key = self.key(info)
        claim = self._claim(key)
        return None if claim is None else Download(self, info, key, claim)

    def _claim(self, key: str) -> _Claim | None:
        """Become this process's one fetcher of ``key``: a claim to :meth:`_settle` when done,
        or None while another thread already fetches it (wait in :meth:`fetch`)."""
        with self._inflight_lock:
            if key in self._inflight:
                return None
            claim = self._inflight[key] = _Claim()
            return claim

    def _settle(self, key: str, claim: _Claim, outcome: CacheResult | BaseException) -> None:
        """End a :meth:`_claim`: threads waiting for the same object get ``outcome`` (the
        result, or the exception raised)."""
        with self._inflight_lock:
            self._inflight.pop(key, None)
            claim.outcome = outcome
            waiting = claim.settled
        if waiting is not None:
            waiting.set()

    def _wait_claimed(self, key: str) -> CacheResult | BaseException | None:
        """The outcome of another thread's fetch of ``key`` once it ends, or None when there
        is none under way (any more)."""
        with self._inflight_lock:
            claim = self._inflight.get(key)
            if claim is None:
                return None
            if claim.settled is None:  # the first thread to wait for it makes the Event
                claim.settled = threading.Event()
            settled = claim.settled
        settled.wait()
        return claim.outcome

    def fetch(self, info: ObjectInfo, store: Store, held: Held = None) -> CacheResult:
        """Make ``info`` present in the cache, downloading it at most once however many
        threads and processes ask at the same time. Raises the store's errors as they are
        (the caller retries), and :class:`ChecksumMismatch` on corrupt bytes. A download is
        indexed at once; hits and misses are the caller's to count (:meth:`record_run`).
        ``held``, asked only on a miss: the object's bytes already at hand and checked (a head
        start's), or None; installed instead of a download, counted as one."""
        key = self.key(info)
        claim = self._claim(key)
        if claim is None:
            found = self._wait_claimed(key)
            if found is None:  # settled between the two looks: it is cached (or failed)
                return self.fetch(info, store, held)
            if isinstance(found, BaseException):
                raise found
            return CacheResult(found.file, False, 0)
        try:
            result = self._fetch_claimed(info, store, key, held)
        except BaseException as exc:
            self._settle(key, claim, exc)
            raise
        self._settle(key, claim, result)
        return result

    def _fetch_claimed(
        self, info: ObjectInfo, store: Store, key: str, held: Held = None
    ) -> CacheResult:
        """The download itself, for the holder of ``key``'s :meth:`_claim`: waits for any other
        process fetching the same object, then finds it cached or downloads it (or installs
        ``held``'s bytes)."""
        found = self.lookup(info)
        if found is not None:
            return CacheResult(found, False, 0)
        body = held() if held is not None else None  # before the lock: it may wait a moment
        with self._stripe_lock(key):
            found = self.lookup(info)
            if found is not None:  # another process fetched it while we waited
                return CacheResult(found, False, 0)
            final = self._download_locked(info, store, key, body)
        self._record_new(info)  # indexed at once, so every process's eviction counts it
        self._maybe_evict(keep=(key,))
        return CacheResult(final, True, info.size)

    def _download_locked(
        self, info: ObjectInfo, store: Store, key: str, body: bytes | None = None
    ) -> Path:
        """Download and install ``info`` (the caller holds ``key``'s stripe lock), or install
        ``body``, the object's bytes already at hand (checked here too: the cost is small)."""
        part = self._part_path(key)
        try:
            if body is not None:  # as the asyncio path's small objects: an unnamed file, linked
                verify(info, len(body), crc32c_of_bytes(body))  # cheap (<= 1 MiB): never trusted
                final = self._install_bytes(body, key)
            else:
                if route(info, store) == "ranged":  # concurrent ranges, checksum combined
                    verify(info, info.size, self.ranged.download(info, store, Path(part)))
                    final = self._install(part, key)
                else:
                    final = self._publish(key, functools.partial(_stream_into, info, store))
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise self.no_space(info) from None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)
        return Path(final)

    def fetch_into(
        self, info: ObjectInfo, store: Store, dest: Path, held: Held = None
    ) -> CacheResult:
        """:meth:`fetch`, then :meth:`link_into` ``dest``. Another process's eviction may take
        the entry between the two (it spares only linked entries); then it is looked up, or
        fetched again, and linked while holding the entry's stripe lock (one of many keys'),
        which eviction takes before it unlinks: the second time cannot lose the race."""
        result = self.fetch(info, store, held)
        try:
            self.link_into(result.file, dest)
            return result
        except FileNotFoundError:
            if result.path.exists():
                raise  # the workspace side is missing, not the entry
        key = self.key(info)
        with self._stripe_lock(key):
            found = self.lookup(info)
            path = found if found is not None else self._download_locked(info, store, key)
            self.link_into(path, dest)  # pinned (link count 2) before eviction can look again
        if found is not None:
            return CacheResult(path, result.fetched, result.bytes_fetched)
        self._record_new(info)
        self._maybe_evict()
        return CacheResult(path, True, info.size)

    def _record_new(self, info: ObjectInfo) -> None:
        """Index ``info``'s new file. A full disk (filled by a download beside this one, often)
        is told as a download's is: the folder and the bytes the job needs there."""
        try:
            self._record([info])
        except IndexFull:
            raise self.no_space(info) from None

    def no_space(self, info: ObjectInfo) -> TransientError:
        """The one-line error for a download that found the cache's disk full. Exit 75: a
        retry on another node (or here, once other jobs' entries are evicted) may have room."""
        try:
            folder = os.statvfs(self.root)
            free = f"{folder.f_bavail * folder.f_frsize} bytes free"
        except OSError:
            free = "free space unknown"
        return TransientError(
            f"{self.root}: no space left on the cache's disk for {info.url} ({info.size} bytes "
            f"needed, {free}); free space there, cap the cache (--cache-max-size) or use a "
            "bigger --cache-dir"
        )

    def _part_path(self, key: str) -> str:
        """A private temp name in the cache's own file system (renamed into place when whole;
        ``clean_leftovers`` removes the ones a killed process left)."""
        return f"{self._tmp_dir}/{key}.{os.getpid()}.{random.getrandbits(32):08x}"

    def _install(self, part: str, key: str) -> str:
        """Publish a verified download as ``key``'s object (the path returned): read-only,
        then one atomic rename (never through a symlinked ``objects/xx``)."""
        folder = f"{self._objects_dir}/{key[:2]}"
        final = f"{folder}/{key}"
        os.chmod(part, 0o400)
        self._checked_dirs.discard(key[:2])
        self._check_object_dir(folder)
        try:
            os.replace(part, final)
        except FileNotFoundError:
            if not os.path.exists(part):
                raise
            # The first object of its objects/xx folder: made here, not looked for each time.
            with contextlib.suppress(FileExistsError):
                os.mkdir(folder, 0o700)
            self._check_object_dir(folder)
            os.replace(part, final)
        return final

    def _install_bytes(self, body: bytes, key: str) -> str:
        """:meth:`_install` of a download held in memory (see :meth:`Download.install_bytes`)."""
        return self._publish(key, lambda fd: write_all(fd, body))

    def _publish(self, key: str, write: Callable[[int], None]) -> str:
        """``write(fd)`` the object's bytes (checking them) and publish them as ``key``'s
        object (the path returned): an unnamed file (:meth:`_publish_unnamed`), else a temp
        name renamed into place (:meth:`_install`), removed whatever happens."""
        final = self._publish_unnamed(key, write)
        if final is not None:
            return final
        part = self._part_path(key)
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                write(fd)
            finally:
                os.close(fd)
            return self._install(part, key)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(part)

    def _publish_unnamed(self, key: str, write: Callable[[int], None]) -> str | None:
        """``write(fd)`` the object's bytes into a new unnamed file (Linux's ``O_TMPFILE``,
        read-only from the start) and link it, whole, as ``key``'s object: nothing is ever
        visible under a temp name and a killed process leaves nothing behind; no rename or
        chmod. None where the file system or kernel has no unnamed files (or no ``/proc`` to
        link one through): the caller then writes a temp name and renames it. What ``write``
        raises (a checksum mismatch) leaves nothing."""
        if not self._tmpfile:
            return None
        try:
            fd = self._unnamed_file(key[:2])
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
            self._tmpfile = False  # a file system (or kernel) without unnamed files
            return None
        try:
            write(fd)
            return self._link_unnamed(fd, key)
        except FileNotFoundError:
            if os.path.exists("/proc/self/fd"):
                raise
            self._tmpfile = False  # no /proc to link through: named files from now on
            return None
        finally:
            os.close(fd)

    def _unnamed_file(self, prefix: str) -> int:
        """A new unnamed file (``O_TMPFILE``, read-only from the start) in the folder its
        object will be linked into, ``objects/<prefix>``: a file's inode is allocated near
        its folder's, and the object folders are spread over the file system
        (:func:`spread_subfolders`); one ``tmp/`` for every object put them all in one ext4
        group, where each new file scans past the group's recently deleted inodes (ext4
        without a journal, a common choice for a node's scratch disk: 2 of the 3.6 s of CPU
        of 2,000 small objects were that scan, measured with ``perf``)."""
        for _attempt in range(3):
            folder = self._object_dir(prefix)
            try:
                return os.open(".", _TMPFILE_FLAGS, 0o400, dir_fd=folder)
            except (FileNotFoundError, PermissionError):
                if os.fstat(folder).st_nlink:  # (a removed folder: ENOENT, or ext4's EPERM)
                    raise
                self._forget_object_dir(prefix, folder)  # removed since it was opened
        return os.open(".", _TMPFILE_FLAGS, 0o400, dir_fd=self._object_dir(prefix))

    def _link_unnamed(self, fd: int, key: str) -> str:
        """Give the unnamed file ``fd`` its object name: linkat from ``/proc``
        (``AT_SYMLINK_FOLLOW``) into the held descriptor of its ``objects/xx`` folder, so it
        lands in the folder that was checked (never through a symlink put there since)."""
        prefix = key[:2]
        source = f"/proc/self/fd/{fd}"
        for _attempt in range(3):
            folder = self._object_dir(prefix)
            try:
                os.link(source, key, dst_dir_fd=folder, follow_symlinks=True)
                return f"{self._objects_dir}/{prefix}/{key}"
            except FileExistsError:
                # Under the lock nothing else installs it: what is there is no entry of the
                # cache's (the lookup just now found none), so it is replaced, as a rename would.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(key, dir_fd=folder)
            except FileNotFoundError:
                if not os.path.exists("/proc/self/fd"):
                    raise
                self._forget_object_dir(prefix, folder)  # removed since it was opened
        os.link(source, key, dst_dir_fd=self._object_dir(prefix), follow_symlinks=True)
        return f"{self._objects_dir}/{prefix}/{key}"

    def _object_dir(self, prefix: str) -> int:
        """The held descriptor of folder ``objects/<prefix>``, made where missing (the first
        object of its folder: made here, not looked for each time) and refused
        (:class:`ConfigError`) where it is a symlink or not the user's own."""
        fd = self._object_dirs.get(prefix)
        if fd is not None:
            return fd
        path = f"{self._objects_dir}/{prefix}"
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._object_dirs_lock:
            fd = self._object_dirs.get(prefix)
            if fd is not None:
                return fd
            try:
                fd = os.open(path, flags)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):  # (or another process made it)
                    os.mkdir(path, 0o700)
                fd = _open_dir_or_refuse(path, flags)
            except OSError:
                fd = _open_dir_or_refuse(path, flags)
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o022:
                os.close(fd)
                check_private_folder(path, follow=False)  # raises its one-line refusal
                raise ConfigError(f"{path}: changed while it was checked; refusing it")
            self._object_dirs[prefix] = fd
            return fd

    def _forget_object_dir(self, prefix: str, fd: int) -> None:
        """Drop a held folder descriptor that went stale (its folder was removed); kept open
        until the cache goes, as another thread may be linking through it right now."""
        with self._object_dirs_lock:
            if self._object_dirs.get(prefix) == fd:
                del self._object_dirs[prefix]
                self._stale_dirs.append(fd)

    def record_fetched(self, infos: list[ObjectInfo]) -> None:
        """Index objects a :class:`Download` installed (one transaction), then keep the cap
        (sparing these, which their caller has not linked yet)."""
        if infos:
            self._record(infos)
            self._maybe_evict(keep={self.key(i) for i in infos})

    def link_into(self, cached: Path | str, dest: Path | str) -> None:
        """Hardlink a cached object to ``dest`` (a copy when the workspace is on another
        filesystem). The link keeps the bytes alive even if the cache evicts the entry.
        Raises :class:`DataError` where a folder on the way (below ``runs/``) is a symlink a
        stage made: a link through it would land outside the workspace."""
        self._workspace_folder(os.path.dirname(dest) or ".")
        try:
            os.link(cached, dest)
        except FileExistsError:
            os.unlink(dest)
            os.link(cached, dest)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            with contextlib.suppress(FileNotFoundError):
                os.unlink(dest)
            shutil.copyfile(cached, dest)

    def link_many(self, pairs: Sequence[tuple[str, str]]) -> list[Exception | None]:
        """:meth:`link_into` of each ``(cached, dest)`` pair, in order; one outcome per pair:
        None, or what :meth:`link_into` would have raised (FileNotFoundError: evicted). Each
        destination folder is checked and opened once for the lot (not stat'ed per file), and
        the links are made through that descriptor: they land in the folder that was checked,
        whatever a stage renames or swaps for a symlink meanwhile."""
        out: list[Exception | None] = []
        folders: dict[str, int] = {}
        try:
            for cached, dest in pairs:
                name, base = os.path.split(dest)
                try:
                    fd = folders.get(name)
                    if fd is None:
                        fd = folders[name] = self._open_workspace_folder(name or ".")
                    try:
                        os.link(cached, base, dst_dir_fd=fd)
                    except FileExistsError:
                        os.unlink(base, dir_fd=fd)
                        os.link(cached, base, dst_dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        out.append(exc)
                        continue
                    try:  # another file system (or no hardlinks there): the copy path
                        self.link_into(cached, dest)
                    except Exception as again:
                        out.append(again)
                        continue
                except Exception as exc:
                    out.append(exc)
                    continue
                out.append(None)
        finally:
            for fd in folders.values():
                os.close(fd)
        return out

    def _open_workspace_folder(self, name: str) -> int:
        """A descriptor of workspace folder ``name`` (made and checked as
        :meth:`_workspace_folder` does), refused where it is no longer the folder checked."""
        self._workspace_folder(name)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != self._made_folders.get(name):
            os.close(fd)
            self._made_folders.pop(name, None)
            raise DataError(
                f"{name}: replaced while inputs were linked into it (by a stage?); refusing to "
                "place an input there"
            )
        return fd

    def _workspace_folder(self, name: str) -> None:
        """Make folder ``name`` and refuse symlinks on the way. A folder checked before costs
        one stat (a thousand inputs share a few folders): the path must still reach the same
        folder, which it would not once a stage swapped a folder on the way for a symlink."""
        seen = self._made_folders.get(name)
        if seen is not None:
            with contextlib.suppress(OSError):
                st = os.stat(name)
                if (st.st_dev, st.st_ino) == seen:
                    return
        folder = Path(name)
        folder.mkdir(parents=True, exist_ok=True)
        self._refuse_symlinks_below_runs(folder)
        st = os.lstat(name)
        self._made_folders[name] = (st.st_dev, st.st_ino)

    def _refuse_symlinks_below_runs(self, folder: Path) -> None:
        try:
            below = folder.relative_to(self.runs)
        except ValueError:
            return  # not a run's workspace (a standalone agent's folder): its owner's choice
        current = self.runs
        for part in below.parts:
            current = current / part
            if current.is_symlink():
                raise DataError(
                    f"{current}: is a symlink (made by a stage?); refusing to place an input "
                    "through it, outside the workspace"
                )

    # -- eviction ------------------------------------------------------------------------

    def _maybe_evict(self, keep: Collection[str] = ()) -> None:
        if self.max_bytes is None:
            return
        with self._db() as db:  # a running total kept by triggers: O(1) per fetch
            (total,) = db.execute("SELECT value FROM totals WHERE name = 'bytes'").fetchone()
        if total > self.max_bytes:
            self.evict_to(self.max_bytes, keep=keep)

    def clear_run_inputs(self, run_dir: Path) -> None:
        """Start removing ``run_dir``'s ``inputs/`` (a link per dependency: the bulk of a
        workspace) in a thread, for a run that no longer reads or links them, so that the
        unlinking overlaps the rest of its end; :meth:`end_run_dir` waits for it."""
        thread = threading.Thread(
            target=shutil.rmtree,
            args=(run_dir / "inputs",),
            kwargs={"ignore_errors": True},
            name="clear-inputs",
            daemon=True,
        )
        with self._inflight_lock:
            self._clearing[str(run_dir)] = thread
        thread.start()

    def end_run_dir(self, run_dir: Path, *, keep: bool) -> None:
        """A run's folder (from :meth:`new_run_dir`) goes, or with ``keep`` is marked kept
        (later runs on the node leave it alone; ``cache prune`` removes it); then the cache
        evicts to its cap, now that the run's links are gone. The held ``run.lock`` goes
        last: a run killed meanwhile leaves a folder that its free lock shows to be dead."""
        with self._inflight_lock:
            clearing = self._clearing.pop(str(run_dir), None)
        if clearing is not None:
            clearing.join()
        if not keep:
            remove_workspace(run_dir)
        else:
            with contextlib.suppress(OSError):
                (run_dir / KEPT_FILE).touch()
        self.keep_to_cap()

    def keep_to_cap(self) -> None:
        """Evict to the cap, quietly (best effort): a run calls it when it ends, because while
        jobs run the entries they link are spared, so a cache can stand over its cap until the
        last one ends."""
        if self.max_bytes is None:
            return
        with contextlib.suppress(JitrenderError, OSError, sqlite3.Error):
            self.evict_to(self.max_bytes)

    def evict_to(self, max_bytes: int, keep: Collection[str] = ()) -> tuple[int, int]:
        """Evict least-recently-used entries until at most ``max_bytes`` remain. Entries that a
        workspace links to (link count > 1) or that are being written are skipped.
        Returns (entries evicted, bytes evicted).

        Each entry's file and row go together under its stripe lock, the lock every install
        of that object holds: a row deleted after the lock was let go could be a newer
        install's (another process's, or a retry's after this very eviction), leaving its
        file on disk uncounted by the index and never evicted again. The locks are taken
        without waiting, up to ``_EVICT_BATCH`` at a time, and each batch's rows go in one
        transaction; an entry whose stripe is busy (a download of it, or of a stripe-mate) is
        left for the next eviction."""
        evicted = evicted_bytes = 0
        with self._db() as db:
            rows = db.execute("SELECT key, size FROM entries ORDER BY last_used ASC").fetchall()
        total = sum(size for _, size in rows)
        pending = iter(rows)
        while total > max_bytes:
            held: list[int] = []
            gone: list[str] = []
            try:
                for key, size in pending:
                    if key in keep:
                        continue  # just fetched for a caller that has not linked it yet
                    path = f"{self._objects_dir}/{key[:2]}/{key}"
                    self._check_object_dir(os.path.dirname(path))
                    with contextlib.suppress(FileNotFoundError):
                        if os.lstat(path).st_nlink > 1:
                            continue  # pinned: a running job's workspace links to it
                    fd = self._lock_stripe(key, wait=False)
                    if fd is None:
                        continue  # being downloaded (or a stripe-mate is): not now
                    held.append(fd)
                    try:
                        if os.lstat(path).st_nlink > 1:
                            continue
                        os.unlink(path)
                    except FileNotFoundError:
                        pass  # a stale row (its file was lost): only the row goes
                    else:
                        evicted += 1
                        evicted_bytes += size
                    gone.append(key)
                    total -= size
                    if total <= max_bytes or len(held) >= _EVICT_BATCH:
                        break
                # Files first, then their rows: a crash between leaves rows without files,
                # which a lookup treats as misses and the next eviction drops.
                if gone:
                    with self._db() as db:
                        db.executemany("DELETE FROM entries WHERE key=?", [(k,) for k in gone])
                    self._known_keys.difference_update(gone)
            finally:
                for fd in held:
                    os.close(fd)
            if not held:
                break  # every entry left is kept, pinned or busy
        return evicted, evicted_bytes

    # -- maintenance ---------------------------------------------------------------------

    def stats(self) -> dict[str, int | float | None]:
        with self._db() as db:
            entries, total = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size),0) FROM entries"
            ).fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            keys = [k for (k,) in db.execute("SELECT key FROM entries")]
        pinned = 0
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                st = (self.objects / key[:2] / key).stat()
                if st.st_nlink > 1:
                    pinned += st.st_size
        hits, misses = counters.get("hits", 0), counters.get("misses", 0)
        return {
            "entries": entries,
            "bytes": total,
            "max_bytes": self.max_bytes,
            "pinned_bytes": pinned,
            "hits": hits,
            "misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
            "bytes_fetched": counters.get("bytes_fetched", 0),
            "bytes_from_cache": counters.get("bytes_from_cache", 0),
        }

    def verify(self) -> dict[str, int]:
        """Re-checksum every entry against what storage said; drop bad or missing ones and
        adopt nothing unknown (orphan files are removed)."""
        checked = bad = 0
        with self._db() as db:
            rows = db.execute("SELECT key, size, crc32c FROM entries").fetchall()
        known = set()
        for key, size, crc in rows:
            known.add(key)
            path = self.objects / key[:2] / key
            self._check_object_dir(path.parent)
            checked += 1
            try:
                st = path.lstat()
                ok = stat.S_ISREG(st.st_mode) and st.st_size == size
                ok = ok and (crc is None or crc32c_of_file(path) == crc)
            except FileNotFoundError:
                ok = False
            if not ok:
                bad += 1
                with self._stripe_lock(key):  # file and row together (see evict_to)
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                    with self._db() as db:
                        db.execute("DELETE FROM entries WHERE key=?", (key,))
                    self._known_keys.discard(key)
        orphans = 0
        for path in self._object_files():
            if path.name not in known:
                orphans += 1
                with self._stripe_lock(path.name), contextlib.suppress(FileNotFoundError):
                    path.unlink()
        return {"checked": checked, "bad": bad, "orphans_removed": orphans}

    def _object_files(self) -> Iterator[Path]:
        """Every file below ``objects/xx/`` (refusing a symlinked ``xx``, never following it)."""
        with os.scandir(self.objects) as folders:
            for folder in folders:
                self._check_object_dir(Path(folder.path))
                if folder.is_dir(follow_symlinks=False):
                    with os.scandir(folder.path) as files:
                        yield from (Path(f.path) for f in files)

    def clean_leftovers(self, *, kept_too: bool = False) -> dict[str, int]:
        """Remove downloads and workspaces left by processes that died; a workspace kept with
        ``--keep-workspace`` (a ``KEPT_FILE`` in it) only with ``kept_too`` (prune, clear)."""
        parts = runs = 0
        for part in self.tmp.iterdir():
            key = part.name.split(".")[0]
            # Downloads run under their stripe lock; a free lock means the writer is gone
            # (pids alone cannot tell across containers that share the cache folder).
            if _is_key(key) and not self._stripe_held(key):
                with contextlib.suppress(OSError):
                    part.unlink()
                    parts += 1
        for run in self.runs.iterdir():
            if (
                run.is_dir()
                and not run_is_live(run)
                and (kept_too or not (run / KEPT_FILE).exists())
            ):
                shutil.rmtree(run, ignore_errors=True)
                runs += 1
        agents = 0
        for folder in self._dead_agent_folders():
            shutil.rmtree(folder, ignore_errors=True)
            agents += 1
        # A killed run may have published objects it had not indexed yet (the index is written
        # in batches, after the install): files no eviction counts. Looked for only where a run
        # is known to have died here (and by prune and clear): the scan reads every object
        # folder, which a warm run must not pay for.
        unindexed = self._remove_unindexed() if runs or kept_too else 0
        return {
            "partial_downloads_removed": parts,
            "dead_workspaces_removed": runs,
            "dead_agent_folders_removed": agents,
            "unindexed_objects_removed": unindexed,
        }

    def start_cleaning_leftovers(self) -> None:
        """:meth:`clean_leftovers` in a thread (its errors ignored, as a run ignores them), for
        a run that waits on storage meanwhile: as safe as another run's cleaner running at the
        same time, which every lock here already allows for. :meth:`leftovers_cleaned` waits."""

        def clean() -> None:
            with contextlib.suppress(OSError):
                self.clean_leftovers()

        self._cleaner = threading.Thread(target=clean, name="clean-leftovers", daemon=True)
        self._cleaner.start()

    def leftovers_cleaned(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) for :meth:`start_cleaning_leftovers`' sweep;
        whether it is over (True when none was started)."""
        if self._cleaner is not None:
            self._cleaner.join(timeout)
            if self._cleaner.is_alive():
                return False
            self._cleaner = None
        return True

    def _remove_unindexed(self, min_age_s: float = UNINDEXED_GRACE_S) -> int:
        """Remove object files the index has no row for, once they are ``min_age_s`` old (by
        the time their bytes were written). A younger one may be a live run's install that is
        about to be indexed, or a killed run's that its retry, starting now, will adopt (a
        lookup checks an unindexed file's bytes and the hit indexes it). A file whose stripe
        lock is held (a download under way) is left for next time."""
        with self._db() as db:
            known = {key for (key,) in db.execute("SELECT key FROM entries")}
        removed = 0
        old = time.time() - min_age_s
        for path in self._object_files():
            key = path.name
            if key in known:
                continue
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime > old:
                    continue
                if not _is_key(key):  # no object of the cache's: nobody downloads it
                    path.unlink()
                    removed += 1
                    continue
                fd = self._lock_stripe(key, wait=False)
                if fd is None:
                    continue
                try:
                    if not self._indexed_now(key):
                        path.unlink()
                        removed += 1
                finally:
                    os.close(fd)
        return removed

    def _dead_agent_folders(self) -> Iterator[Path]:
        """``$TMPDIR/jitrender-agent-*`` folders (socket and session of a run's agent, kept in
        the temp folder for the socket path's ~107-byte limit) whose run is gone: a killed run
        cannot remove its own. A workspace that no longer exists is a dead run whichever cache
        it was in (a live agent's workspace outlives it); an existing one is judged only when
        it is this cache's."""
        import json
        import tempfile

        runs = str(self.runs.resolve()) + os.sep
        for folder in Path(tempfile.gettempdir()).glob("jitrender-agent-*"):
            try:
                st = folder.lstat()
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    continue
                if not (folder / "session.json").exists() and time.time() - st.st_mtime > 60:
                    yield folder  # killed before its first write (a live one writes at once)
                    continue
                session = json.loads((folder / "session.json").read_text())
                workspace = Path(str(session["workspace"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # not ours to judge (or still starting)
            if not workspace.is_dir():
                yield folder  # e.g. a deleted cache's killed run: they would pile up forever
            elif str(workspace.resolve()).startswith(runs) and not run_is_live(workspace):
                yield folder  # (another cache's live-looking run, or a standalone agent: kept)

    def prune(self, max_bytes: int | None = None) -> dict[str, int]:
        cleaned = self.clean_leftovers(kept_too=True)
        cap = max_bytes if max_bytes is not None else self.max_bytes
        evicted, evicted_bytes = self.evict_to(cap) if cap is not None else (0, 0)
        return {**cleaned, "evicted": evicted, "evicted_bytes": evicted_bytes}

    def clear(self) -> dict[str, int]:
        """Evict everything that no running job is using, and forget the memo of job files
        and sizes read (``memo/``, see :mod:`jitrender.memo`): each is read afresh."""
        cleaned = self.clean_leftovers(kept_too=True)
        evicted, evicted_bytes = self.evict_to(0)
        return {**cleaned, "evicted": evicted, "evicted_bytes": evicted_bytes,
                "memo_forgotten": memo.forget(self.root)}  # fmt: skip

    # -- workspaces ------------------------------------------------------------------------

    def new_run_dir(self, name: str) -> tuple[Path, int]:
        """A fresh workspace folder below the cache (same filesystem, so hardlinks work) and
        the fd of its held ``run.lock``; the lock dies with the process."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:60]
        run_dir = self.runs / f"{safe}-{os.getpid()}-{random.getrandbits(32):08x}"
        run_dir.mkdir(mode=0o700)
        # Locked under another name, then renamed: ``run.lock`` is never there unlocked, which
        # a cleaner (another run's, or this one's in the background) would take for dead.
        fresh = run_dir / "run.lock.new"
        fd = os.open(fresh, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(fresh, run_dir / "run.lock")
        return run_dir, fd


class _Claim:
    """This process's one fetch of an object under way (:meth:`Cache._claim`): its outcome
    once settled, and an Event made only when another thread waits for it (most never see
    one: a Future's Condition per object was a tenth of the loop thread's time)."""

    __slots__ = ("outcome", "settled")

    def __init__(self) -> None:
        self.outcome: CacheResult | BaseException | None = None
        self.settled: threading.Event | None = None


class Download:
    """One object's download by a caller that moves the bytes itself (the asyncio path), from
    :meth:`Cache.begin` to :meth:`end`. Meanwhile it is this process's only fetch of the
    object: other threads asking for it wait for :meth:`end`'s outcome. The cross-process lock
    is tried without blocking (:meth:`lock_now`); when it is busy, or anything else is unusual,
    :meth:`fetch_blocking` is the thread path for the same object. Used by one task at a time.
    """

    def __init__(self, cache: Cache, info: ObjectInfo, key: str, claim: _Claim) -> None:
        self.cache = cache
        self.info = info
        self.key = key
        self._claim = claim
        self._fd: int | None = None
        self._shared = False  # held on the cache's shared descriptor (:meth:`Cache._try_hold`)

    @functools.cached_property
    def part(self) -> str:
        """Where the caller writes a streamed download's bytes (a private temp name, made on
        first use: a small object's bytes go to :meth:`install_bytes` instead)."""
        return self.cache._part_path(self.key)

    def lock_now(self) -> bool:
        """Take the object's cross-process download lock if it is free now; never blocks."""
        if _OFD_LOCKS:
            self._shared = self.cache._try_hold(self.key)
            return self._shared
        self._fd = self.cache._lock_stripe(self.key, wait=False)
        return self._fd is not None

    def cached(self) -> CacheResult | None:
        """The object, if it is in the cache already (an earlier holder of the lock put it)."""
        found = self.cache._lookup(self.info)
        return None if found is None else CacheResult(found, False, 0)

    def install(self) -> CacheResult:
        """Publish :attr:`part` (verified by the caller) under the object's name and release
        the lock. The caller indexes it (:meth:`Cache.record_fetched`), in batches."""
        final = self.cache._install(self.part, self.key)
        self._unlock()
        return CacheResult(final, True, self.info.size)

    def install_bytes(self, body: bytes) -> CacheResult:
        """Write ``body`` (the whole object, verified by the caller) and publish it under the
        object's name, then release the lock; as :meth:`install`, the caller indexes it. The
        bytes go into an unnamed file that appears, whole, with one link (Linux's
        ``O_TMPFILE``): nothing is ever visible under a temp name, nothing is left behind by
        a killed process, and there is no rename or chmod. Elsewhere: a temp name, renamed.
        Thread-safe: any thread may install, not only the one that took the lock."""
        final = self.cache._install_bytes(body, self.key)
        self._unlock()
        return CacheResult(final, True, self.info.size)

    def fetch_blocking(self, store: Store) -> CacheResult:
        """Fetch the object on the thread path instead (waiting for another process's lock;
        raising what :meth:`Cache.fetch` raises, for the caller to retry)."""
        self._discard()
        return self.cache._fetch_claimed(self.info, store, self.key)

    def end(self, outcome: CacheResult | BaseException) -> None:
        """Release what is held (the lock; the temp file of a failure) and hand ``outcome``
        to the threads waiting for this object."""
        if isinstance(outcome, BaseException):
            self._discard()
        self._unlock()
        self.cache._settle(self.key, self._claim, outcome)

    def _discard(self) -> None:
        self._unlock()
        if "part" in self.__dict__:  # a temp file may exist only once its name was made
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.part)

    def _unlock(self) -> None:
        if self._shared:
            self._shared = False
            self.cache._release_hold(self.key)
        if self._fd is not None:
            os.close(self._fd)  # closing releases the lock
            self._fd = None


def _open_dir_or_refuse(path: str, flags: int) -> int:
    """``os.open`` of a folder; where that fails, :func:`check_private_folder`'s one-line
    refusal (a symlink, not a folder), else the error as it was."""
    try:
        return os.open(path, flags)
    except OSError:
        check_private_folder(path, follow=False)
        raise


def _close_all(held: dict[str, int], stale: list[int]) -> None:
    for fd in [*held.values(), *stale]:
        with contextlib.suppress(OSError):
            os.close(fd)
    held.clear()
    stale.clear()


def _stream_into(info: ObjectInfo, store: Store, fd: int) -> None:
    """Download all of ``info`` into the new file ``fd`` in one stream, checked as it goes
    (its size and crc32c verified at the end: a mismatch raises)."""
    with open(fd, "wb", closefd=False) as handle:
        writer = Crc32cWriter(handle)
        store.download(info, writer)  # type: ignore[arg-type]
    verify(info, writer.size, writer.digest_b64())


# linux/fs.h: FS_IOC_GETFLAGS and FS_IOC_SETFLAGS (_IOR/_IOW 'f' 1/2 of a long, 64-bit ABIs)
_FS_IOC_GETFLAGS, _FS_IOC_SETFLAGS, _FS_TOPDIR_FL = 0x80086601, 0x40086602, 0x00020000
_LINUX = sys.platform == "linux" and struct.calcsize("l") == 8


def spread_subfolders(folder: str | Path) -> None:
    """Mark ``folder`` as the top of a hierarchy for ext4's Orlov allocator (``chattr +T``):
    the folders made in it are spread over the file system's block groups rather than packed
    into its own, and so are the files later made in them. Best effort: a file system
    without the flag (tmpfs, xfs, btrfs, NFS) is left as it is, as is any system but Linux."""
    if not _LINUX:
        return
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return
    try:
        flags = bytearray(8)  # (the kernel reads and writes an int at its start)
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, flags)
        value = struct.unpack_from("=i", flags)[0]
        if not value & _FS_TOPDIR_FL:
            struct.pack_into("=i", flags, 0, value | _FS_TOPDIR_FL)
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, flags)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_private_folder(folder: str | Path, *, follow: bool) -> None:
    """Raise :class:`ConfigError` (one line) unless ``folder`` is a real folder (a symlink
    only where ``follow``) owned by the running user and not writable by group or others."""
    st = os.stat(folder) if follow else os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        raise ConfigError(
            f"{folder}: is a symlink inside the cache folder; refusing to follow it "
            "(remove it, or use a fresh --cache-dir)"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(f"{folder}: is not a folder; cannot use it in the cache")
    if st.st_uid != os.geteuid():
        raise ConfigError(
            f"{folder}: cache folder is owned by {_user_name(st.st_uid)}, not by the running "
            f"user {_user_name(os.geteuid())}; refusing it (use a fresh --cache-dir)"
        )
    if st.st_mode & 0o022:
        raise ConfigError(
            f"{folder}: cache folder is writable by group or others (mode "
            f"{stat.S_IMODE(st.st_mode):04o}); refusing it (chmod 700 it, or use a fresh "
            "--cache-dir)"
        )


def _check_own_file(path: Path) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        raise ConfigError(
            f"{path}: is not a plain file of the running user {_user_name(os.geteuid())}; "
            "refusing the cache folder (use a fresh --cache-dir)"
        )


def _user_name(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


KEPT_FILE = "kept"  # in a workspace: kept for debugging, removed only by prune or clear


def _is_key(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


def remove_workspace(run_dir: Path) -> None:
    """Remove a workspace, its ``run.lock`` last (see :meth:`Cache.end_run_dir`); quietly."""
    try:
        names = os.listdir(run_dir)
    except OSError:
        return
    for name in names:
        if name == "run.lock":
            continue
        path = os.path.join(run_dir, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    with contextlib.suppress(OSError):
        os.unlink(os.path.join(run_dir, "run.lock"))
    try:
        os.rmdir(run_dir)
    except FileNotFoundError:
        pass
    except OSError:  # something landed meanwhile (a renderer's straggler)
        shutil.rmtree(run_dir, ignore_errors=True)


def run_is_live(run_dir: Path) -> bool:
    """True while the process that owns the workspace holds its ``run.lock``."""
    lock = run_dir / "run.lock"
    try:
        fd = os.open(lock, os.O_RDWR)
    except FileNotFoundError:
        # A workspace that has no lock yet may be being created right now; give it a minute.
        return time.time() - run_dir.stat().st_mtime < 60
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
