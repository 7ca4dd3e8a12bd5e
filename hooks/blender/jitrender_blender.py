"""jitrender's Blender plugin: the scene's external files come through the run's agent.

Use it either way (standard library and ``bpy`` only)::

    blender -b scene.blend --python hooks/blender/jitrender_blender.py -a
    python: spec-load this file, then call register() before opening the scene (bpy module)

With ``JITRENDER_SOCKET`` set (inside ``jitrender run``) it

- after a file loads (``load_post``, and at once if a file is already open): points every
  external path at its local copy (images, linked libraries, sounds, movie clips, volumes,
  cache files, fonts, video-sequencer strips), fetching single files and waiting for them;
  linked libraries are remapped and reloaded (the agent fetched them before Blender started);
  an image strip's folder becomes its local mirror folder, fetching nothing; a movie strip's
  file is fetched (a sound strip's file is its sound datablock's, remapped with the sounds);
- before each frame (``frame_change_pre``): fetches the files that frame's image-sequence
  users read and the element each image strip the sequencer renders shows at that frame,
  waiting for them, and tells the agent the frame is next so it prefetches;
- when a file does not exist in storage: leaves the path as written, prints which datablock
  needs which file, and fails that frame (``render_pre`` exits 65) instead of rendering the
  missing-texture colour.

Without ``JITRENDER_SOCKET`` (an artist's workstation) it changes nothing.
"""

from __future__ import annotations

import math
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
        self.strip_folders: dict[tuple[str, str], str] = {}  # (scene, image strip) -> folder

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
        changed += self._remap_strips()
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

    def _remap_strips(self) -> int:
        """Video-sequencer strips of every local scene: an image strip's folder is pointed at
        its local mirror folder without fetching (each element is fetched before the frame that
        shows it); a movie strip's file is fetched unless the sequencer never renders the strip
        (muted, itself, by its channel or by a meta strip around it, and no effect's input)."""
        changed = 0
        for scene in bpy.data.scenes:
            editor = scene.sequence_editor
            if editor is None or scene.library is not None:
                continue  # a linked scene's strips live in (and are read only from) the library
            played = {s.name for s, _ in strips_rendered_at(editor.strips, editor.channels, None)}
            for strip in editor.strips_all:
                who = _strip_who(scene, strip)
                if strip.type == "IMAGE":
                    attribute, fetch = "directory", False
                elif strip.type == "MOVIE" and strip.name in played:
                    attribute, fetch = "filepath", True
                else:
                    continue
                written = getattr(strip, attribute)
                if attribute == "directory":  # as written: what a missing element is named by
                    self.strip_folders.setdefault((scene.name, strip.name), written)
                local = self._local(who, written, None, fetch)
                if local == written:
                    continue
                if attribute == "directory":
                    local = local.rstrip("/") + "/"  # Blender joins it with each file name
                setattr(strip, attribute, local)
                changed += 1
        return changed

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

    def strip_files(self, scene: Any, frame: int) -> list[tuple[str, str, str]]:
        """(who, absolute path as written, absolute path Blender reads) for each image-strip
        element ``scene``'s sequencer renders at ``frame``."""
        editor = scene.sequence_editor
        if editor is None or not scene.render.use_sequencer or scene.library is not None:
            return []
        found: dict[str, tuple[str, str]] = {}
        for strip, at in strips_rendered_at(editor.strips, editor.channels, frame):
            if strip.type != "IMAGE":
                continue  # movie files were fetched after load
            if at is None:  # remapped by a speed effect: any element may show
                elements = list(strip.elements)
            else:
                element = strip.strip_elem_from_frame(at)
                elements = [] if element is None else [element]
            written = self.strip_folders.get((scene.name, strip.name), strip.directory)
            for element in elements:
                path = self._absolute(os.path.join(written, element.filename))
                read = self._absolute(os.path.join(strip.directory, element.filename))
                found.setdefault(path, (_strip_who(scene, strip), read))
        return [(who, path, read) for path, (who, read) in found.items()]

    def prepare_frame(self, frame: int, scene: Any = None) -> list[str]:
        """Make ``frame``'s sequence files and the sequencer elements ``scene`` (the current
        scene by default) shows local, waiting for them; the problems found."""
        if not self.resolver.active:
            return []
        self.resolver.frame_next(frame)
        problems = list(self.missing.values())
        if scene is None:
            scene = bpy.context.scene
        files = [(who, path, "") for who, path in self.sequence_files(frame)]
        if scene is not None:
            files += self.strip_files(scene, frame)
        for who, path, read in files:
            try:
                self.resolver.local(path)
            except jitrender_client.MissingFile as exc:
                problems.append(f"{who} needs {path} at frame {frame}: {exc.message}")
            except jitrender_client.AgentUnavailable as exc:
                problems.append(f"{who}: agent error: {exc}")
            else:
                if read and not os.path.isfile(read):  # unmapped, or not where Blender reads
                    problems.append(f"{who} needs {path} at frame {frame}: {read} does not exist")
        self.frame_missing[frame] = problems
        for problem in problems:
            say(f"frame {frame}: {problem}")
        return problems


