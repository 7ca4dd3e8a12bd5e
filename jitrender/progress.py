"""Progress for people and for scripts: rich bars on a terminal, plain timestamped lines
otherwise, JSON lines with ``--progress json``, nothing with ``quiet``. Always on stderr, so
stdout stays clean for ``--json``.

Every event becomes one record (see :func:`Timings.record`): ``time`` (ISO 8601 wall-clock,
UTC), ``kind``, and the event's fields; ``frame`` and ``stage`` where the event has them, and
``seconds`` on ``stage_end`` (the stage call's run time) and ``frame_end`` (from the frame's
first stage start to its end). With ``--progress json`` stderr holds nothing but these
records, one JSON object per line, the run's ``result`` last.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TextIO

ProgressMode = Literal["auto", "rich", "plain", "json", "quiet"]

# What run.py calls an event -> the kind in the record.
_KINDS = {"stage": "stage_start", "frame": "frame_end"}


def wall_clock() -> str:
    """Now, as ISO 8601 UTC with milliseconds: ``2026-12-01T10:58:37.123Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _frames_of(label: Any) -> tuple[int, int] | None:
    """``"7"`` -> (7, 7); ``"1-5"`` -> (1, 5); anything else None."""
    text = str(label)
    first, sep, last = text.partition("-") if not text.startswith("-") else (text, "", "")
    try:
        return (int(first), int(last)) if sep else (int(first), int(first))
    except ValueError:
        return None


class Timings:
    """Turns events into records and remembers stage starts, so end events carry durations."""

    def __init__(self) -> None:
        self._started = time.monotonic()
        self._frame_start: dict[tuple[int, int], float] = {}
        self._lock = threading.Lock()

    def record(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        now = time.monotonic()
        kind = _KINDS.get(kind, kind)
        out: dict[str, Any] = {"time": wall_clock(), "kind": kind}
        span = _frames_of(fields["frames"]) if "frames" in fields else None
        if span is not None and span[0] == span[1]:
            out["frame"] = span[0]
        with self._lock:
            if kind == "stage_start" and span is not None:
                self._frame_start.setdefault(span, now)
            if kind == "frame_end" and isinstance(fields.get("frame"), int):
                frame = int(fields["frame"])
                starts = [t for (a, b), t in self._frame_start.items() if a <= frame <= b]
                if starts and fields.get("status") != "skipped":
                    out["seconds"] = round(now - min(starts), 3)
        out.update(fields)
        out["elapsed_s"] = round(now - self._started, 3)
        return out


class Progress(Protocol):
    def event(self, kind: str, **fields: Any) -> None:
        """A step happened (``phase``, ``fetched``, ``stage``, ``stage_end``, ``frame``,
        ``uploaded``, ``warning``, ``error``, ``result``…)."""

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        """What the run will move and render, once known."""

    def close(self) -> None: ...


class QuietProgress:
    """Prints nothing (``--progress quiet``; errors still reach stderr from the CLI)."""

    def event(self, kind: str, **fields: Any) -> None:
        return None

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        return None

    def close(self) -> None:
        return None


class PlainProgress:
    """One timestamped line per event: ``jitrender: 2026-12-01T10:58:37.123Z frame_end
    frame=1004 status=done seconds=3.2``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()
        self.timings = Timings()

    def _line(self, text: str) -> None:
        with self._lock:
            print(f"jitrender: {wall_clock()} {text}", file=self.stream, flush=True)

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "fetched" and not fields.get("verbose"):
            return  # one line per file is too much for farm logs; totals are reported
        record = self.timings.record(kind, fields)
        for key in ("time", "elapsed_s"):
            record.pop(key)
        kind = record.pop("kind")
        message = record.pop("message", None)
        detail = " ".join(f"{k}={v}" for k, v in record.items())
        self._line(f"{kind}: {message}" if message else f"{kind} {detail}".rstrip())

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        self._line(f"plan: {files} files, {bytes_} bytes to have locally, {frames} frames")

    def close(self) -> None:
        return None


class JsonProgress(PlainProgress):
    """One JSON object per line and nothing else:
    ``{"time": "2026-12-01T10:58:37.123Z", "kind": "frame_end", "frame": 1004, ...}``."""

    def event(self, kind: str, **fields: Any) -> None:
        record = self.timings.record(kind, fields)
        with self._lock:
            print(json.dumps(record, default=str), file=self.stream, flush=True)

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        self.event("plan", files=files, bytes=bytes_, frames=frames)


class RichProgress:
    """Bars for files (the scene included), bytes and frames while attached to a terminal,
    with the running stage and frame named beside the frames bar."""

    def __init__(self) -> None:
        from rich.console import Console, Group
        from rich.live import Live
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichBars

        self.console = Console(stderr=True)
        self.bars = RichBars(
            TextColumn("{task.description:<8}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[now]}"),
            console=self.console,
            transient=False,
        )
        self.bytes_bars = RichBars(
            TextColumn("{task.description:<8}"), BarColumn(), DownloadColumn(), console=self.console
        )
        self.files = self.bars.add_task("files", total=None, now="")
        self.frames = self.bars.add_task("frames", total=None, now="")
        self.bytes = self.bytes_bars.add_task("bytes", total=None)
        self.live = Live(Group(self.bars, self.bytes_bars), console=self.console)
        self.live.start()

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "fetched":
            self.bars.advance(self.files)
            self.bytes_bars.advance(self.bytes, int(fields.get("size", 0)))
        elif kind == "stage":
            now = f"{fields.get('stage')} frame {fields.get('frames')}"
            self.bars.update(self.frames, now=now)
        elif kind == "frame" and fields.get("status") in ("done", "failed", "skipped"):
            self.bars.advance(self.frames)
            if fields.get("status") == "failed":
                self.console.print(f"[red]frame {fields.get('frame')} failed[/red]")
        elif kind in ("warning", "error", "phase"):
            text = fields.get("message") or " ".join(f"{k}={v}" for k, v in fields.items())
            self.console.print(f"[dim]{kind}[/dim] {text}")

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        self.bars.update(self.files, total=files)
        self.bars.update(self.frames, total=frames)
        self.bytes_bars.update(self.bytes, total=bytes_)

    def close(self) -> None:
        self.live.stop()


def make_progress(mode: ProgressMode) -> Progress:
    if mode == "auto":
        mode = "rich" if sys.stderr.isatty() else "plain"
    if mode == "rich":
        return RichProgress()
    if mode == "json":
        return JsonProgress()
    if mode == "quiet":
        return QuietProgress()
    return PlainProgress()
