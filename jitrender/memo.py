"""The node's memo of what pydantic made of a user's text: a job file's values, a size.

Every ``jitrender run`` reads its job file and, on many farms, a ``--cache-max-size``; reading
them is PyYAML's and pydantic's work, ~130 ms of every start (the import, the schema). A
farm's tasks of one job on a node read the same bytes each time: only the first does that
work, and keeps its result here, as JSON; the others read it back.

One file per (kind, bytes), in the node's cache, ``<cache>/memo/`` (the cache ``--cache-dir``
or ``$JITRENDER_CACHE_DIR`` names, else the default one), which outlives the farm's tasks where
a task's temporary folder does not; ``$JITRENDER_JOB_MEMO_DIR`` puts it elsewhere (set empty:
no memo; a folder there that cannot hold one is a mistake, exit 78). It is written only into a
cache that exists already. The name is a hash of the kind, the bytes and what reads them (this
jitrender's readers, PyYAML, pydantic and pydantic-core, by their files' stat), so an edited
file or an upgraded install is read afresh. The folder must be a real folder (not a link) of
this user that group and others may not write, checked each time: a job's memo names the
commands it runs. Only results are kept, never mistakes (those are read, and said, each time).
"""

import functools
import hashlib
import json
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FOLDER = "memo"  # in the node cache
KEPT = 256  # memo files kept when the folder is pruned (at twice as many)
_READERS = ("job.py", "jobcheck.py", "adapters.py", "cache.py", "memo.py")  # of jitrender


@dataclass(frozen=True)
class Memo:
    """Where the memo of one text read as one kind is (or would be), and the node cache it is
    in (None: a folder ``$JITRENDER_JOB_MEMO_DIR`` names, made as needed)."""

    path: Path
    cache: Path | None

    def recall(self) -> Any:
        """The JSON value kept here; None where there is none (or it is not to be read)."""
        if not _ours(self.path.parent):
            return None
        try:
            return json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return None

    def remember(self, text: str) -> None:
        """Keep ``text`` (JSON) here, whole or not at all; a memo that cannot be written is
        none (the next run reads the file again). Never into a cache not made yet (its first
        run makes it, with its own modes)."""
        where = self.path.parent
        if self.cache is not None and not (self.cache / "objects").is_dir():
            return
        try:
            where.mkdir(mode=0o700, parents=True, exist_ok=True)
            if not _ours(where):
                return
            part = where / f".{self.path.name}.{os.getpid()}.part"
            part.write_text(text, encoding="utf-8")
            os.replace(part, self.path)
            names = os.listdir(where)
            if len(names) > 2 * KEPT:
                _forget_oldest(where, names)
        except OSError:
            return


def at(kind: str, data: bytes, cache_dir: Path | None = None) -> Memo | None:
    """The memo of ``data`` read as ``kind``: in ``$JITRENDER_JOB_MEMO_DIR``, else in
    ``memo/`` of ``cache_dir`` (else of the default cache); None: no memo here."""
    named = os.environ.get("JITRENDER_JOB_MEMO_DIR")
    if named == "" or not hasattr(os, "getuid"):
        return None  # set empty: no memo
    cache: Path | None = None
    if named is not None:
        where = Path(named)
        problem = _unusable(where)
        if problem is not None:  # a setting is never ignored: said, before any work
            from jitrender.errors import ConfigError

            raise ConfigError(
                f"JITRENDER_JOB_MEMO_DIR: {named}: {problem}; name a folder of this user that "
                "group and others cannot write, or set it empty for no memo"
            )
    else:
        if cache_dir is None:
            from jitrender.cachelayout import default_cache_dir

            cache_dir = default_cache_dir()
        cache, where = cache_dir, cache_dir / FOLDER
    try:
        stamp = code_stamp(f"jitrender memo 1\0{kind}", _reader_files(), data)
    except OSError:
        return None
    return Memo(where / f"{stamp[:40]}.json", cache)


def forget(cache: Path) -> int:
    """Delete the memo files in the node cache ``cache``; how many there were."""
    forgotten = 0
    try:
        kept = list((cache / FOLDER).iterdir())
    except FileNotFoundError:
        return 0
    for path in kept:
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        forgotten += 1
    return forgotten


@functools.cache
def _reader_files() -> tuple[str, ...]:
    """The files whose code decides what a user's text is read as (found once a process;
    their stat is read each time)."""
    here = os.path.dirname(__file__)
    return (
        *(os.path.join(here, name) for name in _READERS),
        *package_files("pydantic", "pydantic_core", "yaml"),
    )


def code_stamp(label: str, files: Iterable[str], data: bytes = b"") -> str:
    """A hash (hex) of ``label``, of ``files``' names and stat (size, time written), and of
    ``data``: it changes when any of that code is edited or upgraded. OSError where a file is
    gone."""
    stamp = hashlib.sha256(f"{label}\0".encode())
    for file in files:
        st = os.stat(file)
        stamp.update(f"{file}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    stamp.update(data)
    return stamp.hexdigest()


@functools.cache
def package_files(*packages: str) -> tuple[str, ...]:
    """The ``__init__`` files of ``packages``, found without importing them (OSError where one
    is not installed)."""
    import importlib.util

    files = []
    for package in packages:
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise OSError(f"{package} not found")
        files.append(spec.origin)
    return tuple(files)


def _unusable(where: Path) -> str | None:
    """Why the folder ``$JITRENDER_JOB_MEMO_DIR`` names cannot hold a memo (it is made where
    missing); None where it can."""
    try:
        where.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file, or a link to one: said below
    except OSError as exc:
        return f"cannot make the folder ({exc.strerror})"
    return _not_ours(where)


def _not_ours(where: Path) -> str | None:
    """Why ``where`` is not a real folder of this user that group and others cannot write;
    None where it is."""
    try:
        st = os.lstat(where)
    except OSError as exc:
        return f"cannot read the folder ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return "is a link (name the folder itself)"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.getuid():
        return "belongs to another user"
    if st.st_mode & 0o022:
        return "group or others may write it"
    return None


def _ours(where: Path) -> bool:
    return _not_ours(where) is None


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
