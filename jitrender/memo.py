"""The node's memo of what pydantic made of a user's text: a job file's values, a size.

Every ``jitrender run`` reads its job file and, on many farms, a ``--cache-max-size``; reading
them is PyYAML's and pydantic's work, ~130 ms of every start (the import, the schema). A
farm's tasks of one job on a node read the same bytes each time: only the first does that
work, and keeps its result here, as JSON; the others read it back.

One file per (kind, bytes), in the node's cache, ``<cache>/memo/`` (the cache ``--cache-dir`` or
``$JITRENDER_CACHE_DIR`` names, else the default one), which outlives the farm's tasks where a
task's temporary folder does not; ``$JITRENDER_JOB_MEMO_DIR`` puts it elsewhere (set empty: no
memo). It is written only into a cache that exists already. The name is a hash of
the kind, the bytes and what reads them (this jitrender's readers, PyYAML, pydantic and
pydantic-core, by their files' stat), so an edited file or an upgraded install is read
afresh. The folder must be a real folder (not a link) of this user that group and others may
not write, checked each time: a job's memo names the commands it runs. Only results are
kept, never mistakes (those are read, and said, each time).
"""

import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

KEPT = 256  # memo files kept when the folder is pruned (at twice as many)
_READERS = ("job.py", "jobcheck.py", "cache.py", "memo.py")  # of jitrender


def folder(cache_dir: Path | None = None) -> Path | None:
    """The memo folder: ``$JITRENDER_JOB_MEMO_DIR``, else ``memo/`` in ``cache_dir`` (else in
    the default cache); None: no memo."""
    where = os.environ.get("JITRENDER_JOB_MEMO_DIR")
    if where is not None:
        return Path(where) if where else None  # set empty: no memo
    if not hasattr(os, "getuid"):
        return None
    if cache_dir is None:
        from jitrender.cachelayout import default_cache_dir

        cache_dir = default_cache_dir()
    return cache_dir / "memo"


def file_for(kind: str, data: bytes, cache_dir: Path | None = None) -> Path | None:
    """Where the memo of ``data`` read as ``kind`` is (or would be); None: no memo here."""
    where = folder(cache_dir)
    if where is None:
        return None
    stamp = hashlib.sha256(f"jitrender memo 1\0{kind}\0".encode())
    try:
        for file in _reader_files():
            st = os.stat(file)
            stamp.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    except OSError:
        return None
    stamp.update(data)
    return where / f"{stamp.hexdigest()[:40]}.json"


def _reader_files() -> list[str]:
    """The files whose code decides what a user's text is read as."""
    import importlib.util

    here = os.path.dirname(__file__)
    files = [os.path.join(here, name) for name in _READERS]
    for package in ("pydantic", "pydantic_core", "yaml"):
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise OSError(f"{package} not found")
        files.append(spec.origin)
    return files


def _ours(where: Path) -> bool:
    try:
        st = os.lstat(where)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def recall(memo: Path) -> Any:
    """The JSON value kept at ``memo``; None where there is none (or it is not to be read)."""
    if not _ours(memo.parent):
        return None
    try:
        return json.loads(memo.read_bytes())
    except (OSError, ValueError):
        return None


def remember(memo: Path, text: str) -> None:
    """Keep ``text`` (JSON) at ``memo``, whole or not at all; a memo that cannot be written is
    none (the next run reads the file again)."""
    where = memo.parent
    if os.environ.get("JITRENDER_JOB_MEMO_DIR") is None and not (where.parent / "objects").is_dir():
        return  # the cache is not made yet (its first run makes it, with its own modes)
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not _ours(where):
            return
        part = where / f".{memo.name}.{os.getpid()}.part"
        part.write_text(text, encoding="utf-8")
        os.replace(part, memo)
        names = os.listdir(where)
        if len(names) > 2 * KEPT:
            _forget_oldest(where, names)
    except OSError:
        return


def _forget_oldest(where: Path, names: list[str]) -> None:
    aged = []
    for name in names:
        try:
            aged.append((os.stat(where / name).st_mtime, name))
        except OSError:
            continue
    for _, name in sorted(aged)[: len(aged) - KEPT]:
        try:
            os.unlink(where / name)
        except OSError:
            continue
