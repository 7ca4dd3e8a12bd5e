"""jitrender's Nuke plugin: every file Nuke opens goes through the run's agent first, and
every file a Write renders lands in the run's ``outputs/``.

``install()`` registers :func:`filename_filter` with ``nuke.addFilenameFilter`` and the
frame callbacks with ``nuke.addAfterFrameRender`` / ``nuke.addAfterRender``. Nuke calls the
filter with each file name before it touches the file system and uses what it returns (None
means "unchanged").

- A file a node *reads*: the filter asks the agent (``JITRENDER_SOCKET``) for a local copy,
  waiting while it is fetched, and returns that path. Without an agent (an artist's
  workstation) or for a path outside the mapped prefixes it returns the name untouched.
- A file a Write (``Write``, ``DeepWrite``, ``WriteGeo``; not one set to ``reading``)
  *renders*, inside a ``jitrender run`` (``JITRENDER_OUTPUTS`` set): it never goes through the
  input fetch. A path that maps below the job's ``outputs.to`` (``JITRENDER_OUTPUTS_URL``)
  goes to the same place below ``outputs/``; a relative path goes below ``outputs/`` as
  written; any other absolute path goes to ``outputs/<file name>``. Nuke renders to a hidden
  temporary name beside it (``.jitrender-tmp.<name>``, same extension, so the file type is
  unchanged) and the after-frame callback renames each frame into place once it is done:
  jitrender uploads a file the moment it is renamed, so frames land one by one, and a frame
  Nuke did not finish is never uploaded.

Answers are remembered for the life of the process. Standard library only.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))  # hooks/ holds the shared client

import jitrender_client  # noqa: E402

_state_lock = threading.Lock()
_resolver: jitrender_client.Resolver | None = None


def resolver() -> jitrender_client.Resolver:
    """The process's one resolver (created on first use, from ``JITRENDER_SOCKET``)."""
    global _resolver
    with _state_lock:
        if _resolver is None:
            _resolver = jitrender_client.Resolver()
        return _resolver


def reset(socket_path: str | None = None) -> jitrender_client.Resolver:
    """Forget remembered answers and talk to ``socket_path`` (default: the environment)."""
    global _resolver
    with _state_lock:
        _resolver = jitrender_client.Resolver(socket_path)
        return _resolver


WRITE_CLASSES = ("Write", "DeepWrite", "WriteGeo")
TEMP_PREFIX = ".jitrender-tmp."
_HASHES = re.compile(r"#+")
_PRINTF = re.compile(r"%(0?)(\d*)d")
_renders: dict[str, tuple[str, str]] = {}  # Write path as Nuke gave it -> (temp, final)


def _nuke() -> Any:
    return sys.modules.get("nuke")


def _writing_node() -> bool:
    """True when Nuke is evaluating a Write node that renders (not one reading back)."""
    nuke = _nuke()
    try:
        node = nuke.thisNode() if nuke is not None else None
        if node is None or node.Class() not in WRITE_CLASSES:
            return False
        reading = node.knob("reading") if hasattr(node, "knob") else None
        return not (reading is not None and bool(reading.value()))
    except Exception:  # no node context (a Script Editor call): treat it as a read
        return False


def output_path(filename: str) -> str | None:
    """Where a Write's ``filename`` renders inside a run (a temporary name; see the module
    docstring), or None outside a run."""
    known = _renders.get(filename)
    if known is not None:
        return known[0]
    outputs = os.environ.get("JITRENDER_OUTPUTS")
    if not outputs:
        return None
    outputs_url = os.environ.get("JITRENDER_OUTPUTS_URL", "").rstrip("/")
    written = filename.replace("\\", "/")
    relative: str | None = None
    absolute = written.startswith("/") or re.match(r"^[A-Za-z]:/", written) is not None
    if absolute and outputs_url:
        answer = resolver().request({"op": "map", "path": filename})
        url = str(answer.get("url", "")) if answer and answer.get("ok") else ""
        if url.startswith(outputs_url + "/"):
            relative = url[len(outputs_url) + 1 :]
    if relative is None and not absolute:
        parts = [p for p in written.split("/") if p not in ("", ".")]
        relative = "/".join(parts) if parts and ".." not in parts else None
    if relative is None:
        relative = written.rsplit("/", 1)[-1]
    final = os.path.join(outputs, *relative.split("/"))
    folder, name = os.path.split(final)
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, TEMP_PREFIX + name)
    with _state_lock:
        _renders[filename] = (temp, final)
    return temp


def _frame_name(pattern: str, frame: int) -> str:
    """``x.####.exr`` / ``x.%04d.exr`` at ``frame`` (a name without tokens is unchanged)."""
    named = _HASHES.sub(lambda m: f"{frame:0{len(m.group())}d}", pattern)
    return _PRINTF.sub(lambda m: f"{frame:0{int(m.group(2) or 0)}d}", named)


def after_frame_render() -> None:
    """Nuke finished a frame: rename its temporary renders into place."""
    nuke = _nuke()
    try:
        frame = int(nuke.frame())
    except Exception:
        return
    with _state_lock:
        pairs = list(_renders.values())
    for temp, final in pairs:
        done, into = _frame_name(temp, frame), _frame_name(final, frame)
        if os.path.exists(done):
            os.replace(done, into)


def after_render() -> None:
    """The render finished: rename whatever finished frame is still under its temp name."""
    with _state_lock:
        folders = {os.path.dirname(temp) for temp, _ in _renders.values()}
    for folder in folders:
        for name in os.listdir(folder):
            if name.startswith(TEMP_PREFIX):
                os.replace(
                    os.path.join(folder, name), os.path.join(folder, name[len(TEMP_PREFIX) :])
                )


def filename_filter(filename: Any) -> Any:
    """The local path Nuke should open instead of ``filename`` (or, for a Write, render to).

    Raises ``RuntimeError`` naming the file when the agent says it does not exist in storage,
    so Nuke reports an error for that node instead of rendering it black.
    """
    if not isinstance(filename, str) or not filename:
        return filename
    if _writing_node():
        rendered = output_path(filename)
        if rendered is not None:
            return rendered
    try:
        return resolver().local(filename)
    except jitrender_client.MissingFile as exc:
        raise RuntimeError(f"jitrender: {exc.message}") from None
    except jitrender_client.AgentUnavailable:
        return filename


def install(nuke_module: Any = None) -> bool:
    """Register the filter with Nuke; True when an agent is configured for this process."""
    if nuke_module is None:
        import nuke as nuke_module  # type: ignore[import-not-found, no-redef]
    nuke_module.addFilenameFilter(filename_filter)
    if hasattr(nuke_module, "addAfterFrameRender"):
        nuke_module.addAfterFrameRender(after_frame_render)
    if hasattr(nuke_module, "addAfterRender"):
        nuke_module.addAfterRender(after_render)
    return resolver().active
