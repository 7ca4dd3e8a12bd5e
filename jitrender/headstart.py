"""A run's first storage requests, started while the process still imports.

``jitrender run`` spends its first ~0.3 s importing and validating (CPU), then waits on the
network for its first answers: the scene's stat (a new connection and a request), then the
scene's listings (each on a new connection). :class:`HeadStart` does the scene's stat and
opens the listings' connections in a daemon thread from the process's first milliseconds
(:mod:`jitrender.entry`), so those waits overlap the imports instead of following them.

It only reads (the job file, a stat of the ``gs://`` scene it names, connections): a stop at
any moment leaves nothing behind. The job is not validated yet, so this is a guess the run
checks: it uses a stat only for the URL it would have asked for itself, and whatever the head
start did not finish in time the run simply does itself, with its retries.

A small scene (``BODY_MAX``) that the node's cache does not hold at the stat's generation is
also downloaded, pinned to that generation and checked against the stat's size and crc32c,
and kept in memory: the run installs those bytes into its cache (:meth:`body`) instead of a
serial download before the resolve can parse it. Nothing is written until then.

A manifest scene's listings are made ahead too: its folder lines', its plain files' (one
ranged listing per busy folder), and its frame lines' for the frames the run says it renders
(:meth:`want_frames`, called as soon as the job is read). A scene the node lacks marks a cold
run: the connections its listings and first fetches need are opened beside the scene's
download rather than after the listings.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time

TYPE_CHECKING = False  # typing's constant, not its import: see jitrender.stopping
if TYPE_CHECKING:  # the thread imports them: the process's first milliseconds start it
    from collections.abc import Callable, Sequence
    from pathlib import Path

    from jitrender.storage import ObjectInfo, Stores

# Connections open ahead for the listings the resolve runs at once (one per busy folder, on
# up to 16 threads: Inputs' default workers).
PRECONNECT = 16
_JOB_FILE_MAX = 1 << 20  # a job file is small; anything bigger is not one
# Scenes up to this size are downloaded ahead: the asyncio path's small-object size (aio's
# PIECE_BYTES, a body held whole in memory and written at once), ~10 ms at a connection's
# 100 MB/s, below one round trip; bigger ones go the cache's streamed or ranged way.
BODY_MAX = 1 << 20
# How long the run waits for a download the head start has under way before doing its own.
BODY_WAIT_S = 1.0
# A manifest's listings made ahead, at most (a bigger one's are left to the run).
LIST_AHEAD_MAX = 64
# Frame lines are listed ahead for at most this many frames (a sequence's range listing then
# comes in one page of 1,000 objects; a bigger task's are left to the run).
FRAMES_AHEAD_MAX = 1000


class HeadStart:
    """Stats ``urls``, or the scenes that the job files among ``job_files`` name (and opens
    connections to their storage), in a background thread, through ``stores`` (created on
    first use where not given), which the run then uses for everything else (the connections
    are in its pools)."""

    def __init__(
        self,
        stores: Stores | None = None,
        *,
        urls: Sequence[str] = (),
        job_files: Sequence[str] = (),
        cache_dir: Path | None = None,
    ) -> None:
        self._stores = stores
        self._stores_lock = threading.Lock()
        self._job_files: Sequence[str] = job_files
        # The node cache the run will use, where known: small scenes it lacks are downloaded.
        self.cache_dir = cache_dir
        self._run_args: Sequence[str] | None = None  # ``jitrender run``'s, read by the thread
        self._bodies: dict[tuple[str, str], bytes] = {}  # (url, generation) -> checked bytes
        self._fetching: set[str] = set()  # URLs whose download is under way
        self._fetched = threading.Event()
        self._asked: list[str] = list(urls)  # what the thread stats, once it has read the files
        self._found: list[ObjectInfo] = []
        self._read = threading.Event()
        # Set once the thread holds what its first request needs (the storage code, the
        # HTTP client), before any request: the process's other imports wait for it.
        self.imported = threading.Event()
        self._stated = threading.Event()
        # A manifest scene's listings made ahead: its folder lines' (by prefix), and the stats
        # of its plain files (from ranged listings, or one stat each).
        self._listed: dict[str, list[ObjectInfo]] = {}
        self._list_stats: list[ObjectInfo] = []
        self._listings_done = threading.Event()
        # The frames the run renders, once it has read the job (want_frames): a manifest's
        # frame lines are listed ahead for them too.
        self._frames: tuple[int, ...] | None = None
        self._frames_given = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head-start", daemon=True)

    @classmethod
    def for_run_args(cls, args: Sequence[str]) -> HeadStart:
        """A head start for ``jitrender run ARGS``: the job file is one of the arguments that
        are files (which one only typer knows yet: option values are files too). Cheap: the
        thread reads the files and imports the storage code."""
        head_start = cls()
        head_start._run_args = list(args)
        return head_start

    @property
    def stores(self) -> Stores:
        """The stores the head start's requests go through (the run's from then on)."""
        with self._stores_lock:
            if self._stores is None:
                from jitrender.storage import Stores

                self._stores = Stores()
            return self._stores

    def start(self) -> HeadStart:
        self._thread.start()
        return self

    def asks_for(self, url: str, timeout: float = 1.0) -> bool:
        """Whether this head start stats ``url`` (waiting up to ``timeout`` seconds for it to
        read the job files, a matter of microseconds once it runs)."""
        self._read.wait(timeout)
        return url in self._asked

    def want_frames(self, frames: Sequence[int]) -> None:
        """The frames the run renders (this task's, known once the job is read): a manifest
        scene's frame lines are listed ahead for them as well (up to ``FRAMES_AHEAD_MAX``
        frames; the thread waits up to ``BODY_WAIT_S`` for them where the manifest has such
        lines). A guess like the rest: the run's resolve asks for whatever it lacks."""
        self._frames = tuple(frames)
        self._frames_given.set()

    def _run(self) -> None:
        try:
            if self._run_args is not None:
                files = [a for a in self._run_args if not a.startswith("-")]
                self._job_files = files
                self.cache_dir = _cache_dir_of(self._run_args, files)
            if not self._asked:
                self._asked = _scenes_named(self._job_files)
            self._read.set()
            if any(url.startswith("gs://") for url in self._asked):
                from jitrender.preopen import open_early

                open_early()  # the first request's connection, while its client imports
                with contextlib.suppress(ImportError):  # the run says what is missing
                    import urllib3  # noqa: F401  (gs:// reads' HTTP client: most of the wait)

                    from jitrender.storage import GCSStore  # noqa: F401
            self.imported.set()
            stores = []
            for url in self._asked:
                # Any failure is left to the run, which asks again with its retries.
                with contextlib.suppress(Exception):
                    store = self.stores.for_url(url)
                    stores.append((store, url))
                    info = store.stat(url)
                    if info is not None and info.url == url:
                        self._found.append(info)
            # The stats are what the run waits for; the connections it only finds in its pool.
            self._fetching = {i.url for i in self._found if self._wants_body(i)}
            self._stated.set()
            if self._fetching:
                # A scene the node lacks: a cold run, whose listings and first fetches follow
                # the scene's download within milliseconds. Their connections open now,
                # beside that download (one round trip each saved off the first bytes; a
                # warm run, whose scene is cached, opens them only after its own requests).
                for store, url in stores:
                    threading.Thread(
                        target=_quietly, args=(store.preconnect, url, PRECONNECT), daemon=True
                    ).start()
            for info in list(self._found):
                if info.url in self._fetching:
                    with contextlib.suppress(Exception):  # the run downloads it itself
                        self._download(info)
                    self._fetching.discard(info.url)
            self._fetched.set()
            for info in list(self._found):
                with contextlib.suppress(Exception):  # the run lists for itself
                    self._list_ahead(info)
            self._listings_done.set()
            for store, url in stores:
                with contextlib.suppress(Exception):
                    store.preconnect(url, PRECONNECT)
        finally:
            self._read.set()
            self.imported.set()
            self._stated.set()
            self._fetching = set()
            self._fetched.set()
            self._listings_done.set()

    def _wants_body(self, info: ObjectInfo) -> bool:
        """Whether to download ``info`` ahead: small, checkable, and not in the node's cache
        at this generation (one lstat: a warm run asks storage for no bytes)."""
        if self.cache_dir is None or info.size > BODY_MAX or info.crc32c is None:
            return False
        return not os.path.lexists(_cached_object(self.cache_dir, info))

    def _download(self, info: ObjectInfo) -> None:
        from jitrender.storage import crc32c_of_bytes

        sink = _Capped(info.size)
        self.stores.for_url(info.url).download(info, sink)  # type: ignore[arg-type]
        body = b"".join(sink.pieces)
        # Checked here, so only exactly the stat's bytes are ever offered to the run.
        if len(body) == info.size and crc32c_of_bytes(body) == info.crc32c:
            self._bodies[info.url, info.generation] = body

    def body(self, info: ObjectInfo, stop: threading.Event) -> bytes | None:
        """The scene's bytes, downloaded and checked against ``info``'s size and crc32c, where
        this head start holds exactly that URL at that generation (waiting up to
        ``BODY_WAIT_S`` for a download under way, not past ``stop``); else None. Handed out
        once."""
        if info.url in self._fetching:
            deadline = time.monotonic() + BODY_WAIT_S
            while not self._fetched.wait(0.02):
                if stop.is_set() or time.monotonic() > deadline:
                    return None
        return self._bodies.pop((info.url, info.generation), None)

    def _list_ahead(self, scene: ObjectInfo) -> None:
        """For a small manifest scene (downloaded ahead, or in the node's cache): list its
        ``gs://`` folder lines and its plain files' busy folders (ranged), and stat its other
        plain files, as the run's resolve and stat would, at most ``LIST_AHEAD_MAX`` requests
        at once."""
        text = self._manifest_text(scene)
        if text is None:
            return
        from concurrent.futures import ThreadPoolExecutor

        from jitrender.manifestlines import TOKEN_CHAR, manifest_entries
        from jitrender.transfer import listing_groups

        lines = [line for _, line in manifest_entries(text) if line.startswith("gs://")]
        folders = dict.fromkeys(line.rstrip("/") + "/" for line in lines if line.endswith("/"))
        files = [line for line in lines if not line.endswith("/") and not TOKEN_CHAR.search(line)]
        frame_lines = [line for line in lines if _is_frame_line(line)]
        if frame_lines:
            # The run says which frames as soon as it has read the job: long before its
            # resolve, which waits for these listings anyway.
            self._frames_given.wait(BODY_WAIT_S)
        # With the frame lines' files where they fit under the cap, else without them.
        for wanted in (files + _frame_files(frame_lines, self._frames), files):
            groups, alone = listing_groups(dict.fromkeys(wanted))
            ranges = [listing for listing, _ in groups]
            count = len(folders) + len(ranges) + len(alone)  # (alone in a folder: a stat each)
            if count <= LIST_AHEAD_MAX:
                break
        if not count or count > LIST_AHEAD_MAX:
            return
        store = self.stores.for_url
        with ThreadPoolExecutor(min(PRECONNECT, count)) as threads:
            listed = {p: threads.submit(store(p).list, p, recursive=True) for p in folders}
            ranged = [threads.submit(store(r[0]).list_range, *r) for r in ranges]
            stated = [threads.submit(store(url).stat, url) for url in alone]
        for prefix, future in listed.items():
            if future.exception() is None:
                self._listed[prefix] = future.result()
        for future in ranged:
            if future.exception() is None:
                self._list_stats.extend(future.result())
        for stat in stated:
            found = stat.result() if stat.exception() is None else None
            if found is not None:  # (a missing one: the run finds it missing itself)
                self._list_stats.append(found)

    def _manifest_text(self, info: ObjectInfo) -> str | None:
        """A small manifest scene's text, from the body downloaded ahead or the node's cache;
        None for any other scene or where neither holds it."""
        if not info.url.endswith((".txt", ".manifest")) or info.size > BODY_MAX:
            return None
        body = self._bodies.get((info.url, info.generation))
        if body is None and self.cache_dir is not None:
            with (
                contextlib.suppress(OSError),
                open(_cached_object(self.cache_dir, info), "rb") as f,
            ):
                body = f.read(BODY_MAX + 1)
        if body is None or len(body) != info.size:
            return None
        try:
            return body.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def listings(
        self, stop: threading.Event, timeout: float = BODY_WAIT_S
    ) -> tuple[dict[str, list[ObjectInfo]], list[ObjectInfo]]:
        """A manifest scene's listings made ahead: each folder line's objects (by prefix URL,
        ending in ``/``; what :meth:`~jitrender.storage.Store.list` recursive returns), and the
        stats of its plain files that its ranged listings and stats found. Waits up to
        ``timeout`` seconds (not past ``stop``); empty when they did not come in time."""
        if not self._stated.is_set():  # the stats did not come (the run asks itself): nor these
            return {}, []
        deadline = time.monotonic() + timeout
        while not self._listings_done.wait(0.02):
            if stop.is_set() or time.monotonic() > deadline:
                return {}, []
        return dict(self._listed), list(self._list_stats)

    def infos(self, stop: threading.Event, timeout: float = 5.0) -> list[ObjectInfo]:
        """The stats that came back, after waiting up to ``timeout`` seconds (not past
        ``stop``) for the thread's stats (not for the connections it opens after them);
        empty when they did not come in time."""
        deadline = time.monotonic() + timeout
        while not self._stated.wait(0.05):
            if stop.is_set() or time.monotonic() > deadline:
                return []
        return list(self._found)


