"""The ``nuke`` engine: render a Nuke script's frames with ``nuke -x`` (or run it with ``-t``).

The binary is ``args.nuke``, else ``$JITRENDER_NUKE``, else ``nuke`` on ``PATH``. jitrender's
Nuke plugin (``hooks/nuke``) goes first on ``NUKE_PATH``, so every file Nuke opens is fetched
through the run's agent; the job's own ``NUKE_PATH`` entries follow it.

Stage ``args`` (all optional)::

    mode:    render (nuke -x, the default) | terminal (nuke -t: the script is Python/Tcl)
    write:   Write node name(s) to execute (-X), a string or a list
    nuke:    path or name of the Nuke binary
    extra:   list of further command-line arguments (e.g. ["--nukex", "-m", "4"])
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from typing import Any

from jitrender.agent import hooks_dir
from jitrender.engines import Invocation, StageCall, register_engine
from jitrender.errors import ConfigError

_KNOWN = ("mode", "write", "nuke", "extra")


def _frame_runs(frames: tuple[int, ...]) -> list[str]:
    """Contiguous runs of frames as Nuke's ``-F`` ranges (``1-5``, ``9``)."""
    values = sorted(set(frames))
    runs: list[str] = []
    start = prev = values[0]
    for value in [*values[1:], None]:
        if value is not None and value == prev + 1:
            prev = value
            continue
        runs.append(str(start) if start == prev else f"{start}-{prev}")
        if value is not None:
            start = prev = value
    return runs


def find_nuke(call: StageCall, args: Mapping[str, Any]) -> str:
    if "nuke" in args:
        wanted, where = args["nuke"], f"stages.{call.name}.args.nuke"
    else:
        wanted = call.env.get("JITRENDER_NUKE") or os.environ.get("JITRENDER_NUKE") or "nuke"
        where = "JITRENDER_NUKE" if wanted != "nuke" else "PATH"
    if not isinstance(wanted, str) or not wanted:
        raise ConfigError(f"{where}: expected the path or name of a Nuke binary")
    found = shutil.which(wanted)
    if found is None:
        raise ConfigError(
            f"{where}: no Nuke binary {wanted!r} (set args.nuke or JITRENDER_NUKE, or put "
            "nuke on PATH)"
        )
    return found


def _strings(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError(f"{where}: expected a string or a list of strings")


@register_engine("nuke")
def nuke_engine(call: StageCall) -> Invocation:
    args = dict(call.args)
    unknown = sorted(set(args) - set(_KNOWN))
    if unknown:
        raise ConfigError(
            f"stages.{call.name}.args.{unknown[0]}: unknown argument (known: {', '.join(_KNOWN)})"
        )
    script = call.workspace.scene
    if script is None:
        raise ConfigError(f"stages.{call.name}: engine 'nuke' needs the job's 'scene'")
    if not call.frames:
        raise ConfigError(f"stages.{call.name}: no frames to render")
    mode = args.get("mode", "render")
    if mode not in ("render", "terminal"):
        raise ConfigError(f"stages.{call.name}.args.mode: expected render or terminal")
    argv = [find_nuke(call, args)]
    argv += [call.expand(a) for a in _strings(args.get("extra", []), f"stages.{call.name}.args")]
    if mode == "terminal":
        argv += ["-t", str(script), *[str(f) for f in call.frames]]
    else:
        argv.append("-x")
        for name in _strings(args.get("write", []), f"stages.{call.name}.args.write"):
            argv += ["-X", name]
        for frame_range in _frame_runs(call.frames):
            argv += ["-F", frame_range]
        argv.append(str(script))
    env = {key: call.expand(value) for key, value in call.env.items()}
    inherited = env.get("NUKE_PATH", os.environ.get("NUKE_PATH", ""))
    env["NUKE_PATH"] = os.pathsep.join(p for p in (str(hooks_dir() / "nuke"), inherited) if p)
    return Invocation(argv, env, call.workspace.root)
