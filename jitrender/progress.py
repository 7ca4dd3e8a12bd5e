"""Progress for people and for scripts: rich bars on a terminal, plain lines otherwise, JSON
lines with ``--progress json``. Always on stderr, so stdout stays clean for ``--json``."""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any, Literal, Protocol, TextIO

ProgressMode = Literal["auto", "rich", "plain", "json", "quiet"]


class Progress(Protocol):
    def event(self, kind: str, **fields: Any) -> None:
        """A step happened (``phase``, ``fetched``, ``frame``, ``uploaded``, ``warning``…)."""

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        """What the run will move and render, once known."""

    def close(self) -> None: ...


class QuietProgress:
    def event(self, kind: str, **fields: Any) -> None:
        return None

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        return None

    def close(self) -> None:
        return None


class PlainProgress:
    """One line per event: ``jitrender: frame 1004 done (3.2 s)``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self._lock = threading.Lock()

    def _line(self, text: str) -> None:
        with self._lock:
            print(f"jitrender: {text}", file=self.stream, flush=True)

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "fetched" and not fields.get("verbose"):
            return  # one line per file is too much for farm logs; totals are reported
        detail = " ".join(f"{k}={v}" for k, v in fields.items() if k != "message")
        message = fields.get("message")
        self._line(f"{kind}: {message}" if message else f"{kind} {detail}".rstrip())

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        self._line(f"plan: {files} files, {bytes_} bytes to have locally, {frames} frames")

    def close(self) -> None:
        return None


class JsonProgress(PlainProgress):
    """One JSON object per line: ``{"t": 1.23, "event": "frame", "frame": 1004, ...}``."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.started = time.monotonic()

    def event(self, kind: str, **fields: Any) -> None:
        record = {"t": round(time.monotonic() - self.started, 3), "event": kind, **fields}
        with self._lock:
            print(json.dumps(record, default=str), file=self.stream, flush=True)

    def totals(self, files: int, bytes_: int, frames: int) -> None:
        self.event("plan", files=files, bytes=bytes_, frames=frames)


class RichProgress:
    """Bars for files, bytes and frames while attached to a terminal."""

    def __init__(self) -> None:
        from rich.console import Console
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
            console=self.console,
            transient=False,
        )
        self.bytes_bars = RichBars(
            TextColumn("{task.description:<8}"), BarColumn(), DownloadColumn(), console=self.console
        )
        self.files = self.bars.add_task("files", total=None)
        self.frames = self.bars.add_task("frames", total=None)
        self.bytes = self.bytes_bars.add_task("bytes", total=None)
        from rich.console import Group
        from rich.live import Live

        self.live = Live(Group(self.bars, self.bytes_bars), console=self.console)
        self.live.start()

    def event(self, kind: str, **fields: Any) -> None:
        if kind == "fetched":
            self.bars.advance(self.files)
            self.bytes_bars.advance(self.bytes, int(fields.get("size", 0)))
        elif kind == "frame" and fields.get("status") in ("done", "failed", "skipped"):
            self.bars.advance(self.frames)
        elif kind in ("warning", "error", "phase", "uploaded", "frame"):
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
