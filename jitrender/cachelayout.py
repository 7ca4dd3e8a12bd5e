"""Where the node cache lives and where it keeps an object: stdlib only, so that code which
must not import the cache (the head start, while the process still imports) reads the same
layout the cache writes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$JITRENDER_CACHE_DIR``, else ``$XDG_CACHE_HOME/jitrender`` (``~/.cache/jitrender``)."""
    env = os.environ.get("JITRENDER_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "jitrender"


def object_key(url: str, generation: str) -> str:
    """The cache's name for one object at one generation."""
    return hashlib.sha256(f"{url}\0{generation}".encode()).hexdigest()


def object_file(objects_dir: str | Path, key: str) -> str:
    """Where the cache whose ``objects/`` folder is ``objects_dir`` keeps the object ``key``."""
    return f"{objects_dir}/{key[:2]}/{key}"
