"""Plain manifests: a text file with one path per line (``#`` starts a comment), and the
job's own ``deps:`` list. Paths may hold frame, UDIM and view tokens; a line ending in ``/``
is a prefix: every object below it is needed by every frame."""

from __future__ import annotations

import re

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import SceneParseError
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext, file_dependencies
from jitrender.sequences import parse_frames

_COMMENT = re.compile(r"\s#")


def prefix_dependencies(ctx: ResolveContext, written: str, source: str) -> Dependencies:
    """Every object below a prefix (as written, mapped), for every frame."""
    try:
        url = ctx.map(written)
    except ValueError as exc:  # e.g. a node-local prefix in a manifest from a bucket
        return Dependencies([], [Unresolved(source, written, str(exc))])
    prefix = url.rstrip("/") + "/"
    found = ctx.list_prefix(prefix, True)
    if not found:
        return Dependencies([], [Unresolved(source, written, f"no objects below {prefix}")])
    return Dependencies([Dependency(written, info.url, None, source) for info in found])


def entry_dependencies(
    ctx: ResolveContext, written: str, source: str, frames: str | None = None
) -> Dependencies:
    """One manifest entry: a prefix (ends with ``/``) or a file path, for some or all frames."""
    if written.endswith("/"):
        return prefix_dependencies(ctx, written, source)
    if frames is None:
        return file_dependencies(ctx, written, source)
    wanted = [f for f in parse_frames(frames, f"{source}: frames") if f in ctx.frames]
    return file_dependencies(ctx, written, source, frame_map={f: [f] for f in wanted})


@register("manifest", ".txt", ".manifest")
def resolve_manifest(ctx: ResolveContext) -> Dependencies:
    try:
        text = ctx.scene_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise SceneParseError(
            f"{ctx.scene_url}: byte {exc.start}: a manifest must be UTF-8 text"
        ) from None
    out = Dependencies()
    for number, raw in enumerate(text.splitlines(), start=1):
        # A comment is a line starting with "#", or " #..." after a path: "####" is a token.
        line = raw.strip()
        if line.startswith("#"):
            continue
        if "#" in line:
            line = _COMMENT.split(line, maxsplit=1)[0].strip()
        if line:
            out.extend(entry_dependencies(ctx, line, f"{ctx.scene_url}:{number}"))
    return out
