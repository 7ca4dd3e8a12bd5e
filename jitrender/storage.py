"""One thin layer over object storage: stat, list, download, create-if-absent upload.

``file://`` (a local folder acting as the bucket) is the embedded default, ``gs://`` goes
to the JSON API (generation-pinned reads, ``ifGenerationMatch=0`` writes; google-cloud-storage
only for uploads above 8 MiB and where proxies are set), and
every other fsspec protocol works through :class:`FsspecStore`. Stores know nothing about
scenes, jobs or the cache; the caller decides what to transfer.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import errno
import functools
import os
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, ClassVar, Literal, TypeVar

import google_crc32c

from jitrender.errors import (
    ConfigError,
    DataError,
    JitrenderError,
    MissingDependencyError,
    NoSuchBucketError,
    ObjectNameError,
    PermissionDeniedError,
    TransientError,
)
from jitrender.paths import local_path_of, split_url
from jitrender.registry import Registry
from jitrender.writes import slices

T = TypeVar("T")

# Custom metadata written on every output: which job (by hash) created the object.
JOB_METADATA_KEY = "jitrender-job"
_PART_SUFFIX = ".jitrender-part"
_XATTR_PREFIX = "user.jitrender."
# A file:// object's checksum, "<generation> <crc32c>": outside _XATTR_PREFIX (not metadata).
_CRC_XATTR = "user.jitrender-crc32c"
_CRC_SIDECAR_SUFFIX = ".jitrender-crc32c"  # ".<name>.jitrender-crc32c" where xattrs are missing


_NO_METADATA: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)  # one per dependency: 100k of them must stay small
class ObjectInfo:
    """What storage says about one object. ``generation`` changes whenever the content may have."""

    url: str
    size: int
    generation: str
    crc32c: str | None = None  # base64 of the big-endian CRC32C, as GCS reports it
    # Shared and read-only when there is none (a dict each would be 64 bytes per object).
    metadata: Mapping[str, str] = field(default_factory=lambda: _NO_METADATA)


PutOutcome = Literal["created", "identical", "conflict", "overwritten"]


@dataclass(frozen=True)
class PutResult:
    outcome: PutOutcome
    info: ObjectInfo | None


Metadata = Mapping[str, str] | None  # an object's custom metadata, where a call sets some


class ChecksumMismatch(Exception):
    """Downloaded bytes do not match what storage promised. Retried, then exit 75."""


class Crc32cWriter:
    """Wraps a binary file: counts and checksums what is written through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.size = 0
        self._crc = google_crc32c.Checksum()

    def write(self, data: bytes) -> int:
        self._crc.update(data)
        self.size += len(data)
        for piece in slices(data):  # (small folios: see jitrender.writes)
            self.raw.write(piece)
        return len(data)

    def flush(self) -> None:
        self.raw.flush()

    def digest_b64(self) -> str:
        return base64.b64encode(self._crc.digest()).decode("ascii")


def crc32c_of_file(path: Path, block: int = 4 << 20) -> str:
    crc = google_crc32c.Checksum()
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            crc.update(chunk)
    return base64.b64encode(crc.digest()).decode("ascii")


def crc32c_of_bytes(data: bytes) -> str:
    return base64.b64encode(google_crc32c.Checksum(data).digest()).decode("ascii")