def _strip_who(scene: Any, strip: Any) -> str:
    return f"sequencer strip {strip.name!r} (scene {scene.name!r})"


def _muted(strip: Any, channels: Any) -> bool:
    """The strip's Mute or its channel's (Blender's ``render_is_muted``)."""
    channel = strip.channel
    return bool(strip.mute or (0 <= channel < len(channels) and channels[channel].mute))


def meta_inner_frame(meta: Any, frame: int) -> int | None:
    """The frame a meta strip renders its own strips at for timeline ``frame``:
    ``int(start) + give_frame_index`` (Blender 5.0's ``do_render_strip_seqbase``): clamped to
    its content (holds), reversed, strobed; ``None`` for an empty meta strip."""
    start = float(meta.frame_start)
    length = int(meta.frame_duration)
    end = start + length - 1
    if end < start:
        return None
    index = end - frame if meta.use_reverse_frames else frame - start
    index = min(max(index, 0.0), float(length - 1))
    if meta.strobe > 1.0:
        index -= math.fmod(index, meta.strobe)
    return int(index + int(start))


def strips_rendered_at(
    strips: Any, channels: Any, frame: int | None
) -> list[tuple[Any, int | None]]:
    """(strip, frame it is rendered at) for the image and movie strips among ``strips`` (and
    inside their meta strips) that the sequencer renders at timeline ``frame``; the frame is
    ``None`` when any of the strip's frames may be (a speed effect remaps it, or ``frame`` is
    ``None``: every strip that renders at some frame).

    As Blender 5.0's ``query_rendered_strips``: the strips whose handles hold the frame, minus
    sound strips and muted ones; an effect renders its inputs at the same frame, muted or not
    (a Speed Control at a remapped one); a meta strip its strips at ``meta_inner_frame``.
    Retiming needs nothing here: the handles and ``strip_elem_from_frame`` include it."""
    pulled: dict[str, tuple[Any, int | None]] = {}
    queue: list[tuple[Any, int | None]] = []
    for strip in strips:
        if strip.type == "SOUND" or _muted(strip, channels):
            continue
        if frame is None or strip.frame_final_start <= frame < strip.frame_final_end:
            queue.append((strip, frame))
    while queue:
        strip, at = queue.pop()
        seen = pulled.get(strip.name)
        if seen is not None:
            if seen[1] is None or seen[1] == at:
                continue
            at = None  # the same strip at two frames (directly and through an effect)
        pulled[strip.name] = (strip, at)
        for name in ("input_1", "input_2"):
            source = getattr(strip, name, None)
            if source is not None:
                queue.append((source, None if at is None or strip.type == "SPEED" else at))
    out: list[tuple[Any, int | None]] = []
    for strip, at in pulled.values():
        if strip.type == "META":
            retimed = len(getattr(strip, "retiming_keys", ())) > 0
            inner = None if at is None or retimed else meta_inner_frame(strip, at)
            if at is not None and not retimed and inner is None:
                continue  # an empty meta strip
            out.extend(strips_rendered_at(strip.strips, strip.channels, inner))
        elif strip.type in ("IMAGE", "MOVIE"):
            out.append((strip, at))
    return out


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
    current.strip_folders.clear()
    current.remap_all()


@persistent
def on_frame_change_pre(scene: Any, *_args: Any) -> None:
    session().prepare_frame(scene.frame_current, scene)


@persistent
def on_render_pre(scene: Any, *_args: Any) -> None:
    current = session()
    frame = scene.frame_current
    problems = current.frame_missing.get(frame)
    if problems is None:
        problems = current.prepare_frame(frame, scene)
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