# A job's top-level ``scene:`` naming a gs:// object, in YAML's plain or quoted style, or a
# line of JSON. Read without a YAML parser (a parse costs milliseconds per file, and every
# file argument is read); a scene written any other way is left to the run.
_SCENE = r"""^(?:scene|[ \t]*"scene")[ \t]*:[ \t]+(["']?)(gs://[^\s"'#,]+)\1[ \t]*(?:[#,].*)?$"""


def _is_frame_line(line: str) -> bool:
    """A manifest line naming one file per frame: a frame token, and no tile or view token
    (tiles and views the resolve lists or names itself)."""
    from jitrender.manifestlines import TOKEN_CHAR

    if line.endswith("/") or not TOKEN_CHAR.search(line):  # most lines: no token at all
        return False
    from jitrender.sequences import has_frame_token, has_udim_token, has_view_token

    return has_frame_token(line) and not has_udim_token(line) and not has_view_token(line)


def _frame_files(lines: Sequence[str], frames: Sequence[int] | None) -> list[str]:
    """The files that a manifest's frame lines (``gs://`` URLs holding frame tokens, as the
    manifest resolver reads them, and no tile or view token) name for ``frames``; none for
    more than ``FRAMES_AHEAD_MAX`` frames or before the frames are known."""
    if not frames or len(frames) > FRAMES_AHEAD_MAX:
        return []
    from jitrender.sequences import expand_frame

    out: list[str] = []
    for line in lines:
        if _is_frame_line(line):
            out.extend(dict.fromkeys(expand_frame(line, frame) for frame in frames))
    return out