# -- retries ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How long transient storage failures are ridden out: jittered exponential backoff
    (the truncated exponential sleeps of google-api-core, which google-cloud-storage's own
    default retry uses) until ``deadline`` seconds have passed since the call began, or until
    ``attempts`` calls have failed when that is set."""

    attempts: int | None = None
    deadline: float = 120.0
    base_delay: float = 0.5  # the first sleep is up to this; each next one up to twice more
    max_delay: float = 30.0
    multiplier: float = 2.0


def _status_of(exc: BaseException) -> int | None:
    for attr in ("code", "status_code", "status"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


_AUTH_FAILURES = ("RefreshError", "DefaultCredentialsError", "InvalidOperation")


def classify(exc: BaseException) -> Literal["transient", "missing", "denied", "other"]:
    """How a storage exception should be treated."""
    if isinstance(exc, JitrenderError):
        return "other"
    if isinstance(exc, ChecksumMismatch):
        return "transient"
    status = _status_of(exc)
    if status == 404 or isinstance(exc, FileNotFoundError):
        return "missing"
    if status in (401, 403) or isinstance(exc, PermissionError):
        return "denied"
    if type(exc).__module__.startswith("google.auth") and type(exc).__name__ in _AUTH_FAILURES:
        # A 401 makes google-auth refresh; a refresh that cannot succeed is a credentials problem.
        return "transient" if getattr(exc, "retryable", False) else "denied"
    if status is not None and (status == 408 or status == 429 or status >= 500):
        return "transient"
    name = type(exc).__name__
    transient_names = (
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "ConnectTimeout",
        "ChunkedEncodingError",
        "ProtocolError",
        "IncompleteRead",
        "DataCorruption",
        "InvalidResponse",
        "ServiceUnavailable",
        "TransportError",
        "RemoteDisconnected",
        "ContentDecodingError",
        "ReadTimeoutError",  # urllib3's, on the light read path
        "ConnectTimeoutError",
        "NewConnectionError",
        "NameResolutionError",
    )
    if name in transient_names or isinstance(exc, ConnectionError | TimeoutError):
        return "transient"
    if isinstance(exc, OSError) and exc.errno in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT):
        return "transient"
    return "other"


def with_retries(
    call: Callable[[], T],
    url: str,
    policy: RetryPolicy,
    on_retry: Callable[[BaseException], None] | None = None,
) -> T:
    """Run a storage call; retry transient failures within the policy's deadline (and
    attempts), translate the rest into jitrender errors. A transient failure that outlasts
    them is a :class:`TransientError` whose message starts "transient storage failure"."""
    # google-api-core's retry_target, without importing it (and requests) for every run:
    # truncated exponential back-off with full jitter, never sleeping past the deadline.
    failures = 0
    started = time.monotonic()
    deadline = started + policy.deadline if policy.deadline is not None else None
    ceiling = min(policy.base_delay, policy.max_delay)
    try:
        while True:
            try:
                return call()
            except Exception as exc:
                failures += 1
                transient = classify(exc) == "transient"
                if not (transient and (policy.attempts is None or failures < policy.attempts)):
                    raise
                if on_retry is not None:
                    on_retry(exc)
                pause = random.uniform(0.0, ceiling)
                ceiling = min(ceiling * policy.multiplier, policy.max_delay)
                if deadline is not None and time.monotonic() + pause > deadline:
                    expired: Exception = exc  # the last failure is the cause
                    break
                time.sleep(pause)
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
            raise ObjectNameError(
                f"{url}: a name in this path is longer than the local file system allows"
            ) from None
        kind = classify(exc)
        if kind == "missing":
            if isinstance(exc, NoSuchBucket):
                raise NoSuchBucketError(url, exc.bucket) from exc
            raise MissingDependencyError(url) from exc
        if kind == "denied":
            raise PermissionDeniedError(f"{url}: permission denied ({exc})") from exc
        if kind == "transient":  # out of attempts
            raise _transient(url, failures, started, exc) from exc
        raise
    raise _transient(url, failures, started, expired) from expired


def _transient(url: str, failures: int, started: float, exc: BaseException) -> TransientError:
    seconds = time.monotonic() - started
    return TransientError(
        f"transient storage failure: {url}: still failing after {failures} attempts in "
        f"{seconds:.1f} s: {exc}"
    )


# -- the interface ------------------------------------------------------------------------


class Store(ABC):
    """One storage backend. Methods raise the underlying library's exceptions; callers wrap
    them in :func:`with_retries`."""

    # Whether many stats/listings at once go faster (network round trips); False where each is
    # CPU work in this process (a local folder), which threads only make fight for the GIL.
    concurrent_reads: ClassVar[bool] = True

    def preconnect(self, url: str, count: int) -> None:  # noqa: B027 (most stores: nothing)
        """Open up to ``count`` connections for ``url``'s reads ahead of use, where the store
        keeps a pool (so concurrent reads soon after skip the TCP/TLS set-up). Best effort."""

    def http_object(self, info: ObjectInfo) -> tuple[str, str, dict[str, str]] | None:
        """``(base URL, path below it, headers)`` of one plain HTTP GET of ``info``'s whole
        bytes (credentials included), where the store has one: then objects below
        ``LARGE_OBJECT_BYTES`` are fetched on the asyncio path. None otherwise."""
        return None

    @abstractmethod
    def stat(self, url: str) -> ObjectInfo | None:
        """The object's info, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix_url: str, *, recursive: bool = True) -> list[ObjectInfo]:
        """Objects whose URL starts with ``prefix_url`` (a folder when it ends with ``/``)."""

    def list_range(
        self, prefix_url: str, first_url: str, last_url: str
    ) -> builtins.list[ObjectInfo]:
        """Objects directly below ``prefix_url`` whose URLs sort from ``first_url`` to
        ``last_url`` (both included). Stores that can start a listing at an offset read no more
        than that range, so ten frames of a 100,000-frame sequence cost one short listing."""
        return [
            info
            for info in self.list(prefix_url, recursive=False)
            if first_url <= info.url <= last_url
        ]

    @abstractmethod
    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        """Write the object's bytes ``[start, end)`` (the whole object by default) to ``sink``.
        An exception from ``sink.write`` stops the download and propagates (what was not read
        is dropped, with its connection)."""

    @abstractmethod
    def put_if_absent(
        self, source: Path, url: str, metadata: Metadata = None, *, overwrite: bool = False
    ) -> PutResult:
        """Create the object from a local file only if it does not exist (or, with ``overwrite``,
        replace it). An existing object with the same bytes is ``identical``, not a conflict."""

    def put_bytes_if_absent(self, data: bytes, url: str, metadata: Metadata = None) -> PutResult:
        """Create a small object from bytes only if it does not exist."""
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="jitrender-put-") as handle:
            handle.write(data)
            handle.flush()
            return self.put_if_absent(Path(handle.name), url, metadata)

    def replace_bytes(self, data: bytes, url: str) -> None:
        """Create or overwrite a small object that only its writer ever writes (a task's
        heartbeat). Readers see the old bytes or the new, never a part."""
        import tempfile

        with tempfile.NamedTemporaryFile(prefix="jitrender-put-") as handle:
            handle.write(data)
            handle.flush()
            self.put_if_absent(Path(handle.name), url, overwrite=True)

    def delete(self, url: str) -> None:
        """Remove an object: only for stale done markers, ``jitrender requeue`` and its
        ``--delete-outputs``; a run never deletes an output."""
        raise ConfigError(f"{url}: this storage ({type(self).__name__}) cannot delete objects")

    def read_bytes(self, url: str) -> bytes:
        """The object's bytes as they are now (FileNotFoundError where there is none). One
        rewritten between its stat and its download (a heartbeat, a claim's lease: the
        generation the stat named is gone) is read again at its new one, up to 3 times: a
        reader must never take a lease being renewed for a lease released."""
        import io

        attempt = 0
        while True:
            attempt += 1
            info = self.stat(url)
            if info is None:
                raise FileNotFoundError(url)
            buffer = io.BytesIO()
            try:
                self.download(info, buffer)
            except Exception as exc:
                if attempt < 3 and classify(exc) == "missing":
                    continue
                raise
            return buffer.getvalue()


def _compare(
    source: Path,
    existing: ObjectInfo | None,
    url: str,
    read: Callable[[], IO[bytes]] | None = None,
) -> PutResult:
    """``identical`` only for identical bytes: by crc32c, else by reading the object (``read``
    opens it); a store that can do neither calls it a conflict, never a size-only match."""
    if existing is None:
        return PutResult("conflict", None)
    if existing.crc32c is not None:
        same = existing.crc32c == crc32c_of_file(source)
    elif read is not None and existing.size == source.stat().st_size:
        with read() as remote, open(source, "rb") as local:
            same = _same_stream(remote, local)
    else:
        same = False
    return PutResult("identical" if same else "conflict", existing)


def _same_stream(first: IO[bytes], second: IO[bytes], block: int = 1 << 20) -> bool:
    while True:
        a, b = first.read(block), second.read(block)
        if a != b:
            return False
        if not a:
            return True


def _copy_range(source: IO[bytes], sink: IO[bytes], start: int, end: int) -> None:
    """Copy bytes ``[start, end)`` of a seekable file to ``sink`` in 1 MiB pieces."""
    source.seek(start)
    remaining = end - start
    while remaining > 0:
        chunk = source.read(min(remaining, 1 << 20))
        if not chunk:
            break
        sink.write(chunk)
        remaining -= len(chunk)


