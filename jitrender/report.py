"""The run report (``--report FILE`` / ``--json``): the contract in DESIGN.md, plus detail."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from jitrender.errors import ExitCode

Status = Literal["succeeded", "failed", "preempted", "transient_failure"]


@dataclass
class FrameFailure:
    frame: int
    stage: str
    why: str
    log_tail: list[str] = field(default_factory=list)


@dataclass
class Report:
    job: str
    job_hash: str
    status: Status = "succeeded"
    exit_code: int = int(ExitCode.OK)
    error: str | None = None
    requested: list[int] = field(default_factory=list)
    done: list[int] = field(default_factory=list)
    skipped_already_done: list[int] = field(default_factory=list)
    failures: list[FrameFailure] = field(default_factory=list)
    deps_count: int = 0
    bytes_needed: int = 0
    missing: list[dict[str, Any]] = field(default_factory=list)
    unresolved: list[dict[str, str]] = field(default_factory=list)
    hits: int = 0
    misses: int = 0
    bytes_fetched: int = 0
    bytes_from_cache: int = 0
    output_urls: list[str] = field(default_factory=list)
    output_bytes: int = 0
    conflicts: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys(
            ("resolve_s", "fetch_s", "render_s", "upload_s", "wall_s"), 0.0
        )
    )
    workspace: str | None = None
    task: dict[str, Any] | None = None
    parts: dict[str, Any] | None = None  # a split job's parts (jitrender.split.SplitSummary)

    @property
    def failed(self) -> list[int]:
        """The frames that failed (from ``failures``)."""
        return sorted({f.frame for f in self.failures})

    @property
    def fetch_ratio(self) -> float | None:
        """bytes_fetched / bytes_needed: 1.0 on a cold cache, 0 on a warm one."""
        return round(self.bytes_fetched / self.bytes_needed, 4) if self.bytes_needed else None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "exit_code": self.exit_code,
            "error": self.error,
            "job": {"name": self.job, "hash": self.job_hash},
            "task": self.task,
            "frames": {
                "requested": self.requested,
                "done": sorted(self.done),
                "skipped_already_done": sorted(self.skipped_already_done),
                "failed": sorted(self.failed),
                "failures": [asdict(f) for f in self.failures],
            },
            "deps": {
                "count": self.deps_count,
                "bytes_needed": self.bytes_needed,
                "missing": self.missing,
                "unresolved": self.unresolved,
            },
            "cache": {
                "hits": self.hits,
                "misses": self.misses,
                "bytes_fetched": self.bytes_fetched,
                "bytes_from_cache": self.bytes_from_cache,
                "fetch_ratio": self.fetch_ratio,
            },
            "outputs": {
                "count": len(self.output_urls),
                "bytes": self.output_bytes,
                "urls": sorted(self.output_urls),
                "conflicts": self.conflicts,
            },
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
            "workspace": self.workspace,
            **({"parts": self.parts} if self.parts is not None else {}),
        }

    def write(self, path: Path) -> None:
        """Write atomically: a reader (or a farm's log shipper) never sees half a report. Its
        mode is the umask's, as any file the user writes (mkstemp's 0600 kept a log shipper
        or a wrangler running as another user from reading it)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            with open(tmp, "x") as handle:
                json.dump(self.to_json(), handle, indent=2)
                handle.write("\n")
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):  # no partial report left beside it, ever
                os.unlink(tmp)
            raise