def _quietly(call: Callable[..., object], *args: object) -> None:
    """``call(*args)``, any failure ignored (the run does the same work itself, retried)."""
    with contextlib.suppress(Exception):
        call(*args)


class _Capped:
    """A download's sink in memory that refuses more bytes than the stat said."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.got = 0
        self.pieces: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.got += len(data)
        if self.got > self.size:
            raise ValueError("more bytes than the stat said")
        self.pieces.append(bytes(data))
        return len(data)


def _cached_object(root: Path, info: ObjectInfo) -> str:
    """Where the cache at ``root`` keeps ``info`` (:meth:`jitrender.cache.Cache.object_path`'s
    layout), without importing the cache's modules in this thread."""
    from jitrender.cachelayout import object_file, object_key

    return object_file(root / "objects", object_key(info.url, info.generation))


# A ``dir:`` key anywhere in a job file: it may set the job's cache folder (``cache.dir``).
_DIR_KEY = r"""^[ \t]*["']?dir["']?[ \t]*:|"dir"[ \t]*:"""


def _cache_dir_of(args: Sequence[str], job_files: Sequence[str]) -> Path | None:
    """The cache folder ``jitrender run ARGS`` will use, in the CLI's order (``--cache-dir``,
    ``$JITRENDER_CACHE_DIR``, the job's ``cache.dir``, the default); None where the job file
    may set it (told only once it is parsed)."""
    import re
    from pathlib import Path

    from jitrender.cachelayout import default_cache_dir

    for i, arg in enumerate(args):
        if arg == "--cache-dir" and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--cache-dir="):
            return Path(arg.partition("=")[2])
    if os.environ.get("JITRENDER_CACHE_DIR"):
        return default_cache_dir()
    for name in job_files:
        try:
            text = _job_text(Path(name))
        except OSError:
            return None
        if text is not None and re.search(_DIR_KEY, text, re.MULTILINE):
            return None
    return default_cache_dir()


def _job_text(path: Path) -> str | None:
    """``path``'s text where it may be a job file (a file, and small); None where not."""
    if not path.is_file() or os.path.getsize(path) > _JOB_FILE_MAX:
        return None
    return path.read_text(errors="replace")


def _scenes_named(job_files: Sequence[str | Path]) -> list[str]:
    """The remote ``scene:`` URLs (as written: path mapping and validation come later, in the
    run) of those of ``job_files`` that look like a job."""
    import re
    from pathlib import Path

    urls: list[str] = []
    for path in job_files:
        try:
            text = _job_text(Path(path))
        except OSError:
            continue
        if text is None:
            continue
        for found in re.finditer(_SCENE, text, re.MULTILINE):
            if found[2] not in urls:
                urls.append(found[2])
    return urls
