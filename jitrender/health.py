"""Node health: a node that keeps failing frames of different jobs (a bad disk, a broken
driver) says so, so that the farm can drain it instead of feeding it more work.

Every run records its frame outcomes in ``health.json`` in the cache folder (JSON only,
written temp + rename under a lock, so concurrent jobs on the node never tear it). A frame
that renders resets the streak; failed frames extend it. The node is unhealthy when the
streak holds at least ``failed_frames`` frames from at least ``failed_jobs`` different jobs
(defaults 3 and 2; ``JITRENDER_HEALTH_FAILED_FRAMES`` / ``JITRENDER_HEALTH_FAILED_JOBS``).
One job failing again and again is that job's problem, not the node's.

``jitrender health`` exits 0 when healthy and 69 (EX_UNAVAILABLE) when the farm should drain
the node; ``jitrender health --reset`` clears the streak after repair.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEALTH_FILE = "health.json"
_LOCK_FILE = "health.lock"
_KEEP = 100  # streak entries kept: enough to explain, small enough to read at every run


@dataclass(frozen=True)
class HealthPolicy:
    failed_frames: int = 3
    failed_jobs: int = 2

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> HealthPolicy:
        env = os.environ if environ is None else environ

        def number(name: str, default: int) -> int:
            with contextlib.suppress(ValueError):
                return max(1, int(env.get(name, "")))
            return default

        return cls(
            number("JITRENDER_HEALTH_FAILED_FRAMES", cls.failed_frames),
            number("JITRENDER_HEALTH_FAILED_JOBS", cls.failed_jobs),
        )


@dataclass(frozen=True)
class FrameOutcome:
    job_hash: str
    job_name: str
    frame: int
    ok: bool
    why: str = ""


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
        """Add one run's frame outcomes: a rendered frame clears the streak first."""
        if not outcomes:
            return
        now = time.time()
        with self._locked():
            data = self._read()
            if any(o.ok for o in outcomes):
                data["streak"] = []
                data["last_success"] = now
            for outcome in outcomes:
                if not outcome.ok:
                    data["streak"].append(
                        {
                            "job": outcome.job_hash,
                            "job_name": outcome.job_name,
                            "frame": outcome.frame,
                            "why": outcome.why[:300],
                            "time": now,
                        }
                    )
            data["streak"] = data["streak"][-_KEEP:]
            self._write(data)

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
            },
            "last_success": data.get("last_success"),
            "recent_failures": streak[-5:],
            "file": str(self.path),
        }

    def reset(self) -> None:
        with self._locked():
            data = self._read()
            data["streak"] = []
            self._write(data)
