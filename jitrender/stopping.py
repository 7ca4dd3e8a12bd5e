"""The run's stop: SIGTERM/SIGINT or a preemption notice set one event that every part of
the run polls; a second signal exits at once with 75."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from jitrender.errors import ConfigError, ExitCode
from jitrender.progress import Progress


class Stop:
    """The run's stop event: SIGTERM/SIGINT or a preemption notice set it; a second signal
    exits at once with 75."""

    def __init__(self, progress: Progress) -> None:
        self.event = threading.Event()
        self.progress = progress
        self.reason: str | None = None  # why it was set, when not by a signal
        self.previous: dict[int, Any] = {}

    def notice(self, reason: str) -> None:
        self.reason = reason
        self.progress.event("warning", message=f"{reason}: stopping")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set():
            os._exit(int(ExitCode.TEMPFAIL))
        self.progress.event("warning", message=f"got {signal.Signals(signum).name}: stopping")
        self.event.set()

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        for signum in (int(signal.SIGTERM), int(signal.SIGINT)):
            self.previous[signum] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for signum, handler in self.previous.items():
                signal.signal(signum, handler)


def seconds_from_env(name: str, default: float) -> float:
    """A duration setting from the environment (``default`` when unset); 78 when not a number."""
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        raise ConfigError(f"{name}: {os.environ[name]!r} is not a number of seconds") from None