# -- file:// ------------------------------------------------------------------------------


class LocalStore(Store):
    """A local folder used as a bucket. Writes are temp + ``link`` (atomic create-if-absent);
    objects carry their metadata as ``user.jitrender.*`` extended attributes where the
    filesystem supports them."""

    concurrent_reads = False

    def delete(self, url: str) -> None:
        _local_delete(url)

    def stat(self, url: str) -> ObjectInfo | None:
        path = local_path_of(url)
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            return None
        if not path.is_file():
            return None
        return ObjectInfo(
            url, st.st_size, _local_generation(st), local_crc32c(path, st), _read_xattrs(path)
        )

    def list(self, prefix_url: str, *, recursive: bool = True) -> list[ObjectInfo]:
        return self._scan(prefix_url, recursive, None)

    def list_range(
        self, prefix_url: str, first_url: str, last_url: str
    ) -> builtins.list[ObjectInfo]:
        # Names outside the range are skipped before any stat or checksum tag is read.
        return self._scan(prefix_url, False, (first_url, last_url))

    def _scan(
        self, prefix_url: str, recursive: bool, bounds: tuple[str, str] | None
    ) -> builtins.list[ObjectInfo]:
        prefix_path = local_path_of(prefix_url)
        if prefix_url.endswith("/") or prefix_path.is_dir():
            folder, name_prefix = prefix_path, ""
        else:
            folder, name_prefix = prefix_path.parent, prefix_path.name
        if not folder.is_dir():
            return []
        found: list[ObjectInfo] = []
        base = "file://" + folder.as_posix().rstrip("/")
        stack = [(folder, base)]
        while stack:
            current, current_url = stack.pop()
            top = current is folder
            with os.scandir(current) as entries:
                for entry in entries:
                    if top and not entry.name.startswith(name_prefix):
                        continue
                    if entry.name.endswith((_PART_SUFFIX, _CRC_SIDECAR_SUFFIX)):
                        continue
                    entry_url = f"{current_url}/{entry.name}"
                    if bounds is not None and not bounds[0] <= entry_url <= bounds[1]:
                        continue
                    if entry.is_dir(follow_symlinks=True):
                        if recursive:
                            stack.append((Path(entry.path), entry_url))
                    elif entry.is_file(follow_symlinks=True):
                        st = entry.stat(follow_symlinks=True)
                        generation = _local_generation(st)
                        # The stored tag read by name (no Path per entry): 100k-file listings.
                        tag = _read_crc_tag(entry.path)
                        if tag is not None and tag[0] == generation:
                            crc: str | None = tag[1]
                        else:
                            crc = local_crc32c(Path(entry.path), st)
                        found.append(
                            ObjectInfo(entry_url, st.st_size, generation, crc, _NO_METADATA)
                        )
        found.sort(key=lambda info: info.url)
        return found

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        path = local_path_of(info.url)
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if _local_generation(st) != info.generation:
                # The object changed since it was listed: this is not the version we keyed.
                raise ChecksumMismatch(f"{info.url} changed while being read")
            _copy_range(handle, sink, start, end if end is not None else st.st_size)

    def put_if_absent(
        self, source: Path, url: str, metadata: Metadata = None, *, overwrite: bool = False
    ) -> PutResult:
        def fill(writer: Crc32cWriter) -> None:
            with open(source, "rb") as src:
                while chunk := src.read(4 << 20):
                    writer.write(chunk)

        def compare(existing: ObjectInfo | None) -> PutResult:
            return _compare(source, existing, url, lambda: open(local_path_of(url), "rb"))

        return self._create(url, fill, compare, metadata, overwrite)

    def put_bytes_if_absent(self, data: bytes, url: str, metadata: Metadata = None) -> PutResult:
        """As the base class, but the bytes go straight into the part file next to the object
        (never a file in ``$TMPDIR`` first): a killed process's part is removed by the next
        put there."""
        return self._create(
            url, lambda writer: writer.write(data), lambda e: _compare_bytes(data, e), metadata
        )

    def _create(
        self,
        url: str,
        fill: Callable[[Crc32cWriter], object],
        compare: Callable[[ObjectInfo | None], PutResult],
        metadata: Metadata,
        overwrite: bool = False,
    ) -> PutResult:
        """The object at ``url`` from what ``fill`` writes into a part file beside it (synced,
        then linked: create-if-absent), or with ``overwrite`` renamed over it; ``compare``
        says what a refused create found."""
        final = local_path_of(url)
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_parts(final)
        part = final.with_name(f".{final.name}.{_part_owner()}.{random.getrandbits(32):08x}")
        part = part.with_name(part.name + _PART_SUFFIX)
        try:
            with open(part, "xb") as dst:
                writer = Crc32cWriter(dst)
                fill(writer)
                dst.flush()
                os.fsync(dst.fileno())
                st = os.fstat(dst.fileno())  # its generation: a link or rename keeps it
            stored = _write_xattrs(part, metadata or {})
            # The object as created, without reading it back: its size and generation, the
            # checksum it is tagged with from birth (as a GCS object is), the metadata stored.
            generation, crc = _local_generation(st), writer.digest_b64()
            created = ObjectInfo(url, st.st_size, generation, crc, stored)
            if overwrite:
                existed = final.exists()
                os.replace(part, final)
                _write_crc_tag(final, generation, crc)
                return PutResult("overwritten" if existed else "created", created)
            try:
                os.link(part, final)
            except FileExistsError:
                return compare(self.stat(url))
            _write_crc_tag(final, generation, crc)
            return PutResult("created", created)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()

    def replace_bytes(self, data: bytes, url: str) -> None:
        """As the base class; the part file waits next to the object, never in ``$TMPDIR``."""
        final = local_path_of(url)
        final.parent.mkdir(parents=True, exist_ok=True)
        _remove_dead_parts(final)
        part = final.with_name(
            f".{final.name}.{_part_owner()}.{random.getrandbits(32):08x}{_PART_SUFFIX}"
        )
        try:
            part.write_bytes(data)
            os.replace(part, final)
        finally:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()


def _local_delete(url: str) -> None:
    path = local_path_of(url)
    path.unlink()
    with contextlib.suppress(OSError):
        _crc_sidecar(path).unlink()


