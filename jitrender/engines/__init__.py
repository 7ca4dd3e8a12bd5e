"""Render engine adapters: each turns a stage of a job into the command line to run.

An engine decides *what* to run (argv and environment); :mod:`jitrender.stages` runs it
(process group, timeout, signals, logs, retries). Engines are registered by name and by
entry point (``jitrender.engines``), like resolvers.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from jitrender.errors import ConfigError
from jitrender.registry import Registry
from jitrender.sequences import format_frames


@dataclass(frozen=True)
class Workspace:
    """One run's folder. ``inputs/`` mirrors the buckets (hardlinks into the cache),
    ``scratch/`` holds intermediates that never leave the node, ``outputs/`` is watched and
    uploaded. ``scene`` is the scene's local path below ``inputs/`` (None for scene-less jobs)."""

    root: Path
    scene: Path | None
    job_dir: Path | None = None  # the job file's folder: where a job's own scripts live

    @property
    def inputs(self) -> Path:
        return self.root / "inputs"

    @property
    def scratch(self) -> Path:
        return self.root / "scratch"

    @property
    def outputs(self) -> Path:
        return self.root / "outputs"

    def create(self) -> None:
        for folder in (self.inputs, self.scratch, self.outputs):
            folder.mkdir(parents=True, exist_ok=True)


@dataclass(frozen=True)
class StageCall:
    """One invocation of a stage: a single frame (``per: frame``) or the run's whole chunk."""

    name: str
    frames: tuple[int, ...]
    workspace: Workspace
    args: Mapping[str, Any] = field(default_factory=dict)
    command: str | Sequence[str] | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def placeholders(self) -> dict[str, Any]:
        """The values ``{name}`` placeholders in commands and args expand to."""
        ws = self.workspace
        return {
            "frame": self.frames[0],
            "first": min(self.frames),
            "last": max(self.frames),
            "frames": format_frames(self.frames),
            "frame_list": ",".join(str(f) for f in self.frames),
            "inputs": str(ws.inputs),
            "scratch": str(ws.scratch),
            "outputs": str(ws.outputs),
            "scene": str(ws.scene) if ws.scene is not None else "",
            "workspace": str(ws.root),
            "job_dir": str(ws.job_dir or ""),
            "stage": self.name,
        }

    def expand(self, template: str) -> str:
        """Fill ``{frame}``, ``{frame:04d}``, ``{inputs}``… in a template; unknown names are a
        configuration error naming the stage."""
        try:
            return _FORMATTER.vformat(template, (), self.placeholders())
        except (KeyError, IndexError, ValueError) as exc:
            known = ", ".join("{" + k + "}" for k in self.placeholders())
            raise ConfigError(
                f"stages.{self.name}: cannot fill {template!r}: {exc} (known: {known})"
            ) from None


class _StrictFormatter(string.Formatter):
    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, int):
            raise KeyError(f"positional {{{key}}}")
        return kwargs[key]


_FORMATTER = _StrictFormatter()


@dataclass(frozen=True)
class Invocation:
    """What to execute for a stage call: the command line, extra environment variables and
    the working folder (None: this process's)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None


class Engine(Protocol):
    """Turns a stage call into an :class:`Invocation`."""

    def __call__(self, call: StageCall) -> Invocation: ...


_engines: Registry[Engine] = Registry(
    "jitrender.engines",
    {
        "command": "jitrender.engines.command",
        "blender": "jitrender.engines.blender",
        "nuke": "jitrender.engines.nuke",
    },
)


def register_engine(name: str) -> Callable[[Engine], Engine]:
    return _engines.register(name)


def engine_named(name: str) -> Engine:
    """The engine called ``name`` (built-in or from the ``jitrender.engines`` entry point)."""
    engine = _engines.get(name)
    if engine is None:
        raise ConfigError(f"engine {name!r} is not known; available: {', '.join(_engines.names())}")
    return engine
