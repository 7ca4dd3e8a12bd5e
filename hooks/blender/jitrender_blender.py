"""jitrender's Blender plugin: the scene's external files come through the run's agent.

Use it either way (standard library and ``bpy`` only)::

    blender -b scene.blend --python hooks/blender/jitrender_blender.py -a
    python: spec-load this file, then call register() before opening the scene (bpy module)

With ``JITRENDER_SOCKET`` set (inside ``jitrender run``) it

- after a file loads (``load_post``, and at once if a file is already open): points every
  external path at its local copy (images, linked libraries, sounds, movie clips, volumes,
  cache files, fonts), fetching single files and waiting for them; linked libraries are
  remapped and reloaded (the agent fetched them before Blender started);
- before each frame (``frame_change_pre``): fetches the files that frame's image-sequence
  users read, waiting for them, and tells the agent the frame is next so it prefetches;
- when a file does not exist in storage: leaves the path as written, prints which datablock
  needs which file, and fails that frame (``render_pre`` exits 65) instead of rendering the
  missing-texture colour.

Without ``JITRENDER_SOCKET`` (an artist's workstation) it changes nothing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(_HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(_HERE))  # hooks/ holds the shared client

import bpy  # noqa: E402
import jitrender_client  # noqa: E402
from bpy.app.handlers import persistent  # noqa: E402

bl_info = {
    "name": "jitrender",
    "description": "Fetch external files through the jitrender agent of a render run",
    "blender": (4, 2, 0),
    "category": "System",
}

PREFIX = "jitrender:"
EXIT_DATA = 65


def say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def sequence_frame(frame: int, start: int, duration: int, offset: int, cyclic: bool) -> int:
    """The file number an image-sequence user reads at scene ``frame`` (Blender's
    ``BKE_image_user_frame_get``: clamped to the sequence unless cyclic, then offset)."""
    if duration == 0:
        return 0
    number = frame - start + 1
    if cyclic:
        number %= duration
        if number == 0:
            number = duration
    return max(0, min(number, duration)) + offset


class Session:
    """The plugin's state for one Blender process."""

    def __init__(self, resolver: jitrender_client.Resolver) -> None:
        self.resolver = resolver
        self.missing: dict[str, str] = {}  # datablock -> message, for files every frame needs
        self.frame_missing: dict[int, list[str]] = {}

    # -- after load ---------------------------------------------------------------------

    def _absolute(self, written: str, library: Any = None) -> str:
        return os.path.normpath(bpy.path.abspath(written, library=library))

    def _local(self, who: str, written: str, library: Any = None, fetch: bool = True) -> str:
        """The local path for ``written`` (or ``written`` itself when it stays as it is)."""
        if not written or written.startswith("<"):
            return written  # "<builtin>" fonts and the like
        absolute = self._absolute(written, library)
        try:
            if fetch:
                local = self.resolver.local(absolute)
            else:
                answer = self.resolver.request({"op": "map", "path": absolute})
                ok = answer is not None and answer.get("ok")
                local = str(answer["local"]) if ok and answer is not None else absolute
        except jitrender_client.MissingFile as exc:
            self.missing[who] = f"{who} needs {written}: {exc.message}"
            say(self.missing[who])
            return written
        except jitrender_client.AgentUnavailable as exc:
            say(f"{who}: agent error: {exc}")
            return written
        return written if local == absolute else local

    def remap_all(self) -> int:
        """Point every external path of the open file at its local copy; the count changed."""
        if not self.resolver.active:
            return 0
        changed = 0
        data = bpy.data
        libraries = list(data.libraries)
        for lib in libraries:
            local = self._local(f"library {lib.name!r}", lib.filepath)
            if local != lib.filepath:
                lib.filepath = local
                lib.reload()
                changed += 1
        for image in data.images:
            if image.packed_file is not None or image.source not in ("FILE", "SEQUENCE", "MOVIE"):
                if image.source == "TILED" and image.packed_file is None:
                    changed += self._set(image, "filepath", f"image {image.name!r}", fetch=False)
                continue
            sequence = image.source == "SEQUENCE"
            changed += self._set(image, "filepath", f"image {image.name!r}", fetch=not sequence)
        for sound in data.sounds:
            if sound.packed_file is None:
                changed += self._set(sound, "filepath", f"sound {sound.name!r}")
        for clip in data.movieclips:
            sequence = clip.source == "SEQUENCE"
            changed += self._set(clip, "filepath", f"movie clip {clip.name!r}", fetch=not sequence)
        for volume in data.volumes:
            if volume.packed_file is None:
                who = f"volume {volume.name!r}"
                changed += self._set(volume, "filepath", who, fetch=not volume.is_sequence)
        for cache in data.cache_files:
            who = f"cache file {cache.name!r}"
            changed += self._set(cache, "filepath", who, fetch=not cache.is_sequence)
        for font in data.fonts:
            if font.packed_file is None:
                changed += self._set(font, "filepath", f"font {font.name!r}")
        say(f"remapped {changed} external paths through the agent")
        return changed

    def _set(self, block: Any, attribute: str, who: str, fetch: bool = True) -> int:
        if getattr(block, "library", None) is not None:
            return 0  # linked data: its paths live in the library file
        if block.users - int(getattr(block, "use_fake_user", False)) <= 0:
            return 0  # nothing renders it: neither fetch it nor fail a frame over it
        written = getattr(block, attribute)
        local = self._local(who, written, None, fetch)
        if local == written:
            return 0
        setattr(block, attribute, local)
        return 1

    # -- per frame ----------------------------------------------------------------------

    def sequence_files(self, frame: int) -> list[tuple[str, str]]:
        """(who, absolute path) for each image-sequence file the scene reads at ``frame``."""
        found: dict[str, str] = {}
        for image, user, who in _image_users():
            if image.source != "SEQUENCE" or image.packed_file is not None:
                continue
            user.frame_current = sequence_frame(
                frame, user.frame_start, user.frame_duration, user.frame_offset, user.use_cyclic
            )
            path = self._absolute(image.filepath_from_user(image_user=user), image.library)
            found.setdefault(path, f"image {image.name!r} ({who})")
        return [(who, path) for path, who in found.items()]

    def prepare_frame(self, frame: int) -> list[str]:
        """Make ``frame``'s sequence files local (waiting for them); the problems found."""
        if not self.resolver.active:
            return []
        self.resolver.frame_next(frame)
        problems = list(self.missing.values())
        for who, path in self.sequence_files(frame):
            try:
                self.resolver.local(path)
            except jitrender_client.MissingFile as exc:
                problems.append(f"{who} needs {path} at frame {frame}: {exc.message}")
            except jitrender_client.AgentUnavailable as exc:
                problems.append(f"{who}: agent error: {exc}")
        self.frame_missing[frame] = problems
        for problem in problems:
            say(f"frame {frame}: {problem}")
        return problems


