"""jitrender's Nuke plugin: every file Nuke opens goes through the run's agent first.

``install()`` registers :func:`filename_filter` with ``nuke.addFilenameFilter``. Nuke calls
the filter with each file name before it touches the file system and uses what it returns
(None means "unchanged"). The filter asks the agent (``JITRENDER_SOCKET``) for a local copy,
waiting while it is fetched, and returns that path. Without an agent (an artist's
workstation) or for a path outside the mapped prefixes it returns the name untouched.
Answers are remembered for the life of the process. Standard library only.
"""

from __future__ import annotations

import os
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


def filename_filter(filename: Any) -> Any:
    """The local path Nuke should open instead of ``filename``.

    Raises ``RuntimeError`` naming the file when the agent says it does not exist in storage,
    so Nuke reports an error for that node instead of rendering it black.
    """
    if not isinstance(filename, str) or not filename:
        return filename
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
    return resolver().active
