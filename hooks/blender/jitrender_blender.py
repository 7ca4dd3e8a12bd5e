"""jitrender's Blender plugin: the scene's external files come through the run's agent.

Use it either way (standard library and ``bpy`` only)::

    blender -b scene.blend --python hooks/blender/jitrender_blender.py -a
    python: spec-load this file, then call register() before opening the scene (bpy module)

With ``JITRENDER_SOCKET`` set (inside ``jitrender run``) it

- after a file loads (``load_post``, and at once if a file is already open): points every
  external path at its local copy (images, linked libraries, sounds, movie clips, volumes,
  cache files, fonts, video-sequencer strips), fetching single files and waiting for them;
  linked libraries are remapped and reloaded (the agent fetched them before Blender started);
  sequences (images, clips, volumes, caches), an image strip's folder and a movie strip's file
  are only mapped, fetching nothing (a sound strip's file is its sound datablock's, fetched
  with the sounds);
- before each frame (``frame_change_pre``): asks the agent for the files that frame needs and
  waits until they are local. Which files those are is the run's resolver's answer (it
  computed them from the .blend with Blender's frame arithmetic,
  :mod:`jitrender.resolve.blend_frames`): the plugin derives no frame numbers itself, so the
  prediction and what is fetched cannot disagree;
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

# Datablocks a render never reads through (the resolver's _NOT_RENDERED): a file only these use
# is neither fetched nor a reason to fail a frame. A Blender 2.7x file's default texture paint
# brush keeps its texture's image alive with a user, whether that image's file exists or not.
_NOT_RENDERED_TYPES = ("Brush", "Palette", "PaintCurve", "WorkSpace", "Screen", "WindowManager")


def rendered_blocks() -> set[Any]:
    """The datablocks a chain of users (Blender's ``user_map``, walked upwards) links to a
    scene: what a render of one of the open file's scenes may read. Those only a brush, a
    workspace, a screen or a palette uses are left out, as the run's resolver leaves them out."""
    users = bpy.data.user_map()
    skipped = tuple(getattr(bpy.types, name) for name in _NOT_RENDERED_TYPES)
    found: set[Any] = set()
    for block in users:
        seen = {block}
        stack = [block]
        while stack:
            current = stack.pop()
            if isinstance(current, bpy.types.Scene) or current in found:
                found.add(block)
                break
            for user in users.get(current, ()):
                if not isinstance(user, skipped) and user not in seen:
                    seen.add(user)
                    stack.append(user)
    return found


def say(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


class Session:
    """The plugin's state for one Blender process."""

    def __init__(self, resolver: jitrender_client.Resolver) -> None:
        self.resolver = resolver
        self.missing: dict[str, str] = {}  # datablock -> message, for files every frame needs
        self.frame_missing: dict[int, list[str]] = {}
        self.rendered: set[Any] | None = None  # rendered_blocks() of the open file

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
        self.rendered = rendered_blocks()  # after the reloads: they replace the linked blocks
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
        changed += self._remap_strips()
        say(f"remapped {changed} external paths through the agent")
        return changed

    def _set(self, block: Any, attribute: str, who: str, fetch: bool = True) -> int:
        if getattr(block, "library", None) is not None:
            return 0  # linked data: its paths live in the library file
        if self.rendered is not None and block not in self.rendered:
            return 0  # nothing renders it: neither fetch it nor fail a frame over it
        written = getattr(block, attribute)
        local = self._local(who, written, None, fetch)
        if local == written:
            return 0
        setattr(block, attribute, local)
        return 1

    def _remap_strips(self) -> int:
        """Video-sequencer strips of every local scene: an image strip's folder is pointed at
        its local mirror folder, a movie strip's file at its local copy, fetching nothing (the
        files come with the frames that show them, see :meth:`prepare_frame`)."""
        changed = 0
        for scene in bpy.data.scenes:
            editor = scene.sequence_editor
            if editor is None or scene.library is not None:
                continue  # a linked scene's strips live in (and are read only from) the library
            for strip in editor.strips_all:
                attribute = {"IMAGE": "directory", "MOVIE": "filepath"}.get(strip.type)
                if attribute is None:
                    continue
                written = getattr(strip, attribute)
                who = f"sequencer strip {strip.name!r} (scene {scene.name!r})"
                local = self._local(who, written, None, fetch=False)
                if local == written:
                    continue
                if attribute == "directory":
                    local = local.rstrip("/") + "/"  # Blender joins it with each file name
                setattr(strip, attribute, local)
                changed += 1
        return changed

    # -- per frame ----------------------------------------------------------------------

    def prepare_frame(self, frame: int) -> list[str]:
        """Tell the agent ``frame`` is next and wait until the files it needs are local; the
        problems found (files missing from storage, and those every frame needs)."""
        if not self.resolver.active:
            return []
        problems = list(self.missing.values())
        try:
            files = self.resolver.frame_files(frame)
        except jitrender_client.AgentUnavailable as exc:
            files = []
            problems.append(f"agent error: {exc}")
        for entry in files:
            if "error" in entry:
                who = entry.get("source") or "the scene"
                problems.append(f"{who} needs {entry['path']} at frame {frame}: {entry['error']}")
        self.frame_missing[frame] = problems
        for problem in problems:
            say(f"frame {frame}: {problem}")
        return problems


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
