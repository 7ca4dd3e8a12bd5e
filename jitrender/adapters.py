"""pydantic's readers of the job file's values and of sizes: one ``TypeAdapter`` a type, built
once a process (building one generates its schema) and without pydantic's search for plugins,
which reads every installed package's entry points (~8-20 ms a start; pydantic's plugins
observe validation, which a job file's reading does not want). ``PYDANTIC_DISABLE_PLUGINS``
set by the user is kept as it is."""

from __future__ import annotations

import functools
import os
from typing import Any

_PLUGINS = "PYDANTIC_DISABLE_PLUGINS"


@functools.cache
def adapter(kind: Any) -> Any:
    """The ``TypeAdapter`` of ``kind``."""
    from pydantic import TypeAdapter

    if _PLUGINS in os.environ:
        return TypeAdapter(kind)
    os.environ[_PLUGINS] = "__all__"
    try:
        return TypeAdapter(kind)
    finally:
        os.environ.pop(_PLUGINS, None)
