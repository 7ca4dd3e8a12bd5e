"""Node health: a node that keeps failing frames of different jobs for reasons of its own
(a renderer killed by a signal, out of memory, a GPU or driver error, a disk error) says so,
so that the farm can drain it instead of feeding it more work; and a node that keeps failing
one job's frames stops taking that job's frames (a per-job blocklist, as Deadline's and
Flamenco's workers have), whatever the reason.

Every run records its frame outcomes in ``health.json`` in the cache folder (JSON only,
written temp + rename under a lock, so concurrent jobs on the node never tear it).

- The node's streak: a frame that renders clears it; a failed frame whose cause is the
  node's (:func:`node_fault`) extends it. A job's own mistakes — bad flags (a renderer that
  exits 1 or 2 and says why), a missing output pattern, a timeout — never count. The node is
  unhealthy when the streak holds at least ``failed_frames`` frames from at least
  ``failed_jobs`` different jobs (defaults 3 and 2; ``JITRENDER_HEALTH_FAILED_FRAMES`` /
  ``JITRENDER_HEALTH_FAILED_JOBS``).
- The per-job tally: every failed frame of a job counts; a rendered frame of that job clears
  its tally. At ``job_failures`` (default 3; ``JITRENDER_HEALTH_JOB_FAILURES``) the node takes
  no more of that job's frames.

``jitrender health`` exits 0 when healthy and 69 (EX_UNAVAILABLE) when the farm should drain
the node; ``jitrender run`` exits 69 at once on a drained node, and on a job this node has
blocked; ``jitrender health --reset`` clears both after repair.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jitrender.errors import ConfigError
from jitrender.report import Report

HEALTH_FILE = "health.json"
_LOCK_FILE = "health.lock"
_KEEP = 100  # streak entries kept: enough to explain, small enough to read at every run


@dataclass(frozen=True)
class HealthPolicy:
    failed_frames: int = 3
    failed_jobs: int = 2
    job_failures: int = 3  # failed frames of one job after which this node takes no more

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HealthPolicy:
        """The thresholds set in the environment (unset or empty: the defaults); ConfigError
        (78) for one that is not a whole number of 1 or more."""
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                value = int(text)
            except ValueError:
                value = 0
            if value < 1:  # never taken as some other number than the one set
                raise ConfigError(f"{name}: {text!r} is not a whole number of 1 or more")
            return value

        return cls(
            number("JITRENDER_HEALTH_FAILED_FRAMES", cls.failed_frames),
            number("JITRENDER_HEALTH_FAILED_JOBS", cls.failed_jobs),
            number("JITRENDER_HEALTH_JOB_FAILURES", cls.job_failures),
        )


@dataclass(frozen=True)
class FrameOutcome:
    job_hash: str
    job_name: str
    frame: int
    ok: bool
    why: str = ""  # "<stage>: <StageOutcome.why()>"
    log_tail: tuple[str, ...] = ()


def record_run(root: Path, job_name: str, report: Report) -> None:
    """A run's frames rendered or failed by their stages go to the node's health record under
    ``root`` (which decides what is the node's fault); upload failures and missing inputs never
    count. Quiet when the record cannot be written."""
    job_hash = report.job_hash
    outcomes = [FrameOutcome(job_hash, job_name, f, True) for f in report.done]
    outcomes += [
        FrameOutcome(job_hash, job_name, f.frame, False, f"{f.stage}: {f.why}", tuple(f.log_tail))
        for f in report.failures
        if f.stage != "upload"
    ]
    with contextlib.suppress(OSError):
        NodeHealth(root).record(outcomes)


# What a renderer's log says when the node, not the job, is at fault.
_NODE_SIGNS = re.compile(
    r"out of memory|MemoryError|std::bad_alloc|Cannot allocate memory|oom[-_ ]kill"
    r"|CUDA[_ ]ERROR|CUDA error|cudaError|OPTIX_ERROR|OptiX error|HIP error|hipError"
    r"|oneAPI error|illegal memory access|GPU (?:has fallen off|hang|fault|lost|error)"
    r"|NVRM|\bXid\b|driver (?:error|crash|failure)|No space left on device"
    r"|Input/output error|Segmentation fault|Bus error",
    re.IGNORECASE,
)
# Exit statuses a shell reports for a child killed by SIGKILL (OOM killer), SIGSEGV, SIGBUS,
# SIGABRT, SIGILL: 128 + the signal.
_SHELL_SIGNALS = {128 + int(s) for s in ("9", "11", "7", "6", "4")}


def node_fault(why: str, log_tail: tuple[str, ...] = ()) -> str | None:
    """Why a failed frame is the node's fault (killed by a signal, OOM, a GPU/driver or disk
    error), or None when it is the job's own (bad flags, a missing output, a timeout)."""
    stage_why = why.split(": ", 1)[1] if ": " in why else why
    code = re.match(r"exit code (-?\d+)", stage_why)
    if code is not None:
        status = int(code[1])
        if status < 0:
            with contextlib.suppress(ValueError):
                return f"renderer killed by {signal.Signals(-status).name}"
            return f"renderer killed by signal {-status}"
        if status in _SHELL_SIGNALS:
            return f"renderer killed by signal {status - 128} (exit {status})"
    for line in (stage_why, *reversed(log_tail)):
        found = _NODE_SIGNS.search(line)
        if found is not None:
            return f"node error: {found.group(0)}"
    return None