def _local_generation(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}-{st.st_ino}-{st.st_size}"


_SWEPT: set[str] = set()  # folders whose dead parts this process has removed
_SWEPT_LOCK = threading.Lock()


def _part_owner() -> str:
    """What a part file's name says of its writer: ``<pid>@<host>``, so that a folder shared
    by nodes (NFS) is swept only of this node's dead."""
    return f"{os.getpid()}@{_host_tag()}"


@functools.cache
def _host_tag() -> str:
    """This node's name as part file names hold it (its dots as underscores)."""
    import socket

    return socket.gethostname().replace(".", "_")


def _remove_dead_parts(final: Path) -> None:
    """A killed upload leaves ``.<name>.<pid>@<host>.<rand>[.src].jitrender-part`` (before:
    ``.<name>.<pid>...``) next to its object: remove those of this node's dead processes.
    Once per folder and process, at its first write there, for every name at once: a look
    per write read the whole folder each time (7 ms a write in a folder of 10,000 files here;
    a job's outputs and markers fill two such folders)."""
    folder = str(final.parent)
    with _SWEPT_LOCK:
        if folder in _SWEPT:
            return
        _SWEPT.add(folder)
    host = _host_tag()
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            name = entry.name
            if not (name.startswith(".") and name.endswith(_PART_SUFFIX)):
                continue
            stem = name[: -len(_PART_SUFFIX)].removesuffix(".src")
            parts = stem.rsplit(".", 2)
            if len(parts) != 3:
                continue
            pid_text, _, owner_host = parts[1].partition("@")
            if owner_host not in ("", host):
                continue  # another node's: its own next write there judges it
            if pid_text.isdigit() and not pid_alive(int(pid_text)):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (on this host)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def local_crc32c(path: Path, st: os.stat_result) -> str | None:
    """The crc32c of a local object's bytes: its stored tag while that is for this very
    version (generation), else computed now and stored for next time. None where no tag can
    be stored (a read-only bucket folder): reading every file on every stat would cost a warm
    run what a cold one costs; such objects are compared byte by byte instead."""
    generation = _local_generation(st)
    tag = _read_crc_tag(path)
    if tag is not None and tag[0] == generation:
        return tag[1]
    if not (os.access(path, os.W_OK) or os.access(path.parent, os.W_OK)):
        return None
    crc = crc32c_of_file(path)
    with contextlib.suppress(OSError):
        if _local_generation(path.stat()) == generation:  # not changed while being read
            _write_crc_tag(path, generation, crc)
    return crc


def _crc_sidecar(path: Path) -> Path:
    return path.with_name(f".{path.name}{_CRC_SIDECAR_SUFFIX}")


def _read_crc_tag(path: Path | str) -> tuple[str, str] | None:
    try:
        raw = os.getxattr(path, _CRC_XATTR)
    except (OSError, AttributeError):
        try:
            raw = _crc_sidecar(Path(path)).read_bytes()
        except OSError:
            return None
    generation, _, crc = raw.decode("ascii", "replace").partition(" ")
    return (generation, crc) if crc else None


def _write_crc_tag(path: Path, generation: str, crc: str) -> None:
    """Best effort: a read-only bucket folder just means the checksum is computed each time."""
    tag = f"{generation} {crc}".encode()
    try:
        os.setxattr(path, _CRC_XATTR, tag)
        return
    except (OSError, AttributeError) as exc:
        if isinstance(exc, OSError) and exc.errno not in (errno.ENOTSUP, errno.EPERM):
            return
    with contextlib.suppress(OSError):
        sidecar = _crc_sidecar(path)
        temp = sidecar.with_name(f".{path.name}.{os.getpid()}{_CRC_SIDECAR_SUFFIX}")
        temp.write_bytes(tag)
        os.replace(temp, sidecar)


def _write_xattrs(path: Path, metadata: Mapping[str, str]) -> dict[str, str]:
    """Best effort (a file system without user xattrs keeps none); what was stored."""
    stored = {}
    for key, value in metadata.items():
        with contextlib.suppress(OSError, AttributeError):
            os.setxattr(path, _XATTR_PREFIX + key, value.encode())
            stored[key] = value
    return stored


def _read_xattrs(path: Path) -> dict[str, str]:
    try:
        names = os.listxattr(path)
    except (OSError, AttributeError):
        return {}
    found = {}
    for name in names:
        if name.startswith(_XATTR_PREFIX):
            with contextlib.suppress(OSError):
                found[name[len(_XATTR_PREFIX) :]] = os.getxattr(path, name).decode()
    return found


# -- gs:// --------------------------------------------------------------------------------


def _anonymous_credentials_type() -> type:
    from google.auth.credentials import AnonymousCredentials

    return AnonymousCredentials


class GcsHttpError(Exception):
    """A JSON API or media request answered with an error status (``code``), as
    :func:`classify` reads it: 404 missing, 401/403 denied, 408/429/5xx transient."""

    def __init__(self, code: int, url: str, reason: str) -> None:
        super().__init__(f"{code} {reason} for {url}")
        self.code = code


class NoSuchBucket(GcsHttpError):
    """A listing answered 404: its bucket does not exist (a prefix of a bucket that does is an
    empty listing, never a 404) or the credentials cannot see it."""

    def __init__(self, code: int, url: str, reason: str, bucket: str) -> None:
        super().__init__(code, url, reason)
        self.bucket = bucket


_READ_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_only",)
# Uploads need a token that may write; asked for only by a process that uploads.
_WRITE_SCOPES = ("https://www.googleapis.com/auth/devstorage.read_write",)
# google-cloud-storage's own _MAX_MULTIPART_SIZE: up to it, it sends one multipart upload
# (the whole body in memory, as here); above it, a resumable upload in chunks, which stays its.
MULTIPART_UPLOAD_BYTES = 8 << 20
_DEFAULT_CONTENT_TYPE = "application/octet-stream"  # google-cloud-storage's, where none is known
_LIST_FIELDS = "items(name,size,generation,crc32c,metadata),nextPageToken"


