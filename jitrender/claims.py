"""Frame claims: two runs of the same frames at once render each frame once.

A farm that thinks a task lost (a node that stopped answering but still renders), a
wrangler who submits a job again while it runs, two tasks whose chunks overlap: without a
claim, both runs render the frame, and each output goes to whichever upload came first, so a
frame's files could come from two renders. Before it renders, a run claims each frame it has
to render in the bucket, beside the job's done markers:

    <outputs>/_jitrender/<hash>/claims/frame.<n>.<k>.json    {"run": <run id>}
    <outputs>/_jitrender/<hash>/claims/run.<run id>.json     the run's lease

A claim is created create-if-absent, so of two runs claiming a frame at once one gets it. The
lease says who holds the claims and that it is alive: the host, the process and the time it
was last written, every heartbeat interval (``--heartbeat-interval``; 0 turns heartbeats and
claims off). A claim is dead when its run's lease is gone, was not written for its ``ttl``
(six intervals, at least a minute), or names a process of this machine that no longer exists
(a killed run retried on the same node takes its frames back at once). A dead claim ``k`` is
taken over by creating ``k + 1``, create-if-absent again, so two runs taking over a dead run's
frame cannot both get it; the claims below a held one stay until its holder releases it (a
run's first claim, ``0``, is refused while any claim of the frame is there), and a dead run's
lease stays to say so.

Frames another live run holds are not rendered: the run renders the rest, then waits for
them. When their done markers appear, they count as done; when their run stops without
finishing them (it released or lost its claims), ``jitrender.run`` renders them in a run of
their own in the same process, which claims them again (and leaves any it loses that way to
the retry, exit 75). A run releases its claims (and then its lease) when it ends, however it
ends, unless it is killed outright. Split jobs claim nothing (their tasks render parts of the
same frames at once; each part is create-if-absent already).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar, cast

from jitrender.errors import JitrenderError, MissingDependencyError, PermissionDeniedError
from jitrender.sequences import format_frames, parse_frames
from jitrender.storage import ObjectInfo, RetryPolicy, Store, with_retries

CLAIMS_FOLDER = "claims/"
MIN_TTL_S = 60.0
LEASE_GRACE_S = 2.0  # how long a claim may be seen without its lease (both being written)
TTL_INTERVALS = 6
FIRST_LOOK_S = 0.25  # a waiting run's second look at the frames another holds; then doubling
_CLAIM = re.compile(r"frame\.(-?\d+)\.(\d+)\.json")  # below CLAIMS_FOLDER: frame, k
_LEASE = re.compile(r"run\.([A-Za-z0-9_.-]+)\.json")


T = TypeVar("T")
R = TypeVar("R")


def claims_in(listing: Iterable[ObjectInfo], folder: str) -> Iterator[tuple[int, int, ObjectInfo]]:
    """(frame, k, object) of each claim in a listing of (or holding) the claims ``folder``."""
    for info in listing:
        if info.url.startswith(folder):
            claim = _CLAIM.fullmatch(info.url[len(folder) :])
            if claim is not None:
                yield int(claim.group(1)), int(claim.group(2)), info


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str:
    """When process ``pid`` started (clock ticks since boot), or "" when it does not exist."""
    stat = _read(f"/proc/{pid}/stat")
    # The command name (field 2) may hold spaces and parentheses: count from its end.
    fields = stat[stat.rfind(")") + 2 :].split() if stat else []
    return fields[19] if len(fields) > 19 else ""


def _machine() -> dict[str, str]:
    """Who can tell whether a process of this lease is alive: the same host, boot and PID
    namespace (containers sharing a host name have their own)."""
    pidns = ""
    with contextlib.suppress(OSError):
        pidns = os.readlink("/proc/self/ns/pid")
    return {
        "host": socket.gethostname(),
        "boot": _read("/proc/sys/kernel/random/boot_id"),
        "pidns": pidns,
    }


@dataclass(frozen=True)
class Holder:
    """A claim's run, as its lease describes it."""

    run: str
    lease: dict[str, object] | None  # None: no lease in the bucket

    def alive(self, machine: dict[str, str], now: float) -> bool:
        lease = self.lease
        if lease is None:
            return False
        try:
            refreshed = float(str(lease["refreshed"]))
            ttl = float(str(lease["ttl"]))
        except (KeyError, ValueError):
            return False
        if now - refreshed > ttl:
            return False
        here = all(lease.get(key) == value for key, value in machine.items())
        if here and machine["boot"] and machine["pidns"]:
            pid = lease.get("pid")
            return isinstance(pid, int) and _process_start(pid) == lease.get("pid_start")
        return True

    def frames(self) -> set[int] | None:
        """The frames the lease says its run claimed; None when it does not say."""
        text = (self.lease or {}).get("frames")
        if not isinstance(text, str) or not text:
            return None
        try:
            return set(parse_frames(text))
        except JitrenderError:
            return None

    def describe(self) -> str:
        lease = self.lease or {}
        return f"run {self.run} (host {lease.get('host', '?')}, pid {lease.get('pid', '?')})"