class NodeHealth:
    """The health record of the node whose cache folder is ``cache_dir``."""

    def __init__(self, cache_dir: Path, policy: HealthPolicy | None = None) -> None:
        self.path = Path(cache_dir) / HEALTH_FILE
        self.policy = policy or HealthPolicy.from_env()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.parent / _LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"streak": [], "last_success": None}
        if not isinstance(data, dict) or not isinstance(data.get("streak"), list):
            return {"streak": [], "last_success": None}
        return data

    def _write(self, data: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{HEALTH_FILE}.", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=1)
            handle.write("\n")
        os.replace(tmp, self.path)

    def record(self, outcomes: list[FrameOutcome]) -> None:
        """Add one run's frame outcomes: a rendered frame clears the node's streak and its
        job's tally; a failed one adds to its job's tally, and to the streak when it is the
        node's fault."""
        if not outcomes:
            return
        now = time.time()
        with self._locked():
            data = self._read()
            jobs: dict[str, Any] = data.setdefault("jobs", {})
            if any(o.ok for o in outcomes):
                data["streak"] = []
                data["last_success"] = now
            for outcome in outcomes:
                if outcome.ok:
                    jobs.pop(outcome.job_hash, None)
                    continue
                tally = jobs.setdefault(outcome.job_hash, {"job_name": outcome.job_name})
                tally["failures"] = int(tally.get("failures", 0)) + 1
                tally["last_why"], tally["time"] = outcome.why[:300], now
                cause = node_fault(outcome.why, outcome.log_tail)
                if cause is not None:
                    data["streak"].append(
                        {
                            "job": outcome.job_hash,
                            "job_name": outcome.job_name,
                            "frame": outcome.frame,
                            "why": outcome.why[:300],
                            "cause": cause,
                            "time": now,
                        }
                    )
            data["streak"] = data["streak"][-_KEEP:]
            if len(jobs) > _KEEP:  # the oldest tallies go first
                for stale in sorted(jobs, key=lambda k: jobs[k].get("time", 0))[:-_KEEP]:
                    del jobs[stale]
            self._write(data)

    def blocked_jobs(self) -> dict[str, dict[str, Any]]:
        """Jobs (by hash) whose frames this node no longer takes."""
        jobs = self._read().get("jobs", {})
        if not isinstance(jobs, dict):
            return {}
        limit = self.policy.job_failures
        return {
            k: v
            for k, v in jobs.items()
            if isinstance(v, dict) and int(v.get("failures", 0)) >= limit
        }

    def refusal(self, job_hash: str) -> str | None:
        """Why this node must not start ``job_hash`` (drained, or that job blocked), or None."""
        state = self.status()
        if not state["healthy"]:
            last = state["recent_failures"][-1] if state["recent_failures"] else {}
            return (
                f"this node is drained ({state['failed_frames_in_a_row']} frames of "
                f"{state['failed_jobs_in_a_row']} jobs failed for node reasons, last: "
                f"{last.get('cause', '?')}); repair it, then `jitrender health --reset`"
            )
        blocked = self.blocked_jobs().get(job_hash)
        if blocked is not None:
            return (
                f"this node failed {blocked['failures']} frames of job "
                f"{blocked.get('job_name', job_hash)} ({job_hash}), last: "
                f"{blocked.get('last_why', '?')}; it takes no more of that job's frames "
                "(`jitrender health --reset` clears it)"
            )
        return None

    def status(self) -> dict[str, Any]:
        """``healthy``, the streak's size and jobs, the thresholds, and its latest failures."""
        data = self._read()
        streak = [s for s in data["streak"] if isinstance(s, dict)]
        jobs = sorted({str(s.get("job")) for s in streak})
        healthy = not (
            len(streak) >= self.policy.failed_frames and len(jobs) >= self.policy.failed_jobs
        )
        return {
            "healthy": healthy,
            "failed_frames_in_a_row": len(streak),
            "failed_jobs_in_a_row": len(jobs),
            "thresholds": {
                "failed_frames": self.policy.failed_frames,
                "failed_jobs": self.policy.failed_jobs,
                "job_failures": self.policy.job_failures,
            },
            "last_success": data.get("last_success"),
            "recent_failures": streak[-5:],
            "blocked_jobs": self.blocked_jobs(),
            "file": str(self.path),
        }

    def reset(self) -> None:
        with self._locked():
            data = self._read()
            data["streak"] = []
            data["jobs"] = {}
            self._write(data)
