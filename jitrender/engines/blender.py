"""The ``blender`` engine: render a stage call's frames in one Blender process.

With a ``blender`` binary (``args.blender``, else ``$JITRENDER_BLENDER``, else ``blender`` on
``PATH``) the call runs ``blender -b SCENE --python blender_render.py -- OPTIONS``; without
one it runs the script with the ``bpy`` module in this Python (``jitrender[blender]``).
:mod:`jitrender.engines.blender_render` does the rendering; this module only validates the
stage's ``args`` and builds the command line.

Stage ``args`` (all optional)::

    output:     file name below outputs/, #### = frame  (default "{scene_stem}.####.png")
    format:     PNG | OPEN_EXR | JPEG                    (default PNG)
    engine:     CYCLES | BLENDER_EEVEE | BLENDER_WORKBENCH (default CYCLES)
    samples:    int >= 1          resolution: [width, height]     percentage: 1..32767
    threads:    int >= 0 (0: one per core)       camera: object name     scene: scene name
    device:     CPU | GPU | OPTIX | CUDA | HIP | ONEAPI | METAL      (default CPU)
                GPU: Cycles on whichever backend the node has (in that order); a backend's
                name: that one only. None there is exit 78 naming what was looked for.
    blender:    path or name of a Blender binary
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from jitrender.engines import Invocation, StageCall, register_engine
from jitrender.engines import blender_render as script
from jitrender.errors import ConfigError

DEFAULT_OUTPUT = "{scene_stem}.####.{ext}"
EXTENSIONS = {"PNG": "png", "OPEN_EXR": "exr", "JPEG": "jpg"}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _whole(low: int, high: int | None = None) -> Callable[[Any], int | None]:
    def check(value: Any) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        if value < low or (high is not None and value > high):
            return None
        return value

    return check


def _choice(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if isinstance(value, str) and value.upper() in choices:
            return value.upper()
        return None

    return check


def _resolution(value: Any) -> str | None:
    if not isinstance(value, list | tuple) or len(value) != 2:
        return None
    size = [_whole(1, 65536)(v) for v in value]
    return None if None in size else f"{size[0]}x{size[1]}"


# key -> (check returning the normalised value or None, what a valid value looks like)
_ARGS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "output": (_text, "a file name pattern below outputs/ with #### for the frame"),
    "format": (_choice(*script.FORMATS), "one of " + ", ".join(script.FORMATS)),
    "engine": (_choice(*script.ENGINES), "one of " + ", ".join(script.ENGINES)),
    "samples": (_whole(1), "a whole number >= 1"),
    "resolution": (_resolution, "[width, height] in pixels"),
    "percentage": (_whole(1, 32767), "a whole number from 1 to 32767"),
    "threads": (_whole(0, 1024), "a whole number >= 0 (0: one per core)"),
    "camera": (_text, "a camera object's name"),
    "scene": (_text, "a scene datablock's name"),
    "device": (
        _choice("CPU", "GPU", *script.GPU_BACKENDS),
        "CPU, GPU (whichever Cycles backend the node has) or one of "
        + ", ".join(script.GPU_BACKENDS),
    ),
    "blender": (_text, "a Blender binary's path or name"),
}


def validate_args(stage: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """The stage's args, normalised; :class:`ConfigError` naming ``stages.<stage>.args.<key>``
    for an unknown key or a value of the wrong kind."""
    clean: dict[str, Any] = {}
    for key, value in args.items():
        where = f"stages.{stage}.args.{key}"
        if key not in _ARGS:
            raise ConfigError(f"{where}: unknown argument (known: {', '.join(_ARGS)})")
        check, expected = _ARGS[key]
        normal = check(value)
        if normal is None:
            raise ConfigError(f"{where}: expected {expected}, got {value!r}")
        clean[key] = normal
    return clean


def output_pattern(call: StageCall, args: Mapping[str, Any], scene: Path) -> str:
    """The output file name pattern, ``{scene_stem}`` filled in, checked to stay in outputs/."""
    where = f"stages.{call.name}.args.output"
    default = DEFAULT_OUTPUT.replace("{ext}", EXTENSIONS[args.get("format", "PNG")])
    template: str = args.get("output", default)
    try:
        pattern = template.format(scene_stem=scene.stem)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError(
            f"{where}: cannot fill {template!r}: {exc} (known: {{scene_stem}})"
        ) from None
    relative = PurePosixPath(pattern)
    if relative.is_absolute() or ".." in relative.parts or "\\" in pattern:
        raise ConfigError(f"{where}: {pattern!r} must be a relative path below outputs/")
    if "#" not in relative.name:
        raise ConfigError(f"{where}: {pattern!r} needs #### for the frame number")
    return pattern


def find_blender(call: StageCall, args: Mapping[str, Any]) -> str | None:
    """The Blender binary to run, or None to use the bpy module."""
    wanted: str | None
    if "blender" in args:
        wanted, where = str(args["blender"]), f"stages.{call.name}.args.blender"
    else:
        wanted = call.env.get("JITRENDER_BLENDER") or os.environ.get("JITRENDER_BLENDER")
        where = "JITRENDER_BLENDER"
    if wanted:
        found = shutil.which(wanted)
        if found is None:
            raise ConfigError(f"{where}: no executable Blender at {wanted!r}")
        return found
    return shutil.which("blender")


def gpu_backend(stage: str, device: str, blender: str | None) -> str:
    """The Cycles backend to render ``device`` (GPU or a backend's name) on, found by asking
    this node's Blender; :class:`ConfigError` naming what was looked for when it has none."""
    wanted = script.GPU_BACKENDS if device == "GPU" else (device,)
    found = _probe_gpus(blender, wanted)
    for backend in wanted:
        if found.get(backend):
            return backend
    looked = ", ".join(wanted)
    raise ConfigError(
        f"stages.{stage}.args.device: {device}: this node has no Cycles GPU device (looked "
        f"for {looked}); render with device: CPU or send the job to a GPU node"
    )


@functools.lru_cache(maxsize=8)
def _probe_gpus(blender: str | None, backends: tuple[str, ...]) -> dict[str, list[str]]:
    """Ask Blender (the binary, else bpy in a child Python) which GPU devices Cycles sees.
    A child process: importing bpy here would load Blender into jitrender itself."""
    probe = ["--probe-gpu", ",".join(backends)]
    if blender is not None:
        render_script = str(Path(script.__file__).resolve())
        argv = [blender, "-b", "--factory-startup", "--python", render_script, "--", *probe]
    else:
        argv = [sys.executable, "-m", script.__name__, *probe]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"cannot ask Blender for GPU devices: {exc}") from None
    for line in done.stdout.splitlines():
        if line.startswith(script.PROBE_MARK):
            answer = json.loads(line[len(script.PROBE_MARK) :])
            if "error" in answer:
                raise ConfigError(f"cannot ask Blender for GPU devices: {answer['error']}")
            return {str(k): list(v) for k, v in answer["devices"].items()}
    raise ConfigError(f"cannot ask Blender for GPU devices (exit {done.returncode})")


