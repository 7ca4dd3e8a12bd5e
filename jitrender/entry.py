"""The ``jitrender`` command's entry point (``python -m jitrender.cli`` comes here too).

``jitrender run`` holds SIGTERM/SIGINT before anything slow is imported (typer, the run's
modules) and before the job is loaded, so the process never dies by the signal itself (see
:mod:`jitrender.stopping`), starts its first storage requests (:mod:`jitrender.headstart`: its
thread starts a few milliseconds in and imports its storage client while the process waits);
then the run starts (its arguments read by :mod:`jitrender.runcmd`, or by typer where they are
not plain), without garbage collection until the run's modules are imported
(:func:`imports_done`). Every other command starts as it always did.

When the command is over the process ends at once with its exit code: stdout and stderr
flushed and ``atexit`` handlers run, as at any exit, but without the interpreter's teardown
(freeing every object of a run: 0.1-0.4 s after the last request). Where a thread that
Python would wait for is still running, the exit is the ordinary one.
"""

from __future__ import annotations

import sys


def main() -> None:
    stop = head_start = None
    if sys.argv[1:2] == ["run"]:
        import gc

        # What start-up creates (~60,000 objects: modules, classes, schemas) lives until exit:
        # collecting meanwhile only scans it again and again. Back on at imports_done.
        gc.disable()
        from jitrender.stopping import Stop

        stop = Stop().hold()
        from jitrender.headstart import HeadStart

        # The scene's stat and connections, while typer and the run's modules import. Its
        # thread imports its HTTP client alone first (the run's own anyway): shared with
        # typer's import, the first request went out ~50 ms later.
        head_start = HeadStart.for_run_args(sys.argv[2:]).start()
        head_start.imported.wait(5.0)  # imports only: bounded against the unforeseen
    try:
        if stop is not None:
            from jitrender.runcmd import main as run_main

            # Its arguments read without typer where their meaning is plain (typer reads
            # them through pydantic adapters, built anew each start: see jitrender.runcmd).
            if run_main(sys.argv[2:], stop, head_start):
                _end(0)
        from jitrender.cli import main as cli_main

        cli_main(stop=stop, head_start=head_start)
    except SystemExit as exc:
        _end(exc.code)
    _end(0)


def imports_done() -> None:
    """Garbage collection back on once ``jitrender run``'s modules are imported (:func:`main`
    turns it off for them), with every object so far frozen: never scanned again. Where it
    was not off, nothing changes."""
    import gc

    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def _end(code: str | int | None) -> None:
    """Exit with ``code`` (what ``sys.exit`` was given), skipping the interpreter's teardown
    when nothing would outlive it anyway: no non-daemon thread other than this one."""
    import atexit
    import os
    import threading

    me = threading.current_thread()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not me):
        sys.exit(code)  # Python joins those threads first: keep that
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"): printed, status 1, as Python does
        print(code, file=sys.stderr)
        status = 1
    atexit._run_exitfuncs()  # logging's flush, temporary folders' cleanup: what exit runs
    for stream in (sys.stdout, sys.stderr):
        if stream is None:
            continue
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head): nothing more can be said
            if stream is sys.stdout and status == 0:
                status = 120  # what Python exits with when it cannot flush stdout
    os._exit(status & 0xFF)