def _image_users() -> list[tuple[Any, Any, str]]:
    """(image, image user, who) for every node, texture and empty that reads an image."""
    users: list[tuple[Any, Any, str]] = []
    data = bpy.data
    for collection, kind in (
        (data.materials, "material"),
        (data.worlds, "world"),
        (data.lights, "light"),
        (data.node_groups, "node group"),
        (data.textures, "texture"),
        (data.scenes, "scene"),
    ):
        for block in collection:
            image = getattr(block, "image", None)
            image_user = getattr(block, "image_user", None)
            if image is not None and image_user is not None:
                users.append((image, image_user, f"{kind} {block.name!r}"))
            tree = getattr(block, "node_tree", None)
            if tree is None:
                continue
            for node in tree.nodes:
                image = getattr(node, "image", None)
                image_user = getattr(node, "image_user", None)
                if image is not None and image_user is not None:
                    users.append((image, image_user, f"{kind} {block.name!r}, node {node.name!r}"))
    for obj in data.objects:
        if obj.type == "EMPTY" and getattr(obj, "data", None) is not None:
            users.append((obj.data, obj.image_user, f"object {obj.name!r}"))
    return users


_session: Session | None = None


def session() -> Session:
    global _session
    if _session is None:
        _session = Session(jitrender_client.Resolver())
    return _session


@persistent
def on_load_post(*_args: Any) -> None:
    current = session()
    current.missing.clear()
    current.remap_all()


@persistent
def on_frame_change_pre(scene: Any, *_args: Any) -> None:
    session().prepare_frame(scene.frame_current)


@persistent
def on_render_pre(scene: Any, *_args: Any) -> None:
    current = session()
    frame = scene.frame_current
    problems = current.frame_missing.get(frame)
    if problems is None:
        problems = current.prepare_frame(frame)
    if problems:
        # A handler cannot cancel a render; exiting is the only way not to deliver a pink frame.
        say(f"error: frame {frame} not rendered: {problems[0]}")
        sys.stdout.flush()
        os._exit(EXIT_DATA)


_HANDLERS = (
    ("load_post", on_load_post),
    ("frame_change_pre", on_frame_change_pre),
    ("render_pre", on_render_pre),
)


def register() -> None:
    """Install the handlers; remap the open file at once when one is already loaded."""
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler not in handlers:
            handlers.append(handler)
    if session().resolver.active and bpy.data.filepath:
        on_load_post()


def unregister() -> None:
    for name, handler in _HANDLERS:
        handlers = getattr(bpy.app.handlers, name)
        if handler in handlers:
            handlers.remove(handler)


if __name__ == "__main__":
    register()
