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
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from jitrender.storage import ObjectInfo, Stores

# Connections open ahead for the listings the resolve runs at once (one per busy folder, on
# up to 16 threads: Inputs' default workers).
PRECONNECT = 16
_JOB_FILE_MAX = 1 << 20  # a job file is small; anything bigger is not one


class HeadStart:
    """Stats ``urls``, or the scenes that the job files among ``job_files`` name (and opens
    connections to their storage), in a background thread, through ``stores``, which the run
    then uses for everything else (the connections are in its pools)."""

    def __init__(
        self, stores: Stores, *, urls: Sequence[str] = (), job_files: Sequence[str] = ()
    ) -> None:
        self.stores = stores
        self.job_files = [Path(f) for f in job_files]
        self._asked: list[str] = list(urls)  # what the thread stats, once it has read the files
        self._found: list[ObjectInfo] = []
        self._read = threading.Event()
        self._stated = threading.Event()
        self._thread = threading.Thread(target=self._run, name="head-start", daemon=True)

    @classmethod
    def for_run_args(cls, args: Sequence[str]) -> HeadStart:
        """A head start for ``jitrender run ARGS``: the job file is one of the arguments that
        are files (which one only typer knows yet: option values are files too)."""
        return cls(Stores(), job_files=[a for a in args if not a.startswith("-")])

    def start(self) -> HeadStart:
        self._thread.start()
        return self

    def asks_for(self, url: str, timeout: float = 1.0) -> bool:
        """Whether this head start stats ``url`` (waiting up to ``timeout`` seconds for it to
        read the job files, a matter of microseconds once it runs)."""
        self._read.wait(timeout)
        return url in self._asked

    def _run(self) -> None:
        try:
            if not self._asked:
                self._asked = _scenes_named(self.job_files)
            self._read.set()
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
            self._stated.set()
            for store, url in stores:
                with contextlib.suppress(Exception):
                    store.preconnect(url, PRECONNECT)
        finally:
            self._read.set()
            self._stated.set()

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


def _scenes_named(job_files: Sequence[Path]) -> list[str]:
    """The remote ``scene:`` URLs (as written: path mapping and validation come later, in the
    run) of those of ``job_files`` that look like a job."""
    urls: list[str] = []
    for path in job_files:
        try:
            if not path.is_file() or os.path.getsize(path) > _JOB_FILE_MAX:
                continue
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for found in re.finditer(_SCENE, text, re.MULTILINE):
            if found[2] not in urls:
                urls.append(found[2])
    return urls
