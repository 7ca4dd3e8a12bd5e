"""The run's stop: SIGTERM/SIGINT or a preemption notice set one event that every part of
the run polls; a second signal exits at once with 75.

For ``jitrender run`` the CLI installs the handlers first thing (:meth:`Stop.hold`), before
the imports that take time and before the job is loaded, and keeps them until the process
exits: a signal at any moment (start-up, just after the last frame, while the last lines
print) ends the process with the report's exit code, never by the signal itself. Once stopped,
a backstop timer ends the process ``JITRENDER_STOP_BACKSTOP_S`` (12) seconds after the stop
whatever storage does: it writes the local report first (:attr:`Stop.last_words`). (A run
inside another program, through :func:`jitrender.run.run_job`, gets the handlers only while it
runs, and no backstop.)
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from types import FrameType

from jitrender.errors import ConfigError, ExitCode, TransientError

# typing's own constant without typing's import (~4 ms): the CLI imports this module first,
# before the head start's thread can start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    from jitrender.progress import Progress

    T = TypeVar("T")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stop:
    """The run's stop event: SIGTERM/SIGINT or a preemption notice set it; a second signal
    exits at once with 75. Thread-safe to read; set from the main thread's signal handler or
    from the preemption watcher."""

    def __init__(self, progress: Progress | None = None) -> None:
        self.event = threading.Event()
        self.progress: Progress | None = progress
        self.reason: str | None = None  # why it was set, when not by a signal
        self.signal_name: str | None = None  # the signal that set it
        self.at: float | None = None  # time.monotonic() of the stop
        self.previous: dict[int, Any] = {}
        self.held = False  # installed for the process's lifetime (the CLI), never restored
        # Called by the backstop and by a second signal just before the process ends: writes
        # the local report and returns the exit code to end with.
        self.last_words: Callable[[], int] | None = None
        self._backstop: threading.Timer | None = None

    def attach(self, progress: Progress) -> None:
        """Report through ``progress`` from now on (and say now if a signal came before)."""
        self.progress = progress
        if self.signal_name is not None:
            progress.event("warning", message=f"got {self.signal_name}: stopping")

    def notice(self, reason: str) -> None:
        self.reason = reason
        if self.progress is not None:
            self.progress.event("warning", message=f"{reason}: stopping")
        self._stopped()

    def remaining(self, budget: float) -> float:
        """Seconds left of ``budget`` counted from the stop (``budget`` when not stopped)."""
        if self.at is None:
            return budget
        return max(0.0, budget - (time.monotonic() - self.at))

    def _stopped(self) -> None:
        if self.at is None:
            self.at = time.monotonic()
        self.event.set()
        # Only where the process is the run's own (the CLI): never os._exit someone's program.
        if self.held and self._backstop is None:
            self._backstop = threading.Timer(backstop_s(), self._end, args=("backstop",))
            self._backstop.daemon = True
            self._backstop.start()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.event.is_set() and self.signal_name is not None:
            self._end("second signal")
        self.signal_name = signal.Signals(signum).name
        self._stopped()
        if self.progress is not None:
            # Not here: the interrupted main thread may hold the progress stream's lock.
            message = f"got {self.signal_name}: stopping"
            threading.Thread(
                target=self.progress.event,
                args=("warning",),
                kwargs={"message": message},
                daemon=True,
            ).start()

    def _end(self, why: str) -> None:
        """End the process now: the last words (the local report), then ``os._exit``."""
        code = int(ExitCode.TEMPFAIL)
        if self.last_words is not None:
            # On its own thread, bounded: the interrupted main thread may hold a lock it needs.
            with contextlib.suppress(Exception):
                code = bounded(self.last_words, 2.0, "the report")
        if why == "backstop":
            with contextlib.suppress(Exception):
                sys.stderr.write(
                    f"jitrender: still running {backstop_s():g} s after the stop (storage "
                    f"not answering?); exiting {code}\n"
                )
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)

    def hold(self) -> Stop:
        """Install the handlers for the rest of the process's life (main thread only)."""
        for signum in _SIGNALS:
            signal.signal(signum, self._handle)
        self.held = True
        return self

    @contextlib.contextmanager
    def signals(self) -> Iterator[None]:
        """Handlers for the duration (restored after), unless :meth:`hold` already holds them."""
        if self.held or threading.current_thread() is not threading.main_thread():
            yield
            return
        for signum in _SIGNALS:
            self.previous[int(signum)] = signal.signal(signum, self._handle)
        try:
            yield
        finally:
            for number, handler in self.previous.items():
                signal.signal(number, handler)


def bounded(call: Callable[[], T], seconds: float, what: str) -> T:
    """``call()``'s result, or :class:`~jitrender.errors.TransientError` when it has not
    finished within ``seconds`` (it then goes on in a daemon thread nobody waits for): how a
    stopping run gives storage calls a deadline whatever the client library does."""
    done = threading.Event()
    box: list[Any] = []

    def target() -> None:
        try:
            box.append((True, call()))
        except BaseException as exc:
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=target, name=f"bounded {what}", daemon=True).start()
    if not done.wait(max(0.0, seconds)):
        raise TransientError(f"{what}: no answer within {seconds:.1f} s of the stop's budget")
    ok, value = box[0]
    if not ok:
        raise value
    result: T = value
    return result


BACKSTOP_ENV, BACKSTOP_S = "JITRENDER_STOP_BACKSTOP_S", 12.0  # GKE Spot gives ~15 s


def backstop_s() -> float:
    """Seconds from a stop to the hard exit: ``$JITRENDER_STOP_BACKSTOP_S`` or 12. Never
    raises (a stopping run reads it): a bad value means the default, and a run refuses one at
    start (:func:`check_stop_settings`)."""
    try:
        return seconds_from_env(BACKSTOP_ENV, BACKSTOP_S)
    except ConfigError:
        return BACKSTOP_S


def check_stop_settings() -> None:
    """ConfigError (78) when a setting read only once the run is stopping is not a number:
    ``JITRENDER_STOP_BACKSTOP_S`` and ``JITRENDER_TERM_GRACE_S`` (their readers never raise);
    and those read in a thread that cannot report them: ``JITRENDER_READ_TIMEOUT_S`` (where an
    HTTP client is made, maybe the head start's) and ``JITRENDER_PREEMPTION_WATCH``."""
    from jitrender.preemption import watch_setting
    from jitrender.stages import TERM_GRACE_ENV, TERM_GRACE_S
    from jitrender.transport import read_timeout_s

    seconds_from_env(BACKSTOP_ENV, BACKSTOP_S)
    seconds_from_env(TERM_GRACE_ENV, TERM_GRACE_S)
    read_timeout_s()
    watch_setting(os.environ)


def seconds_from_env(
    name: str, default: float, *, positive: bool = False, environ: Mapping[str, str] | None = None
) -> float:
    """A duration setting from the environment (``default`` when unset); 78 when it is not a
    number of seconds: also a negative one (or 0, where it must be ``positive``), nan or
    infinity (a grace or budget of -1 s would be taken as none at all, which is not what
    anyone setting it meant)."""
    text = (os.environ if environ is None else environ).get(name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value > 0 if positive else value >= 0) or value == float("inf"):
        what = "a positive number of seconds" if positive else "a number of seconds (0 or more)"
        raise ConfigError(f"{name}: {text!r} is not {what}")
    return value
