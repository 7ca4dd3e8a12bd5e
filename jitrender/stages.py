"""Running one stage invocation: its own process group, a log file, a timeout, and a stop
signal that reaches every process the renderer started."""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from jitrender.engines import Invocation

# Time a renderer gets between SIGTERM and SIGKILL when the run is stopping
# (``JITRENDER_TERM_GRACE_S`` overrides it).
TERM_GRACE_S = 5.0
TERM_GRACE_ENV = "JITRENDER_TERM_GRACE_S"


def term_grace_s() -> float:
    """The SIGTERM-to-SIGKILL grace: ``$JITRENDER_TERM_GRACE_S`` when it is a number (a run
    refuses any other value at start: ``stopping.check_stop_settings``)."""
    try:
        return float(os.environ.get(TERM_GRACE_ENV, TERM_GRACE_S))
    except ValueError:
        return TERM_GRACE_S


@dataclass(frozen=True)
class StageOutcome:
    returncode: int | None  # None when it could not start
    seconds: float
    log: Path
    tail: tuple[str, ...]
    stopped: bool = False  # ended because the run was asked to stop
    timed_out: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.stopped and not self.timed_out

    def why(self) -> str:
        if self.error:
            return self.error
        if self.timed_out:
            return "timed out"
        if self.stopped:
            return "stopped"
        last = self.tail[-1] if self.tail else ""
        return f"exit code {self.returncode}" + (f": {last}" if last else "")


def log_tail(path: Path, lines: int = 20) -> tuple[str, ...]:
    try:
        with open(path, errors="replace") as handle:
            return tuple(line.rstrip("\n") for line in deque(handle, maxlen=lines))
    except OSError:
        return ()