def _preopened_pools() -> dict[str, Any]:
    """urllib3's pool classes for http and https, whose new connections take the socket that
    :func:`jitrender.preopen.open_early` opened to their host where there is one."""
    from urllib3.connection import HTTPConnection, HTTPSConnection
    from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

    from jitrender import preopen

    class Connection(HTTPConnection):
        def _new_conn(self) -> Any:
            sock = preopen.take(self._dns_host, self.port, self.socket_options, self.timeout)
            return sock if sock is not None else super()._new_conn()

    class SecureConnection(HTTPSConnection):
        def _new_conn(self) -> Any:
            sock = preopen.take(self._dns_host, self.port, self.socket_options, self.timeout)
            return sock if sock is not None else super()._new_conn()

    class Pool(HTTPConnectionPool):
        ConnectionCls = Connection

    class SecurePool(HTTPSConnectionPool):
        ConnectionCls = SecureConnection

    return {"http": Pool, "https": SecurePool}


class _GcsReader:
    """GCS's read requests (object metadata, listings, media GETs) over one urllib3 pool with
    google-auth credentials: no google-cloud-storage on the read path (importing it costs
    ~0.5 s of CPU at every start) and no Blob wrappers per listed object. Thread-safe."""

    def __init__(self, pool_size: int) -> None:
        from jitrender.preopen import api_base

        self.base = api_base()
        self.anonymous = bool(os.environ.get("STORAGE_EMULATOR_HOST"))
        self._pool_size = pool_size
        self._pool: Any = None
        self._credentials: dict[tuple[str, ...], Any] = {}  # by scopes: read-only, read-write
        self._auth_request: Any = None
        self._lock = threading.Lock()

    def pool(self) -> Any:
        with self._lock:
            if self._pool is None:
                import urllib3

                from jitrender.transport import http_settings, read_timeout_s

                self._pool = urllib3.PoolManager(
                    maxsize=self._pool_size,
                    ca_certs=http_settings().ca_bundle,  # as requests (uploads) is told
                    retries=False,  # with_retries decides, by classify()
                    timeout=urllib3.Timeout(connect=30, read=read_timeout_s()),
                )
                # The first connection takes the socket the head start opened early, if any.
                self._pool.pool_classes_by_scheme = _preopened_pools()
            return self._pool

    def preconnect(self, count: int) -> None:
        """Have ``count`` connections to the API host open and idle in the pool, opening the
        missing ones all at once (urllib3 has no public call for it: this takes and gives back
        pool slots as its own ``urlopen`` does, through ``_get_conn``/``_put_conn``)."""
        from concurrent.futures import ThreadPoolExecutor

        pool = self.pool().connection_from_url(self.base)
        # Every slot taken before any goes back: else one connection is handed round. The
        # open ones go back at once (microseconds later): a request made meanwhile, as the
        # head start's download of the scene, still finds its warm connection.
        taken = [pool._get_conn() for _ in range(min(count, self._pool_size))]
        conns = [conn for conn in taken if not conn.is_connected]
        for conn in taken:
            if conn.is_connected:
                pool._put_conn(conn)
        if not conns:
            return

        def connect(conn: Any) -> None:
            try:
                conn.connect()
            except OSError:
                conn.close()  # it reconnects when next used, as urllib3's own do

        try:
            if self.base.startswith("https://"):  # a TLS handshake each: all at once
                with ThreadPoolExecutor(len(conns), thread_name_prefix="preconnect") as threads:
                    list(threads.map(connect, conns))
            else:  # a plain TCP connect returns at once: no threads to start
                for conn in conns:
                    connect(conn)
        finally:
            for conn in conns:
                pool._put_conn(conn)

    def authorize(
        self, method: str, url: str, headers: dict[str, str], *, write: bool = False
    ) -> None:
        """Add the credentials' header (refreshing a token when due): read-only scope, or
        read-write with ``write``. Nothing on the emulator (anonymous)."""
        if self.anonymous:
            return
        pool = self.pool()
        scopes = _WRITE_SCOPES if write else _READ_SCOPES
        with self._lock:  # refreshes (rarely) a shared token: one thread at a time
            credentials = self._credentials.get(scopes)
            if credentials is None:
                import google.auth
                from google.auth.transport.urllib3 import Request

                credentials, _project = google.auth.default(scopes=scopes)
                self._credentials[scopes] = credentials
                if self._auth_request is None:
                    self._auth_request = Request(pool)
            credentials.before_request(self._auth_request, method, url, headers)

    def get(self, url: str, headers: dict[str, str] | None = None, *, stream: bool = False) -> Any:
        """A GET; raises :class:`GcsHttpError` for an error status. With ``stream`` the body
        is left to read (``read(n, decode_content=False)``, then ``release_conn()``)."""
        headers = dict(headers or {})
        self.authorize("GET", url, headers)
        response = self.pool().request(
            "GET", url, headers=headers, preload_content=not stream, decode_content=False
        )
        if response.status >= 400:
            reason = response.reason or ""
            response.drain_conn()
            response.release_conn()
            raise GcsHttpError(response.status, url, reason)
        return response

    def get_json(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        import json
        from urllib.parse import urlencode

        query = f"?{urlencode(params)}" if params else ""
        response = self.get(f"{self.base}/storage/v1/{path}{query}")
        data: dict[str, Any] = json.loads(response.data)
        return data

    def write(
        self,
        method: str,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> bytes:
        """A request with write credentials (an upload, a delete); the answer's body. Raises
        :class:`GcsHttpError` for an error status (its reason with the server's message)."""
        import json

        sent = dict(headers or {})
        self.authorize(method, url, sent, write=True)
        response = self.pool().request(method, url, body=body, headers=sent)
        if response.status >= 400:
            reason = response.reason or ""
            with contextlib.suppress(ValueError, KeyError, AttributeError, TypeError):
                reason = f"{reason}: {json.loads(response.data)['error']['message']}"
            raise GcsHttpError(response.status, url.partition("?")[0], reason)
        data: bytes = response.data
        return data


def _object_path(bucket: str, name: str) -> str:
    """The JSON API's path of one object (``b/BUCKET/o/NAME``, each part percent-encoded)."""
    from urllib.parse import quote

    return f"b/{quote(bucket, safe='')}/o/{quote(name, safe='')}"


def _info_of(bucket: str, item: Mapping[str, Any]) -> ObjectInfo:
    metadata = item.get("metadata")
    return ObjectInfo(
        f"gs://{bucket}/{item['name']}",
        int(item.get("size") or 0),
        str(item.get("generation")),
        item.get("crc32c"),
        dict(metadata) if metadata else _NO_METADATA,  # most have none: no dict each
    )


class GCSStore(Store):
    """Google Cloud Storage: reads (stat, listings, media GETs) as plain JSON API requests
    (:class:`_GcsReader`; through google-cloud-storage's session where proxies are set),
    uploads up to ``MULTIPART_UPLOAD_BYTES`` and deletes over the same pool, larger uploads
    through google-cloud-storage (resumable). Reads are pinned to the generation that was
    listed, so a changed object can never be mixed with the old one. Honours
    ``STORAGE_EMULATOR_HOST`` (anonymous credentials) for tests and local emulators."""

    # Connections kept open: above the fetch pool (16) plus the chunk workers (12) combined.
    POOL_CONNECTIONS = 64

    def delete(self, url: str) -> None:
        bucket_name, name = self._split(url)
        if self._reader is not None:
            path = _object_path(bucket_name, name)
            self._reader.write("DELETE", f"{self._reader.base}/storage/v1/{path}")
            return
        self._client().bucket(bucket_name).blob(name).delete(retry=None)

    def __init__(self, project: str | None = None) -> None:
        self._project = project
        self._shared: Any = None
        self._auth_request: Any = None
        self._lock = threading.Lock()
        # Reads go the light way unless proxies are set, which only the google-cloud-storage
        # (requests) session honours.
        from jitrender.transport import http_settings

        self._reader = None if http_settings().has_proxies else _GcsReader(self.POOL_CONNECTIONS)

    def _client(self) -> Any:
        """One client for all threads (as transfer_manager does with threads): building a
        client per thread cost ~20 ms of CPU each, and credentials are fetched once."""
        with self._lock:
            if self._shared is None:
                from google.cloud import storage
                from requests.adapters import HTTPAdapter

                if os.environ.get("STORAGE_EMULATOR_HOST"):
                    from google.auth.credentials import AnonymousCredentials

                    client = storage.Client(
                        project=self._project or "jitrender-emulator",
                        credentials=AnonymousCredentials(),
                    )
                else:
                    client = storage.Client(project=self._project)
                # requests keeps 10 connections per host by default: too few for the pools.
                adapter = HTTPAdapter(
                    pool_connections=4, pool_maxsize=self.POOL_CONNECTIONS, max_retries=0
                )
                client._http.mount("https://", adapter)
                client._http.mount("http://", adapter)
                from jitrender.transport import http_settings

                settings = http_settings()
                if not settings.has_proxies and settings.ca_bundle is None:
                    # Else requests scans the whole environment for proxies on every request.
                    client._http.trust_env = False
                self._shared = client
            return self._shared

    @staticmethod
    def _split(url: str) -> tuple[str, str]:
        _, bucket, path = split_url(url)
        return bucket, path.lstrip("/")

    def _info(self, blob: Any) -> ObjectInfo:
        return ObjectInfo(
            url=f"gs://{blob.bucket.name}/{blob.name}",
            size=int(blob.size or 0),
            generation=str(blob.generation),
            crc32c=blob.crc32c,
            metadata=dict(blob.metadata or {}),
        )

    def _pages(self, bucket: str, params: Mapping[str, str]) -> Iterator[dict[str, Any]]:
        """The listing's items, page after page, fetched only as far as they are read."""
        from urllib.parse import quote

        assert self._reader is not None
        query = dict(params) | {"fields": _LIST_FIELDS, "maxResults": "1000"}
        while True:
            try:
                page = self._reader.get_json(f"b/{quote(bucket, safe='')}/o", query)
            except GcsHttpError as exc:
                if exc.code == 404:
                    raise NoSuchBucket(404, f"gs://{bucket}", "Not Found", bucket) from None
                raise
            yield from page.get("items", ())
            token = page.get("nextPageToken")
            if not token:
                return
            query["pageToken"] = token

    def stat(self, url: str) -> ObjectInfo | None:
        bucket_name, name = self._split(url)
        if self._reader is not None:
            path = _object_path(bucket_name, name)
            try:
                item = self._reader.get_json(path, {})
            except GcsHttpError as exc:
                if exc.code == 404:
                    return None
                raise
            return _info_of(bucket_name, item)
        blob = self._client().bucket(bucket_name).get_blob(name, retry=None)
        return None if blob is None else self._info(blob)

    def preconnect(self, url: str, count: int) -> None:
        if self._reader is not None:  # requests' session (proxies) opens its own
            self._reader.preconnect(count)

    def list(self, prefix_url: str, *, recursive: bool = True) -> list[ObjectInfo]:
        bucket_name, prefix = self._split(prefix_url)
        if self._reader is not None:
            params = {"prefix": prefix} if recursive else {"prefix": prefix, "delimiter": "/"}
            return [
                _info_of(bucket_name, item)
                for item in self._pages(bucket_name, params)
                if not item["name"].endswith("/")
            ]
        blobs = self._client().list_blobs(
            bucket_name, prefix=prefix, delimiter=None if recursive else "/", retry=None
        )
        return [self._info(blob) for blob in blobs if not blob.name.endswith("/")]

    def list_range(
        self, prefix_url: str, first_url: str, last_url: str
    ) -> builtins.list[ObjectInfo]:
        bucket_name, prefix = self._split(prefix_url)
        first, last = self._split(first_url)[1], self._split(last_url)[1]
        if self._reader is not None:
            found = []
            params = {"prefix": prefix, "delimiter": "/", "startOffset": first}
            for item in self._pages(bucket_name, params):
                if item["name"] > last:
                    break
                if not item["name"].endswith("/"):
                    found.append(_info_of(bucket_name, item))
            return found
        blobs = self._client().list_blobs(
            bucket_name, prefix=prefix, delimiter="/", start_offset=first, retry=None
        )
        found = []
        for blob in blobs:  # pages are fetched lazily: stop once past the range
            if blob.name > last:
                break
            if not blob.name.endswith("/"):
                found.append(self._info(blob))
        return found

    def _media_request(
        self, info: ObjectInfo, start: int = 0, end: int | None = None
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers (no credentials: the caller's client adds them) of one media
        GET of ``info``'s bytes, pinned to its generation."""

        reader = self._reader
        base = reader.base if reader is not None else self._client()._connection.API_BASE_URL
        bucket_name, name = self._split(info.url)
        url = f"{base}/download/storage/v1/{_object_path(bucket_name, name)}?alt=media"
        if info.generation.isdigit():
            url += f"&generation={info.generation}"  # pinned: a newer version is never mixed in
        # "gzip" is what makes GCS send a gzip-encoded object as stored (with "identity" it
        # decompresses it, and neither size nor crc32c match); other objects are never encoded.
        headers = {"Accept-Encoding": "gzip"}
        last = (end if end is not None else info.size) - 1
        if start > 0 or last < info.size - 1:
            headers["Range"] = f"bytes={start}-{last}"
        return url, headers

    def http_object(self, info: ObjectInfo) -> tuple[str, str, dict[str, str]]:
        """The object's XML API URL (``<base>/<bucket>/<name>``, which needs no query string,
        so any HTTP client can join it) and the credentials' headers. It is not pinned to the
        generation: the caller's size and crc32c check turns another version's bytes away."""
        reader = self._reader
        base = reader.base if reader is not None else self._client()._connection.API_BASE_URL
        bucket_name, name = self._split(info.url)
        headers: dict[str, str] = {}
        self._authorize(f"{base}/{bucket_name}/{name}", headers)
        return base, f"{bucket_name}/{name}", headers

    def _authorize(self, url: str, headers: dict[str, str]) -> None:
        """Add the credentials' header for a GET of ``url`` (refreshing a token when due)."""
        if self._reader is not None:
            self._reader.authorize("GET", url, headers)
            return
        credentials = self._client()._http.credentials
        if not isinstance(credentials, _anonymous_credentials_type()):
            with self._lock:  # refreshes (rarely) a shared token: one thread at a time
                if self._auth_request is None:
                    from google.auth.transport.requests import Request

                    self._auth_request = Request(self._client()._http)
                credentials.before_request(self._auth_request, "GET", url, headers)

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        # One streamed media GET read in 1 MiB pieces: blob.download_to_file reads 8 KiB at a
        # time, which made the Python loop, not the link, the limit on large objects.
        if self._reader is not None:
            url, headers = self._media_request(info, start, end)
            response = self._reader.get(url, headers, stream=True)
            try:
                self._check_encoding(info, response.headers)
                while piece := response.read(1 << 20, decode_content=False):
                    sink.write(piece)
            except BaseException:
                # The body was not read to its end (the sink stopped it, or it broke): the
                # connection cannot carry another request.
                response.close()
                raise
            finally:
                response.release_conn()
            return
        url, headers = self._media_request(info, start, end)  # the session adds it
        from jitrender.transport import read_timeout_s

        with self._client()._http.get(
            url, headers=headers, stream=True, timeout=(30, read_timeout_s())
        ) as response:
            response.raise_for_status()  # HTTPError carries the status classify() reads
            self._check_encoding(info, response.headers)
            while piece := response.raw.read(1 << 20, decode_content=False):
                sink.write(piece)

    @staticmethod
    def _check_encoding(info: ObjectInfo, headers: Mapping[str, str]) -> None:
        stored = headers.get("X-Goog-Stored-Content-Encoding", "identity")
        served = headers.get("Content-Encoding", "identity")
        if stored.lower() != served.lower():
            # Served transformed (decoded): its bytes can never match what the store
            # promises, so retrying cannot help. The job's data (or a proxy) is the problem.
            raise DataError(
                f"{info.url}: stored with Content-Encoding {stored!r} but served as "
                f"{served!r}; cannot verify it against its size and crc32c"
            )

    def _upload_small(
        self, data: bytes, url: str, metadata: Metadata, content_type: str, match: int | None
    ) -> ObjectInfo:
        """One multipart upload (JSON API) over the reader's pool: what google-cloud-storage
        sends for bodies up to ``MULTIPART_UPLOAD_BYTES``, without importing it. ``match`` is
        the ``ifGenerationMatch`` precondition (0: only if absent; None: unconditional). The
        metadata part carries the body's crc32c, so the server refuses corrupted bytes."""
        import json
        import secrets
        from urllib.parse import quote

        assert self._reader is not None
        bucket_name, name = self._split(url)
        resource: dict[str, Any] = {"name": name, "crc32c": crc32c_of_bytes(data)}
        if metadata:
            resource["metadata"] = dict(metadata)
        boundary = f"==jitrender-{secrets.token_hex(16)}=="
        while boundary.encode() in data:  # a body that holds it would end its part early
            boundary = f"==jitrender-{secrets.token_hex(16)}=="
        separator = f"--{boundary}\r\n".encode()
        body = b"".join(
            (
                separator,
                b"content-type: application/json; charset=UTF-8\r\n\r\n",
                json.dumps(resource).encode(),
                b"\r\n",
                separator,
                f"content-type: {content_type}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--".encode(),
            )
        )
        query = "uploadType=multipart"
        if match is not None:
            query += f"&ifGenerationMatch={match}"
        answer = self._reader.write(
            "POST",
            f"{self._reader.base}/upload/storage/v1/b/{quote(bucket_name, safe='')}/o?{query}",
            body,
            {"Content-Type": f'multipart/related; boundary="{boundary}"'},
        )
        return _info_of(bucket_name, json.loads(answer))

    def _put_small(
        self, data: bytes, url: str, metadata: Metadata, content_type: str, *, overwrite: bool
    ) -> PutResult:
        """:meth:`put_if_absent`'s semantics for a body in memory, on the light path."""
        existing = self.stat(url) if overwrite else None
        match = 0 if existing is None else int(existing.generation)
        try:
            info = self._upload_small(data, url, metadata, content_type, match)
        except GcsHttpError as exc:
            if exc.code != 412 or overwrite:  # 412 with overwrite: another writer, raised
                raise
            return _compare_bytes(data, self.stat(url))
        return PutResult("created" if existing is None else "overwritten", info)

    def put_if_absent(
        self, source: Path, url: str, metadata: Metadata = None, *, overwrite: bool = False
    ) -> PutResult:
        if self._reader is not None:
            with open(source, "rb") as handle:  # sized as google-cloud-storage does: fstat
                small = os.fstat(handle.fileno()).st_size <= MULTIPART_UPLOAD_BYTES
                data = handle.read() if small else b""
            if small:
                import mimetypes

                # The content type google-cloud-storage gives it: guessed from the file's name.
                content_type = mimetypes.guess_type(str(source))[0] or _DEFAULT_CONTENT_TYPE
                return self._put_small(data, url, metadata, content_type, overwrite=overwrite)
        from google.api_core.exceptions import PreconditionFailed

        bucket_name, name = self._split(url)
        blob = self._client().bucket(bucket_name).blob(name)
        if metadata:
            blob.metadata = dict(metadata)
        existing = self.stat(url) if overwrite else None
        match = 0 if existing is None else int(existing.generation)
        try:
            blob.upload_from_filename(
                str(source), if_generation_match=match, checksum="crc32c", retry=None
            )
        except PreconditionFailed:
            if overwrite:
                raise
            return _compare(source, self.stat(url), url)
        outcome: PutOutcome = "created" if existing is None else "overwritten"
        return PutResult(outcome, self._info(blob))

    def put_bytes_if_absent(self, data: bytes, url: str, metadata: Metadata = None) -> PutResult:
        """One create-if-absent upload straight from memory (no temp file a kill could leave)."""
        if self._reader is not None and len(data) <= MULTIPART_UPLOAD_BYTES:
            return self._put_small(data, url, metadata, _DEFAULT_CONTENT_TYPE, overwrite=False)
        from google.api_core.exceptions import PreconditionFailed

        bucket_name, name = self._split(url)
        blob = self._client().bucket(bucket_name).blob(name)
        if metadata:
            blob.metadata = dict(metadata)
        try:
            blob.upload_from_string(data, if_generation_match=0, checksum="crc32c", retry=None)
        except PreconditionFailed:
            return _compare_bytes(data, self.stat(url))
        return PutResult("created", self._info(blob))

    def replace_bytes(self, data: bytes, url: str) -> None:
        """As the base class: one upload straight from memory (GCS swaps objects whole)."""
        if self._reader is not None and len(data) <= MULTIPART_UPLOAD_BYTES:
            self._upload_small(data, url, None, _DEFAULT_CONTENT_TYPE, None)
            return
        bucket_name, name = self._split(url)
        blob = self._client().bucket(bucket_name).blob(name)
        blob.upload_from_string(data, checksum="crc32c", retry=None)


def _compare_bytes(data: bytes, existing: ObjectInfo | None) -> PutResult:
    """After a refused create-if-absent: ``identical`` only where the object's crc32c is the
    body's; else (or when it is gone again) a conflict."""
    if existing is None:
        return PutResult("conflict", None)
    same = existing.crc32c == crc32c_of_bytes(data)
    return PutResult("identical" if same else "conflict", existing)


# -- anything else fsspec speaks ----------------------------------------------------------


class FsspecStore(Store):
    """Any other fsspec protocol. Create-if-absent is check-then-write here (not atomic):
    use a store with preconditions (``gs://``, ``file://``) where exactly-once matters."""

    def delete(self, url: str) -> None:
        self.fs.rm_file(self._path(url))

    def __init__(self, protocol: str) -> None:
        import fsspec

        self.protocol = protocol
        self.fs = fsspec.filesystem(protocol)

    def _path(self, url: str) -> str:
        return str(self.fs._strip_protocol(url))

    def _info(self, url: str, raw: Mapping[str, Any]) -> ObjectInfo:
        generation = (
            raw.get("generation")
            or raw.get("ETag")
            or raw.get("etag")
            or raw.get("mtime")
            or raw.get("LastModified")
            or raw.get("created")
            or raw.get("size")
        )
        return ObjectInfo(url, int(raw.get("size") or 0), str(generation), raw.get("crc32c"))

    def stat(self, url: str) -> ObjectInfo | None:
        try:
            raw = self.fs.info(self._path(url))
        except FileNotFoundError:
            return None
        if raw.get("type") == "directory":
            return None
        return self._info(url, raw)

    def list(self, prefix_url: str, *, recursive: bool = True) -> list[ObjectInfo]:
        path = self._path(prefix_url)
        base = path if prefix_url.endswith("/") else path.rsplit("/", 1)[0]
        try:
            found = self.fs.find(base, detail=True) if recursive else self.fs.ls(base, detail=True)
        except FileNotFoundError:
            return []
        items = found.values() if isinstance(found, dict) else found
        infos = []
        for raw in items:
            name = str(raw["name"])
            if raw.get("type") == "directory" or not name.startswith(path.rstrip("/")):
                continue
            infos.append(self._info(f"{self.protocol}://{name.lstrip('/')}", raw))
        return sorted(infos, key=lambda i: i.url)

    def download(
        self, info: ObjectInfo, sink: IO[bytes], start: int = 0, end: int | None = None
    ) -> None:
        with self.fs.open(self._path(info.url), "rb") as handle:
            _copy_range(handle, sink, start, end if end is not None else info.size)

    def put_if_absent(
        self, source: Path, url: str, metadata: Metadata = None, *, overwrite: bool = False
    ) -> PutResult:
        existing = self.stat(url)
        if existing is not None and not overwrite:
            return _compare(source, existing, url, lambda: self.fs.open(self._path(url), "rb"))
        self.fs.put_file(str(source), self._path(url))
        return PutResult("created" if existing is None else "overwritten", self.stat(url))

    def replace_bytes(self, data: bytes, url: str) -> None:
        self.fs.pipe_file(self._path(url), data)


# -- registry -----------------------------------------------------------------------------

# scheme -> factory; a studio adds one with the ``jitrender.stores`` entry point.
_STORE_FACTORIES: Registry[Callable[[str], Store]] = Registry("jitrender.stores")
_STORE_FACTORIES.add("file", lambda _scheme: LocalStore())
_STORE_FACTORIES.add("gs", lambda _scheme: GCSStore())


class Stores:
    """One store instance per scheme, created on first use. Not global: each run owns one."""

    def __init__(self) -> None:
        self._stores: dict[str, Store] = {}
        self._lock = threading.Lock()

    def for_url(self, url: str) -> Store:
        scheme = split_url(url)[0]
        with self._lock:
            store = self._stores.get(scheme)
            if store is None:
                factory = _STORE_FACTORIES.get(scheme) or FsspecStore
                try:
                    store = factory(scheme)
                except (ImportError, ValueError) as exc:
                    raise ConfigError(
                        f"{url}: no storage backend for {scheme}:// ({exc})"
                    ) from None
                self._stores[scheme] = store
            return store