class Claims:
    """This run's claims on the frames of one job (see the module's docstring)."""

    def __init__(
        self,
        prefix: str,
        store: Store,
        retry: RetryPolicy,
        interval_s: float,
        stop: threading.Event,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        self.folder = prefix + CLAIMS_FOLDER
        self.warn = warn
        self.store = store
        self.retry = retry
        self.interval_s = interval_s
        self.ttl_s = max(MIN_TTL_S, TTL_INTERVALS * interval_s)
        self.stop = stop
        self.machine = _machine()
        self.run = f"{self.machine['host'][:40]}-{os.getpid()}-{secrets.token_hex(4)}"
        self.run = re.sub(r"[^A-Za-z0-9_.-]", "_", self.run)
        self.lease_url = f"{self.folder}run.{self.run}.json"
        self.held: dict[int, str] = {}  # frame -> the URL of our claim
        self._below: list[str] = []  # dead claims under ours, deleted before ours
        self._frames = ""  # the frames this run claims (in its lease)
        # A dead run's lease -> (the frames it claimed, those this run took from it): the
        # lease goes at release once no claim of it can be left.
        self._dead: dict[str, tuple[set[int] | None, set[int]]] = {}
        self._closed = threading.Event()
        self._releasing: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- the lease -----------------------------------------------------------------------

    def _lease_bytes(self) -> bytes:
        pid = os.getpid()
        lease = {"run": self.run, "pid": pid, "pid_start": _process_start(pid),
                 "refreshed": time.time(), "ttl": self.ttl_s, "frames": self._frames,
                 **self.machine}  # fmt: skip
        return json.dumps(lease, sort_keys=True).encode()

    def _write_lease(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            with_retries(
                lambda: self.store.replace_bytes(self._lease_bytes(), self.lease_url),
                self.lease_url,
                self.retry,
            )

    def _refresh(self) -> None:
        warned = False
        while not self._closed.wait(self.interval_s):
            try:
                self._write_lease()
            except PermissionDeniedError as exc:  # create-only credentials (objectCreator)
                if not warned and self.warn is not None:
                    self.warn(
                        f"frame claims: cannot rewrite this run's lease ({exc.message}); "
                        f"after {self.ttl_s:.0f} s other runs may take its frames as a dead "
                        "run's (give the credentials delete on the outputs prefix, or run with "
                        "--heartbeat-interval 0)"
                    )
                warned = True
            except Exception:  # a missed refresh: the next one comes
                continue

    # -- claiming ------------------------------------------------------------------------

    def take(self, frames: Iterable[int]) -> dict[int, Holder]:
        """Claim ``frames``; returns those another live run holds (with who holds each).

        The lease and each frame's first claim go out at once (one round trip where nobody
        else claims the frames); only a frame already claimed costs a look at its claims."""
        wanted = list(frames)
        self._frames = format_frames(wanted)
        body = json.dumps({"run": self.run}).encode()

        def claim(item: tuple[int, int]) -> tuple[int, str, bool]:
            frame, k = item
            url = f"{self.folder}frame.{frame}.{k}.json"
            result = with_retries(
                lambda: self.store.put_bytes_if_absent(body, url), url, self.retry
            )
            return frame, url, result.outcome in ("created", "identical")

        # The lease first where the store works one call at a time (a local folder).
        calls: list[Callable[[], object]] = [self._write_lease]
        calls += [functools.partial(claim, (f, 0)) for f in wanted]
        taken = cast(list[tuple[int, str, bool]], self._each(lambda call: call(), calls)[1:])
        threading.Thread(target=self._refresh, name="claims", daemon=True).start()
        claimed = [f for f, _, ours in taken if not ours]
        for frame, url, ours in taken:
            if ours:
                self.held[frame] = url
        others: dict[int, Holder] = {}
        if not claimed:
            return others
        tops, holders = self._survey(claimed)
        now = time.time()
        again: list[tuple[int, int]] = []
        for frame in claimed:
            top = tops.get(frame)
            holder = holders[top[1]] if top is not None else None
            if holder is not None and holder.alive(self.machine, now):
                others[frame] = holder
            else:  # dead (or released since): the next claim
                again.append((frame, top[0] + 1 if top is not None else 0))
                if holder is not None and holder.lease is not None:
                    self._dead.setdefault(holder.run, (holder.frames(), set()))
        took_from = {frame: tops[frame][1] for frame, _ in again if frame in tops}
        for frame, url, ours in self._each(claim, again):
            if ours:
                self.held[frame] = url
                if took_from.get(frame) in self._dead:
                    self._dead[took_from[frame]][1].add(frame)
                # The claims below stay while this one is held (a claim 0 gone while claim 1
                # is held would let the next run's first claim through); they go at release.
                k = int(url.rsplit(".", 2)[1])
                self._below += [f"{self.folder}frame.{frame}.{j}.json" for j in range(k)]
            else:  # another run claimed it this moment: alive by definition
                others[frame] = self._holder_of(url)
        return others

    def _each(self, work: Callable[[T], R], items: list[T]) -> list[R]:
        """``work`` on every item, at once where the store takes calls in parallel (one at a
        time on a local folder, where each is this process's CPU)."""
        if len(items) <= 1 or not self.store.concurrent_reads:
            return [work(item) for item in items]
        with ThreadPoolExecutor(min(16, len(items)), thread_name_prefix="claims") as pool:
            return list(pool.map(work, items))

    def _survey(self, frames: list[int]) -> tuple[dict[int, tuple[int, str]], dict[str, Holder]]:
        """The highest claim of each of ``frames`` (its ``k`` and run) and those runs. A run
        whose claim is there but not its lease is claiming right now (they are written at
        once): its lease is looked for again after a moment before it counts as dead."""
        listing = self._listing()
        wanted = set(frames)
        top_urls: dict[int, tuple[int, str]] = {}
        for frame, k, info in claims_in(listing, self.folder):
            if frame in wanted and (frame not in top_urls or k > top_urls[frame][0]):
                top_urls[frame] = (k, info.url)
        tops = {frame: (k, self._run_of(url)) for frame, (k, url) in top_urls.items()}
        runs = {run for _, run in tops.values()}
        leases = self._leases(listing)
        if any(run and run not in leases for run in runs):
            self.stop.wait(LEASE_GRACE_S)
            leases = self._leases(self._listing())
        holders = {run: Holder(run, self._lease(leases.get(run))) for run in runs}
        return tops, holders

    def _listing(self) -> list[ObjectInfo]:
        return with_retries(lambda: self.store.list(self.folder), self.folder, self.retry)

    def _leases(self, listing: list[ObjectInfo]) -> dict[str, ObjectInfo]:
        found = {}
        for info in listing:
            lease = _LEASE.fullmatch(info.url[len(self.folder) :])
            if lease is not None:
                found[lease.group(1)] = info
        return found

    def _json(self, url: str) -> dict[str, object] | None:
        """A small JSON object of the claims folder, or None when it is gone (released)."""
        try:
            data = json.loads(with_retries(lambda: self.store.read_bytes(url), url, self.retry))
        except MissingDependencyError:
            return None
        except ValueError:  # not JSON: no run of ours wrote it
            return None
        return data if isinstance(data, dict) else None

    def _run_of(self, url: str) -> str:
        """The run a claim names; "" for a claim gone meanwhile: no live run holds it."""
        data = self._json(url)
        return str(data.get("run", "")) if data is not None else ""

    def _lease(self, info: ObjectInfo | None) -> dict[str, object] | None:
        return self._json(info.url) if info is not None else None

    def _holder_of(self, url: str) -> Holder:
        run = self._run_of(url)
        return Holder(run, self._json(f"{self.folder}run.{run}.json") if run else None)

    def _delete(self, url: str) -> None:
        """Best effort: a claim or lease left behind is dead by its lease, later."""
        with contextlib.suppress(JitrenderError):
            with_retries(lambda: self.store.delete(url), url, self.retry)

    # -- waiting for the others ----------------------------------------------------------

    def wait_for(
        self,
        others: dict[int, Holder],
        is_done: Callable[[int], bool],
        on_poll: Callable[[dict[int, Holder]], None],
    ) -> tuple[set[int], dict[int, Holder]]:
        """Wait until each frame of ``others`` is done, or until a run holding one stops
        holding it without finishing it, or this run is stopped; returns (the frames done,
        those not done with their last holder)."""
        pending = dict(others)
        done: set[int] = set()
        # Looked at soon, then less and less often, up to once an interval (at most 10 s): a
        # holder about to finish (a duplicate dispatch of the same chunk) is seen within a
        # fraction of the wait so far, a long one costs the requests of one look an interval.
        most = min(max(self.interval_s, 1.0), 10.0)
        pause = min(FIRST_LOOK_S, most)
        while pending and not self.stop.is_set():
            for frame in sorted(pending):
                if is_done(frame):
                    done.add(frame)
                    del pending[frame]
            if not pending:
                break
            tops, holders = self._survey(sorted(pending))
            now = time.time()
            lost: dict[int, Holder] = {}
            for frame in sorted(pending):
                top = tops.get(frame)
                holder = holders[top[1]] if top is not None else None
                if holder is not None and holder.alive(self.machine, now):
                    pending[frame] = holder
                elif is_done(frame):  # finished, then released since the look above
                    done.add(frame)
                    del pending[frame]
                else:
                    lost[frame] = holder or pending[frame]
            if lost:
                return done, lost
            on_poll(pending)
            self.stop.wait(pause)
            pause = min(pause * 2, most)
        return done, pending

    # -- the end -------------------------------------------------------------------------

    def release(self) -> None:
        """Start deleting, best effort: the dead claims below this run's, then its claims,
        then its lease (each step's deletes at once). Never a claim without the claims
        below it, nor one without its lease. :meth:`released` waits for it."""
        self._closed.set()
        with self._lock:  # a refresh in flight ends first: it cannot bring the lease back
            pass
        gone = [
            f"{self.folder}run.{run}.json"
            for run, (theirs, taken) in self._dead.items()
            if theirs is not None and theirs <= taken  # every claim of it was below ours
        ]
        steps = [self._below, [*self.held.values(), *gone], [self.lease_url]]
        self.held, self._below, self._dead = {}, [], {}

        def delete_all() -> None:
            for urls in steps:
                self._each(self._delete, urls)

        self._releasing = threading.Thread(target=delete_all, name="claims-release", daemon=True)
        self._releasing.start()

    def released(self, deadline_s: float = 10.0) -> None:
        """Wait (up to ``deadline_s``) for :meth:`release`'s deletes."""
        if self._releasing is not None:
            self._releasing.join(max(0.0, deadline_s))
