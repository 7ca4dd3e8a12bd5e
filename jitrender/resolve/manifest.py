"""Plain manifests: a text file with one path per line (``#`` starts a comment), and the
job's own ``deps:`` list. Paths may hold frame, UDIM and view tokens; a line ending in ``/``
is a prefix: every object below it is needed by every frame."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.errors import SceneParseError
from jitrender.manifestlines import manifest_entries
from jitrender.resolve import register
from jitrender.resolve.base import ResolveContext, add_plain_file, file_dependencies
from jitrender.sequences import parse_frames
from jitrender.storage import ObjectInfo


def prefix_dependencies(
    ctx: ResolveContext,
    written: str,
    source: str,
    listed: Mapping[str, list[ObjectInfo]] | None = None,
) -> Dependencies:
    """Every object below a prefix (as written, mapped), for every frame; ``listed`` holds
    listings made ahead (by prefix URL)."""
    try:
        url = ctx.map(written)
    except ValueError as exc:  # e.g. a node-local prefix in a manifest from a bucket
        return Dependencies([], [Unresolved(source, written, str(exc))])
    prefix = url.rstrip("/") + "/"
    found = listed.get(prefix) if listed is not None else None
    if found is None:
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
    entries = manifest_entries(text)
    # The file lines first (no request, but for UDIM tiles' folders), their stats started, then
    # the folder lines' listings: both go out in one round trip, not one after the other.
    files = Dependencies()
    folders: list[tuple[int, int, int, str]] = []  # where each folder line's objects go
    for number, line in entries:
        if line.endswith("/"):
            folders.append((len(files.deps), len(files.unresolved), number, line))
            continue
        source = f"{ctx.scene_url}:{number}"
        if not add_plain_file(ctx, line, source, files):
            files.extend(entry_dependencies(ctx, line, source))
    if ctx.stat_soon is not None and files.deps:
        ctx.stat_soon(dep.url for dep in files.deps)
    if not folders:
        return files
    listed = _list_folders(ctx, [line for _, _, _, line in folders])
    out = Dependencies()
    at, at_unresolved = 0, 0
    for deps_end, unresolved_end, number, line in folders:  # in the manifest's order
        out.deps.extend(files.deps[at:deps_end])
        out.unresolved.extend(files.unresolved[at_unresolved:unresolved_end])
        at, at_unresolved = deps_end, unresolved_end
        out.extend(prefix_dependencies(ctx, line, f"{ctx.scene_url}:{number}", listed))
    out.deps.extend(files.deps[at:])
    out.unresolved.extend(files.unresolved[at_unresolved:])
    return out


def _list_folders(ctx: ResolveContext, written: list[str]) -> dict[str, list[ObjectInfo]]:
    """The listings of a manifest's folder lines, made at once (ten folders: one round trip,
    not ten); those that do not map are left to :func:`prefix_dependencies` to report."""
    prefixes = []
    for line in written:
        with contextlib.suppress(ValueError):
            prefixes.append(ctx.map(line).rstrip("/") + "/")
    prefixes = list(dict.fromkeys(prefixes))
    if ctx.list_prefixes is None or len(prefixes) < 2:
        return {}
    return dict(zip(prefixes, ctx.list_prefixes(prefixes), strict=True))