def run_invocation(
    invocation: Invocation,
    log: Path,
    *,
    env: Mapping[str, str],
    stop: threading.Event,
    timeout: float | None = None,
    on_start: Callable[[subprocess.Popen[bytes]], None] | None = None,
) -> StageOutcome:
    """Run ``invocation`` to completion, or until ``stop`` is set or ``timeout`` passes (then
    the whole process group gets SIGTERM and, after a grace period, SIGKILL)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    full_env = {**env, **invocation.env}
    with open(log, "ab") as sink:
        sink.write(f"$ {' '.join(invocation.argv)}\n".encode())
        sink.flush()
        fast = _spawn_argv(invocation.argv, invocation.cwd, full_env)
        try:
            proc = subprocess.Popen(
                invocation.argv if fast is None else fast,
                cwd=invocation.cwd,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: signals reach its children too
                preexec_fn=_die_with_parent() if fast is None else None,
            )
        except OSError as exc:
            return StageOutcome(
                None,
                0.0,
                log,
                (),
                error=f"cannot start {invocation.argv[0]!r}: {exc.strerror or exc}",
            )
        if on_start is not None:
            on_start(proc)
        stopped = timed_out = False
        pidfd = _pidfd(proc)
        try:
            while not _ended_within(proc, pidfd, 0.1):
                if stop.is_set():
                    stopped = True
                elif timeout is not None and time.monotonic() - started > timeout:
                    timed_out = True
                if stopped or timed_out:
                    terminate_group(proc)
                    break
        finally:
            if pidfd is not None:
                os.close(pidfd)
    return StageOutcome(
        proc.returncode,
        time.monotonic() - started,
        log,
        log_tail(log),
        stopped=stopped,
        timed_out=timed_out,
    )


def _pidfd(proc: subprocess.Popen[bytes]) -> int | None:
    """A descriptor that turns readable the moment ``proc`` ends (Linux >= 5.3), or None."""
    try:
        return os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # another OS, an old kernel, a sandbox refusing it
        return None


def _ended_within(proc: subprocess.Popen[bytes], pidfd: int | None, seconds: float) -> bool:
    """Whether ``proc`` ended (and was reaped) within ``seconds``: woken at its end through
    ``pidfd`` where there is one. (Popen's own timed wait polls, sleeping up to 50 ms between
    looks: a 10 ms stage took up to 16 ms more.)"""
    if pidfd is not None:
        import select

        poller = select.poll()  # (not select(): a busy run's descriptors pass 1,024)
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(seconds * 1000):
            return False
        proc.wait()  # it has ended: reaping it does not block
        return True
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return False
    return True


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a function for ``preexec_fn`` that makes the renderer get SIGKILL when this
    process dies, even by SIGKILL: a killed run must not leave a renderer writing to a dead
    workspace. Everything it calls is resolved here, before the fork."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)
    getppid, kill = os.getppid, os.kill

    def arm() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if getppid() != parent:  # the parent died before the request took effect
            kill(0, sigkill)

    return arm


def _spawn_argv(argv: list[str], cwd: Path | None, env: Mapping[str, str]) -> list[str] | None:
    """``argv`` behind util-linux's ``setpriv --pdeathsig KILL`` and a shell that execs it only
    while this process is still its parent: what :func:`_die_with_parent` does, without a
    ``preexec_fn``, so Popen can vfork instead of fork (a fork copies this process's page
    tables: 3-12 ms a stage). None where either is missing, or ``argv[0]`` is not an
    executable file with a ``#!`` line or an ELF header now; then the stage starts the way it
    always did, with the errors it always had."""
    setpriv = _setpriv()
    if setpriv is None or not argv or not _executable(argv[0], cwd, env):
        return None
    if os.sep not in argv[0] and "PATH" not in env:  # the shell's default PATH is not Popen's
        return None
    # The parent may have died before the setting took; the shell's own PWD is undone.
    pwd = env.get("PWD")
    keep = "unset PWD" if pwd is None else "export PWD='" + pwd.replace("'", "'\\''") + "'"
    check = f'[ "$PPID" = {os.getpid()} ] || exit 1; {keep}; exec "$@"'
    return [setpriv, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", check, "sh", *argv]


def start_probe() -> None:
    """Find out now (:func:`_setpriv`, one short process) how this process will start its
    stages, so that the first stage does not wait for it."""
    _setpriv()


@functools.lru_cache(maxsize=1)
def _setpriv() -> str | None:
    """The ``setpriv`` that knows ``--pdeathsig`` (util-linux >= 2.33) and can set it here,
    or None."""
    if not sys.platform.startswith("linux") or not os.access("/bin/sh", os.X_OK):
        return None
    found = shutil.which("setpriv")
    if found is None:
        return None
    try:
        with open(found, "rb") as binary:
            if b"pdeathsig" not in binary.read(1 << 20):
                return None
    except OSError:
        return None
    # Once per process: a setpriv that cannot set the signal (a seccomp profile or security
    # module refusing prctl) would fail every stage it starts, where the fork's own prctl,
    # refused the same way, lets the renderer run (without the signal, as it always did).
    try:
        probe = subprocess.run(
            [found, "--pdeathsig", "KILL", "--", "/bin/sh", "-c", ":"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return found if probe.returncode == 0 else None


def _executable(name: str, cwd: Path | None, env: Mapping[str, str]) -> bool:
    """Whether ``name`` (as Popen would find it: through ``env``'s PATH, or relative to
    ``cwd``) is an ELF binary or a script whose interpreter is there, executable."""
    base = str(cwd) if cwd is not None else os.getcwd()  # where the child looks: after its chdir
    if os.sep in name:
        candidates = [os.path.join(base, name)]
    else:
        candidates = [os.path.join(base, folder, name) for folder in os.get_exec_path(dict(env))]
    for path in candidates:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            try:
                with open(path, "rb") as head:
                    start = head.read(256)
            except OSError:
                return False
            if start[:2] != b"#!":
                return start[:4] == b"\x7fELF"
            words = start[2:].split(b"\n", 1)[0].split()  # a missing interpreter: Popen says so
            return bool(words) and os.access(words[0], os.X_OK)
    return False


def terminate_group(proc: subprocess.Popen[bytes], grace: float | None = None) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after ``grace`` seconds
    (default :func:`term_grace_s`)."""
    grace = term_grace_s() if grace is None else grace
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
