"""The ``jitrender`` command's entry point (``python -m jitrender.cli`` comes here too).

``jitrender run`` holds SIGTERM/SIGINT before anything slow is imported (typer, the run's
modules) and before the job is loaded, so the process never dies by the signal itself (see
:mod:`jitrender.stopping`); then the CLI runs. Every other command starts as it always did.
"""

from __future__ import annotations

import sys


def main() -> None:
    stop = None
    if sys.argv[1:2] == ["run"]:
        from jitrender.stopping import Stop

        stop = Stop().hold()
    from jitrender.cli import main as cli_main

    cli_main(stop=stop)