def _frame_list(frames: tuple[int, ...]) -> str:
    return ",".join(str(frame) for frame in frames)


@register_engine("blender")
def blender_engine(call: StageCall) -> Invocation:
    args = validate_args(call.name, call.args)
    scene = call.workspace.scene
    if scene is None:
        raise ConfigError(f"stages.{call.name}: engine 'blender' needs the job's 'scene'")
    if not call.frames:
        raise ConfigError(f"stages.{call.name}: no frames to render")
    options = [
        f"--blend={scene}",
        f"--frames={_frame_list(call.frames)}",
        f"--outputs={call.workspace.outputs}",
        f"--output={output_pattern(call, args, scene)}",
        f"--engine={args.get('engine', 'CYCLES')}",
        f"--format={args.get('format', 'PNG')}",
    ]
    for key in ("samples", "resolution", "percentage", "threads", "camera", "scene"):
        if key in args:
            options.append(f"--{key}={args[key]}")
    blender = find_blender(call, args)
    if blender is None and importlib.util.find_spec("bpy") is None:
        raise ConfigError(
            f"stages.{call.name}: engine 'blender' needs a Blender binary (on PATH, "
            "args.blender or JITRENDER_BLENDER) or the bpy module (pip install "
            "'jitrender[blender]')"
        )
    device = args.get("device", "CPU")
    if device == "CPU" or args.get("engine", "CYCLES") != "CYCLES":
        options.append("--device=CPU")
    else:
        backend = gpu_backend(call.name, device, blender)
        options += ["--device=GPU", f"--gpu-backend={backend}"]
    if blender is not None:
        render_script = str(Path(script.__file__).resolve())
        argv = [blender, "-b", str(scene), "--python-exit-code", "1"]
        argv += ["--python", render_script, "--", *options]
    else:
        argv = [sys.executable, "-m", script.__name__, *options]
    env = {key: call.expand(value) for key, value in call.env.items()}
    env.setdefault("PYTHONUNBUFFERED", "1")
    plugin = _plugin_path()
    if plugin is not None:  # inert unless the run's agent put JITRENDER_SOCKET in the env
        env.setdefault("JITRENDER_BLENDER_HOOK", plugin)
    return Invocation(argv, env, call.workspace.root)


def _plugin_path() -> str | None:
    """jitrender's Blender plugin, when the hooks folder can be found."""
    from jitrender.agent import hooks_dir

    try:
        return str(hooks_dir() / "blender" / "jitrender_blender.py")
    except ConfigError:
        return None
