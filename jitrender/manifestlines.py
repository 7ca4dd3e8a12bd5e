"""A plain manifest's text (one path per line, ``#`` comments), standard library only: the
manifest resolver reads it, and so does the head start (:mod:`jitrender.headstart`), in its
thread while the run's modules still import, to list the manifest's folders ahead."""

from __future__ import annotations

import re

_COMMENT = re.compile(r"\s#")
# Every token (frame, UDIM/UVTILE, view; see jitrender.sequences) starts with one of these.
TOKEN_CHAR = re.compile(r"[#@%$<{]")


def manifest_entries(text: str) -> list[tuple[int, str]]:
    """``(line number, path)`` of each line of ``text`` that names a path, in order. A comment
    is a line starting with ``#``, or `` #...`` after a path: ``####`` is a frame token."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("#"):
            continue
        if "#" in line:
            line = _COMMENT.split(line, maxsplit=1)[0].strip()
        if line:
            entries.append((number, line))
    return entries
