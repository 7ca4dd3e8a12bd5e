"""What every resolver gets, and the path expansion they all share."""

from __future__ import annotations

import functools
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from jitrender.deps import Dependencies, Dependency, Unresolved
from jitrender.manifestlines import TOKEN_CHAR
from jitrender.paths import PathMap, split_url, url_dirname
from jitrender.sequences import (
    expand_frame,
    expand_views,
    has_frame_token,
    has_udim_token,
    match_udim_tiles,
)
from jitrender.storage import ObjectInfo


@dataclass(frozen=True)
class ResolveContext:
    """Everything a resolver may use.

    ``scene_file`` is a local copy of the scene at ``scene_url``. ``list_prefix(url,
    recursive)`` lists objects in storage (one call per folder: use it for UDIM tiles, never
    one request per tile). ``fetch(url)`` returns a local copy of another file the scene
    references (linked libraries, precomps) and raises if it does not exist.
    """

    scene_url: str
    scene_file: Path
    frames: tuple[int, ...]
    path_map: PathMap
    list_prefix: Callable[[str, bool], list[ObjectInfo]]
    fetch: Callable[[str], Path]
    views: tuple[str, ...] = ("left", "right")
    # The job's ``env:`` (what the renderer will see on top of this process's environment),
    # for resolvers that read variables such as NUKE_PATH or ``[getenv …]``.
    env: Mapping[str, str] = field(default_factory=dict)
    # The output nodes the job's render stage executes (Nuke's ``-X``: ``args.write`` of a
    # ``nuke`` stage); empty: the scene's own default (every enabled Write).
    render_nodes: tuple[str, ...] = ()
    _listings: dict[str, list[str]] = field(default_factory=dict, compare=False, repr=False)
    # ``list_prefix`` of many prefixes at once, as concurrently as their storage gains from
    # (a manifest's folder lines); None: one after another.
    list_prefixes: Callable[[Sequence[str]], list[list[ObjectInfo]]] | None = None
    # Start the stats of URLs the resolver will return, and return at once (their listings go
    # out while it lists or reads more); None: they are stat'ed after the resolve.
    stat_soon: Callable[[Iterable[str]], None] | None = None

    @functools.cached_property
    def scene_folder_url(self) -> str:
        # Cached: every mapped path asks for it (twice), 100,000 times in a large manifest.
        return url_dirname(self.scene_url)

    def with_scene(self, scene_url: str, scene_file: Path) -> ResolveContext:
        """The same context for a referenced scene (a linked library, a precomp)."""
        return ResolveContext(
            scene_url,
            scene_file,
            self.frames,
            self.path_map,
            self.list_prefix,
            self.fetch,
            self.views,
            self.env,
            self.render_nodes,
            self._listings,
            self.list_prefixes,
            self.stat_soon,
        )

    def names_in_folder(self, folder_url: str) -> list[str]:
        """Object names directly in a folder, listed once per folder per resolve."""
        names = self._listings.get(folder_url)
        if names is None:
            prefix = folder_url.rstrip("/") + "/"
            names = [
                info.url[len(prefix) :]
                for info in self.list_prefix(prefix, False)
                if "/" not in info.url[len(prefix) :]
            ]
            self._listings[folder_url] = names
        return names

    def map(
        self,
        written: str,
        *,
        blender: bool = False,
        relative_to: str | None = None,
        node_local: bool = False,
    ) -> str:
        """The URL of a path written in the scene. Raises ValueError (callers list it as
        unresolved) for a node-local path that no path_map rule maps, in a scene that is not
        itself local: a scene from a bucket must not pull this node's files into a job.
        ``node_local`` is for paths the node itself names (``NUKE_PATH``), not the scene."""
        url = self.path_map.to_url(written, relative_to or self.scene_folder_url, blender=blender)
        if (
            not node_local
            and url.startswith("file://")
            and not self.scene_folder_url.startswith("file://")
            and not self.path_map.is_mapped(written.strip())
        ):
            raise ValueError(
                f"a node-local path in a scene from {split_url(self.scene_folder_url)[0]}://; "
                "refused (map it to the bucket with path_map)"
            )
        return url


def add_plain_file(
    ctx: ResolveContext,
    written: str,
    source: str,
    out: Dependencies,
    *,
    blender: bool = False,
    relative_to: str | None = None,
) -> bool:
    """Add ``written`` to ``out`` as one file every frame needs (or as unresolved) when it
    holds no frame, tile or view token, and say whether it did; False: it may hold one, and
    :func:`file_dependencies` expands it. The fast path of a 100,000-line manifest."""
    if TOKEN_CHAR.search(written) is not None:
        return False
    try:
        url = ctx.map(written, blender=blender, relative_to=relative_to)
    except ValueError as exc:
        out.unresolved.append(Unresolved(source, written, str(exc)))
    else:
        out.deps.append(Dependency(written, url, None, source))
    return True


def file_dependencies(
    ctx: ResolveContext,
    written: str,
    source: str,
    *,
    frame_map: Mapping[int, Sequence[int]] | None = None,
    blender: bool = False,
    relative_to: str | None = None,
    views: Sequence[str] | None = None,
    frame_style: str = "any",
) -> Dependencies:
    """The dependencies behind one path as written in a scene.

    Frame tokens are expanded for exactly the frames asked: ``frame_map`` maps each file
    frame number to the render frames that need it (default: the context's frames, one to
    one). UDIM/UVTILE tokens become the tiles that exist in storage (one listing per
    folder); ``%V``/``%v`` become each view. A path without tokens is needed by every frame.
    ``frame_style`` picks which frame tokens count (``"nuke"``: only ``#…`` and ``%0Nd``).
    """
    out = Dependencies()
    if not written.strip():
        return out
    if add_plain_file(ctx, written, source, out, blender=blender, relative_to=relative_to):
        return out
    for path in expand_views(written, list(views) if views is not None else list(ctx.views)):
        try:
            pattern_url = ctx.map(path, blender=blender, relative_to=relative_to)
        except ValueError as exc:
            out.unresolved.append(Unresolved(source, written, str(exc)))
            continue
        if has_frame_token(path, frame_style):
            mapping = frame_map if frame_map is not None else {f: [f] for f in ctx.frames}
            by_url: dict[str, set[int]] = {}
            for file_frame, render_frames in mapping.items():
                by_url.setdefault(expand_frame(pattern_url, file_frame, frame_style), set()).update(
                    render_frames
                )
            for url, frames in by_url.items():
                out.extend(_tiles(ctx, path, url, source, tuple(sorted(frames))))
        else:
            out.extend(_tiles(ctx, path, pattern_url, source, None))
    return out


def _tiles(
    ctx: ResolveContext, written: str, url: str, source: str, frames: tuple[int, ...] | None
) -> Dependencies:
    if not has_udim_token(url):
        return Dependencies([Dependency(written, url, frames, source)])
    scheme, netloc, path = split_url(url)
    folder = f"{scheme}://{netloc}{posixpath.dirname(path)}"
    tiles = match_udim_tiles(posixpath.basename(path), ctx.names_in_folder(folder))
    if not tiles:
        return Dependencies(
            [],
            [Unresolved(source, written, f"no UDIM tiles exist for {url}")],
        )
    return Dependencies([Dependency(written, f"{folder}/{name}", frames, source) for name in tiles])
